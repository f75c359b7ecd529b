package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"time"
)

// roleEnv marks a re-executed copy of this binary (or of its test binary)
// that should act as the benchmark's upstream instead of the benchmark.
// Running the upstream in its own process keeps its CPU time out of the
// gateway's figures.
const roleEnv = "BYTEPROXY_BENCH_ROLE"

// upstreamBody is the fixed ~100-byte JSON answer of the upstream.
const upstreamBody = `{"ok":true,"service":"byteproxy-bench-upstream","message":"hello from the load benchmark","n":42}`

// upstreamResponse is the complete HTTP/1.1 response, built once.
var upstreamResponse = []byte("HTTP/1.1 200 OK\r\n" +
	"Content-Type: application/json\r\n" +
	"Content-Length: " + strconv.Itoa(len(upstreamBody)) + "\r\n" +
	"\r\n" + upstreamBody)

// The upstream process's settings, from its environment.
const (
	upstreamKindEnv  = "BYTEPROXY_BENCH_UPSTREAM"       // http or https
	upstreamProtoEnv = "BYTEPROXY_BENCH_UPSTREAM_PROTO" // https only: h1, h2 or both
	upstreamDelayEnv = "BYTEPROXY_BENCH_UPSTREAM_DELAY" // a Go duration: wait before each answer
)

// upstreamDelay is how long the upstream waits before each answer (its
// BYTEPROXY_BENCH_UPSTREAM_DELAY), like a real API's latency: with it the
// proxies' throughput is bounded by the upstream instead of the CPU.
var upstreamDelay time.Duration

// Upstream kinds (-upstream) and the protocols the HTTPS upstream offers
// (-upstream-proto).
const (
	kindHTTP  = "http"
	kindHTTPS = "https"
	protoH1   = "h1"
	protoH2   = "h2"
	protoBoth = "both"
)

// runUpstream is the upstream process: it listens on a loopback port,
// prints "listening <addr>" on stdout, then one line "conn <h1|h2>
// <resumed>" for every connection it accepts (so the benchmark can tell
// which protocol each target spoke and how often it connected), and serves
// until its stdin closes (the benchmark exited or died) or the process is
// killed.
func runUpstream() {
	kind, proto := os.Getenv(upstreamKindEnv), os.Getenv(upstreamProtoEnv)
	if kind == "" {
		kind = kindHTTP
	}
	if v := os.Getenv(upstreamDelayEnv); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			fmt.Fprintln(os.Stderr, "upstream:", upstreamDelayEnv, err)
			os.Exit(1)
		}
		upstreamDelay = d
	}
	if sim := os.Getenv(upstreamSimEnv); sim != "" {
		runSimUpstream(sim)
		return
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, "upstream:", err)
		os.Exit(1)
	}
	var serve func(net.Conn)
	switch kind {
	case kindHTTP:
		serve = func(c net.Conn) {
			announceConn(protoH1, false)
			serveUpstreamConn(c)
		}
	case kindHTTPS:
		u, err := newTLSUpstream(ln.Addr(), proto, announceConn)
		if err != nil {
			fmt.Fprintln(os.Stderr, "upstream:", err)
			os.Exit(1)
		}
		serve = u.serve
	default:
		fmt.Fprintf(os.Stderr, "upstream: unknown kind %q\n", kind)
		os.Exit(1)
	}
	fmt.Printf("listening %s\n", ln.Addr())
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, "upstream:", err)
			os.Exit(1)
		}
		go serve(c)
	}
}

// announceConn tells the benchmark (on stdout, one write per line) that a
// connection speaking proto was accepted, and whether its TLS session was
// resumed.
func announceConn(proto string, resumed bool) {
	fmt.Printf("conn %s %t\n", proto, resumed)
}

// serveUpstreamConn answers every request on a keep-alive connection with
// upstreamResponse. It is a deliberately minimal HTTP/1.1 server — request
// head, optional Content-Length body, pipelining — so that the upstream
// costs as little CPU as possible and the figures are about the proxies.
// Chunked request bodies are not supported (501, connection closed).
func serveUpstreamConn(c net.Conn) {
	defer c.Close()
	br := bufio.NewReaderSize(c, 8192)
	bw := bufio.NewWriterSize(c, 8192)
	for {
		head, err := readHead(br)
		if err != nil {
			return
		}
		if head.chunked {
			_, _ = bw.WriteString("HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
			_ = bw.Flush()
			return
		}
		if head.contentLength > 0 {
			if _, err := io.CopyN(io.Discard, br, head.contentLength); err != nil {
				return
			}
		}
		if upstreamDelay > 0 {
			time.Sleep(upstreamDelay)
		}
		if _, err := bw.Write(upstreamResponse); err != nil {
			return
		}
		// Flush unless another pipelined request is already waiting.
		if br.Buffered() == 0 || head.close {
			if err := bw.Flush(); err != nil {
				return
			}
		}
		if head.close {
			return
		}
	}
}

type requestHead struct {
	contentLength int64
	chunked       bool
	close         bool
}

var (
	hdrContentLength    = []byte("content-length:")
	hdrConnection       = []byte("connection:")
	hdrTransferEncoding = []byte("transfer-encoding:")
)

// readHead reads a request line and headers up to the empty line.
func readHead(br *bufio.Reader) (requestHead, error) {
	var h requestHead
	line, err := br.ReadSlice('\n')
	if err != nil {
		return h, err
	}
	h.close = bytes.Contains(line, []byte("HTTP/1.0"))
	for i := 0; ; i++ {
		if i > 200 {
			return h, fmt.Errorf("too many header lines")
		}
		line, err = br.ReadSlice('\n')
		if err != nil {
			return h, err
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 {
			return h, nil
		}
		lower := bytes.ToLower(line)
		switch {
		case bytes.HasPrefix(lower, hdrContentLength):
			n, err := strconv.ParseInt(string(bytes.TrimSpace(lower[len(hdrContentLength):])), 10, 64)
			if err != nil || n < 0 {
				return h, fmt.Errorf("bad Content-Length")
			}
			h.contentLength = n
		case bytes.HasPrefix(lower, hdrConnection):
			v := bytes.TrimSpace(lower[len(hdrConnection):])
			if bytes.Equal(v, []byte("close")) {
				h.close = true
			} else if bytes.Equal(v, []byte("keep-alive")) {
				h.close = false
			}
		case bytes.HasPrefix(lower, hdrTransferEncoding):
			h.chunked = true
		}
	}
}
