package leanhttp

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"testing"

	"github.com/byteproxy/byteproxy/modules/services/internal/rawup"
)

// BenchmarkQuiet is the check before a pooled connection is reused: one
// non-blocking system call, no allocation (the reason conn keeps the
// check as a method value made once).
func BenchmarkQuiet(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			_, _ = io.Copy(io.Discard, c)
		}
	}()
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	c := newConn(nc, nil)
	b.ReportAllocs()
	for b.Loop() {
		if !c.quiet() {
			b.Fatal("a quiet connection was found not quiet")
		}
	}
}

// BenchmarkRoundTrip is one small GET on a pooled connection, the check
// before reuse included, against a loopback upstream.
func BenchmarkRoundTrip(b *testing.B) {
	up := rawup.Start(b, func(n int, req *http.Request, w *bufio.Writer) bool {
		_, _ = w.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		return true
	})
	p := NewPool(up.Host(), (&net.Dialer{}).DialContext)
	defer p.Close()
	req, _ := http.NewRequest("GET", "http://"+up.Host()+"/", nil)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		resp, err := p.RoundTrip(ctx, req, 0, nil)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	if n := up.Accepted.Load(); n != 1 {
		b.Errorf("%d connections, want 1", n)
	}
}
