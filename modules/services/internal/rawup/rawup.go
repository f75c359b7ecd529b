// Package rawup is a test upstream: a real loopback TCP server whose
// answers a test writes byte by byte, for what a well-behaved http.Server
// never does (close a kept-alive connection unannounced, send 1xx,
// oversized heads, misframed bodies).
package rawup

import (
	"bufio"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Upstream is a running raw upstream.
type Upstream struct {
	ln       net.Listener
	Accepted atomic.Int32
	Requests atomic.Int32
	gone     chan struct{} // a connection was closed by the other side
}

// Start serves every connection with serve, which is given each request as
// it arrives (n counts requests across connections) and writes the answer;
// returning false closes the connection. The server stops with the test.
func Start(t testing.TB, serve func(n int, req *http.Request, w *bufio.Writer) bool) *Upstream {
	t.Helper()
	return StartTLS(t, nil, serve)
}

// StartTLS is Start for an upstream that speaks TLS with conf (nil: plain
// TCP).
func StartTLS(t testing.TB, conf *tls.Config, serve func(n int, req *http.Request, w *bufio.Writer) bool) *Upstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &Upstream{ln: ln, gone: make(chan struct{}, 1024)}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u.Accepted.Add(1)
			if conf != nil {
				c = tls.Server(c, conf)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				u.serveConn(c, serve)
			}()
		}
	}()
	return u
}

func (u *Upstream) serveConn(c net.Conn, serve func(n int, req *http.Request, w *bufio.Writer) bool) {
	br, bw := bufio.NewReader(c), bufio.NewWriter(c)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || strings.Contains(err.Error(), "reset") {
				u.signalGone()
			}
			return
		}
		more := serve(int(u.Requests.Add(1)), req, bw)
		if err := bw.Flush(); err != nil {
			u.signalGone() // closed while the answer was being written
			return
		}
		if !more {
			return
		}
	}
}

func (u *Upstream) signalGone() {
	select {
	case u.gone <- struct{}{}:
	default:
	}
}

// Host is the upstream's host:port.
func (u *Upstream) Host() string { return u.ln.Addr().String() }

// WaitGone waits (at most 5 s) until the other side closed a connection.
func (u *Upstream) WaitGone(t testing.TB) {
	t.Helper()
	select {
	case <-u.gone:
	case <-time.After(5 * time.Second):
		t.Fatal("the client did not close the upstream connection")
	}
}
