package services

import (
	"bufio"
	"context"
	"errors"
	"io"
	"math"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"
)

// The lean path: how the forwarder sends the bulk of an API gateway's
// traffic — GET, HEAD, OPTIONS and TRACE without a body to a plain-http
// upstream — without httputil.ReverseProxy and http.Transport, which keep
// everything else (TLS and HTTP/2 upstreams, request bodies, WebSocket
// upgrades, other methods).
//
// Why: for each exchange http.Transport hands the request to a writer
// goroutine and the response back from a reader goroutine, through
// channels, with a timer for the header timeout, and ReverseProxy copies
// the request twice and its headers once; on this machine that was 40% of
// the gateway's CPU under load. Here the handler's goroutine writes the
// request and reads the response on a pooled keep-alive connection
// itself, with the standard library's wire code (Request.Write,
// http.ReadResponse), so framing, chunking and trailers are Go's; the
// forwarder applies ReverseProxy's header rules (see serveLean).
//
// What http.Transport's background reader does for idle connections is
// done here on demand: a pooled connection the upstream has closed in the
// meantime fails before any byte of a response arrives, and the request —
// replayable by construction — is sent again on another connection. Idle
// connections are closed after idleTimeout by a sweep.

const (
	// idleTimeout and maxIdle match the service's http.Transport.
	idleTimeout = 90 * time.Second
	maxIdle     = 512
	// maxHeaderBytes bounds a response head (http.Transport's default is
	// 10 MiB; no API sends more than a few KiB).
	maxHeaderBytes = 1 << 20
	// max1xx bounds informational responses before the final one, as
	// http.Transport does.
	max1xx = 5
	// staleRetries bounds resending on pooled connections found closed.
	staleRetries = 3
)

// leanMethod reports whether r, a request the server received, may take
// the lean path: a method that may be sent again, no body (a length of 0
// and not chunked: r.Body itself is never nil, and Caddy may wrap it), no
// upgrade.
func leanMethod(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
	default:
		return false
	}
	return r.ContentLength == 0 && len(r.TransferEncoding) == 0 && r.Header["Upgrade"] == nil
}

// newConnPool pools connections to host (host[:port] of an http URL),
// dialed with dial.
func newConnPool(host string, dial func(ctx context.Context, network, addr string) (net.Conn, error)) *connPool {
	return &connPool{addr: dialAddr(host), dial: dial, idleTimeout: idleTimeout}
}

// dialAddr adds the default port to a host of an http URL.
func dialAddr(host string) string {
	if _, _, err := net.SplitHostPort(host); err == nil {
		return host
	}
	h := host
	if len(h) > 1 && h[0] == '[' && h[len(h)-1] == ']' {
		h = h[1 : len(h)-1]
	}
	return net.JoinHostPort(h, "80")
}

// informer receives the informational (1xx) responses before the final one.
type informer interface {
	informational(code int, h http.Header)
}

// roundTrip sends req (a bodiless request to this pool's address) and
// returns the final response; its body gives the connection back when
// read to the end. timeout bounds the wait for the response head; ctx
// ending aborts the exchange, body included.
func (p *connPool) roundTrip(ctx context.Context, req *http.Request, timeout time.Duration, info informer) (*http.Response, error) {
	for attempt := 0; ; attempt++ {
		c, reused, err := p.get(ctx)
		if err != nil {
			return nil, err
		}
		resp, err := c.exchange(ctx, req, timeout, info, reused)
		if err == nil {
			return resp, nil
		}
		c.Close()
		if ctxErr := ctx.Err(); ctxErr != nil {
			return nil, ctxErr
		}
		stale := errors.Is(err, errFarewell) || c.limit.read == 0 && closedBeforeAnswer(err)
		if !reused || !stale || attempt >= staleRetries {
			return nil, err
		}
	}
}

// errFarewell: a kept-alive connection answered with 408 Request Timeout,
// which servers send on an idle connection just before closing it; it is
// not an answer to the request written after it.
var errFarewell = errors.New("the upstream closed an idle connection with 408 Request Timeout")

// closedBeforeAnswer: the connection turned out to be closed (http.ReadResponse
// reports an end before the status line as ErrUnexpectedEOF). Together with
// no byte read, that is a pooled connection the upstream had let go.
func closedBeforeAnswer(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// connPool holds the idle connections to one upstream address, most
// recently used last.
type connPool struct {
	addr        string
	dial        func(ctx context.Context, network, addr string) (net.Conn, error)
	idleTimeout time.Duration

	mu       sync.Mutex
	idle     []*leanConn
	sweeping bool // a sweep is scheduled
}

// get returns an idle connection (reused) or dials a new one.
func (p *connPool) get(ctx context.Context) (c *leanConn, reused bool, err error) {
	now := time.Now()
	p.mu.Lock()
	for n := len(p.idle); n > 0; n = len(p.idle) {
		c = p.idle[n-1]
		p.idle[n-1] = nil
		p.idle = p.idle[:n-1]
		if now.Sub(c.idleSince) < p.idleTimeout {
			p.mu.Unlock()
			return c, true, nil
		}
		_ = c.Conn.Close()
	}
	p.mu.Unlock()
	nc, err := p.dial(ctx, "tcp", p.addr)
	if err != nil {
		return nil, false, err
	}
	c = &leanConn{Conn: nc, pool: p}
	c.limit.r = nc
	c.br = bufio.NewReaderSize(&c.limit, 16<<10)
	c.bw = bufio.NewWriterSize(nc, 8<<10)
	return c, false, nil
}

// put takes back a connection whose exchange ended cleanly.
func (p *connPool) put(c *leanConn) {
	c.idleSince = time.Now()
	p.mu.Lock()
	if len(p.idle) >= maxIdle {
		p.mu.Unlock()
		_ = c.Conn.Close()
		return
	}
	p.idle = append(p.idle, c)
	if !p.sweeping {
		p.sweeping = true
		time.AfterFunc(p.idleTimeout, p.sweep)
	}
	p.mu.Unlock()
}

// sweep closes connections idle for idleTimeout, oldest first, and comes
// back while any are left.
func (p *connPool) sweep() {
	now := time.Now()
	p.mu.Lock()
	n := 0
	for n < len(p.idle) && now.Sub(p.idle[n].idleSince) >= p.idleTimeout {
		_ = p.idle[n].Conn.Close()
		n++
	}
	p.idle = append(p.idle[:0], p.idle[n:]...)
	clear(p.idle[len(p.idle):cap(p.idle)])
	if len(p.idle) > 0 {
		time.AfterFunc(p.idleTimeout-now.Sub(p.idle[0].idleSince), p.sweep)
	} else {
		p.sweeping = false
	}
	p.mu.Unlock()
}

func (p *connPool) closeIdle() {
	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	p.mu.Unlock()
	for _, c := range idle {
		_ = c.Conn.Close()
	}
}

// leanConn is one upstream connection with its buffers.
type leanConn struct {
	net.Conn
	pool      *connPool
	limit     limitReader // bounds response heads
	br        *bufio.Reader
	bw        *bufio.Writer
	idleSince time.Time
}

// errHeadTooLarge: the upstream's response head exceeds maxHeaderBytes.
var errHeadTooLarge = errors.New("response head too large")

// limitReader fails reads once n bytes were read, for as long as a head
// is being read; n is unlimited while a body is.
type limitReader struct {
	r    io.Reader
	n    int64
	read int64 // bytes read in the current exchange
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errHeadTooLarge
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	l.read += int64(n)
	return n, err
}

// aLongTimeAgo is a deadline that has passed: it wakes a blocked read.
var aLongTimeAgo = time.Unix(1, 0)

// exchange sends req and reads the final response head. The body it
// returns gives the connection back to the pool when read to its end.
func (c *leanConn) exchange(ctx context.Context, req *http.Request, timeout time.Duration, info informer, reused bool) (*http.Response, error) {
	c.limit.read = 0
	if timeout > 0 {
		_ = c.SetDeadline(time.Now().Add(timeout))
	}
	// A client that goes away ends the exchange at once, as with
	// http.Transport. The watch lasts until the body is done.
	stop := context.AfterFunc(ctx, c.abort)
	resp, err := c.roundTrip(req, info)
	if err == nil && reused && resp.StatusCode == http.StatusRequestTimeout {
		err = errFarewell
	}
	if err != nil {
		stop()
		return nil, err
	}
	c.limit.n = math.MaxInt64
	// The timeout is for the head: a body may stream for as long as it
	// takes. A body already in the buffer needs no more reads, so the
	// common small answer skips the deadline's second update (the next
	// exchange sets a new one).
	if timeout > 0 && (resp.ContentLength < 0 || int64(c.br.Buffered()) < resp.ContentLength) {
		_ = c.SetDeadline(time.Time{})
		if ctx.Err() != nil {
			c.abort() // the watch fired before the deadline was cleared
		}
	}
	reuse := !resp.Close && (resp.ContentLength >= 0 || len(resp.TransferEncoding) > 0)
	if resp.Body == http.NoBody {
		c.finish(stop, reuse)
		return resp, nil
	}
	resp.Body = &leanBody{body: resp.Body, c: c, stop: stop, reuse: reuse}
	return resp, nil
}

// roundTrip writes req and reads responses up to the final one, passing
// informational ones to info.
func (c *leanConn) roundTrip(req *http.Request, info informer) (*http.Response, error) {
	if err := req.Write(c.bw); err != nil {
		return nil, err
	}
	if err := c.bw.Flush(); err != nil {
		return nil, err
	}
	for n := 0; ; n++ {
		c.limit.n = maxHeaderBytes
		resp, err := http.ReadResponse(c.br, req)
		if err != nil {
			return nil, err
		}
		code := resp.StatusCode
		if code < 100 || code > 199 {
			return resp, nil
		}
		if code == http.StatusSwitchingProtocols || n >= max1xx {
			// An upgrade was not asked for on this path; too many 1xx
			// is what http.Transport refuses too.
			return nil, errors.New("unexpected informational response " + resp.Status)
		}
		if info != nil {
			info.informational(code, resp.Header)
		}
	}
}

func (c *leanConn) abort() { _ = c.SetDeadline(aLongTimeAgo) }

// finish ends an exchange: the connection goes back to the pool if its
// response was read to the end and the client's context never fired.
func (c *leanConn) finish(stop func() bool, reuse bool) {
	// Bytes after the response are not an answer to anything: a
	// connection holding some is not used again.
	if stop() && reuse && c.br.Buffered() == 0 {
		c.pool.put(c)
		return
	}
	_ = c.Conn.Close()
}

// leanBody is a response body on a pooled connection.
type leanBody struct {
	body  io.ReadCloser
	c     *leanConn
	stop  func() bool
	reuse bool // the connection may serve another request after this body
	done  bool
}

func (b *leanBody) Read(p []byte) (int, error) {
	if b.done {
		return 0, io.EOF
	}
	n, err := b.body.Read(p)
	if err != nil {
		b.done = true
		b.c.finish(b.stop, b.reuse && err == io.EOF)
	}
	return n, err
}

// Close before the end closes the connection rather than reading the rest
// of a body no one wants.
func (b *leanBody) Close() error {
	if !b.done {
		b.done = true
		b.c.finish(b.stop, false)
	}
	return nil
}
