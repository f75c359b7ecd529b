// Package leanhttp is the proxy's lean HTTP/1.1 client: a pool of
// keep-alive connections to one upstream address, over TCP or TLS
// (NewTLSPool; tls.go), for bodiless requests that may be sent again
// (GET, HEAD, OPTIONS), without http.Transport.
//
// Why: for each exchange http.Transport hands the request to a writer
// goroutine and the response back from a reader goroutine, through
// channels, with a timer for the header timeout; with ReverseProxy's
// request copies that was 40% of the gateway's CPU under load. Here the
// caller's goroutine writes the request and reads the response on a
// pooled connection itself, with the standard library's wire code
// (Request.Write, http.ReadResponse), so framing, chunking and trailers
// are Go's.
//
// The guarantees are http.Transport's:
//
//   - A response is only ever the answer to the request it is returned
//     for. A connection is used again only when its last response was read
//     to its end, nothing was left after it, and nothing has arrived on it
//     since: before a pooled connection is reused, its socket is checked
//     without blocking for bytes or an end (http.Transport's background
//     reader notices the same things while a connection is idle). An
//     upstream that misframes a response (a wrong Content-Length, a body
//     after HEAD, 204 or 304, bytes after a chunked body) therefore costs
//     its connection, never another request's answer.
//   - A pooled connection the upstream closed in the meantime fails before
//     any byte of a response arrives, and the request (replayable by
//     construction) is sent again on another connection, up to three
//     times; so is a request answered 408 on a kept-alive connection
//     (servers send that just before closing an idle one).
//   - Response heads are bounded (MaxHeaderBytes), so are informational
//     responses before the final one (five).
//   - Idle connections are closed after 90 s, and a closed pool closes
//     every connection given back to it.
package leanhttp

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"
)

const (
	// idleTimeout and maxIdle match the services' http.Transport.
	idleTimeout = 90 * time.Second
	maxIdle     = 512
	// MaxHeaderBytes bounds a response head (http.Transport's default is
	// 10 MiB; no API sends more than a few KiB).
	MaxHeaderBytes = 1 << 20
	// max1xx bounds informational responses before the final one, as
	// http.Transport does.
	max1xx = 5
	// staleRetries bounds resending on pooled connections found closed.
	staleRetries = 3
)

// Dialer opens a connection, as net.Dialer.DialContext does.
type Dialer func(ctx context.Context, network, addr string) (net.Conn, error)

// Informer receives the informational (1xx) responses before the final
// one (103 Early Hints, say).
type Informer interface {
	Informational(code int, h http.Header)
}

// Pool holds the connections to one upstream address. It is safe for
// concurrent use.
type Pool struct {
	addr        string
	dial        Dialer
	tls         *tls.Config // set by NewTLSPool
	alpn        *alpnState  // set by NewAutoTLSPool (alpn.go)
	idleTimeout time.Duration

	mu       sync.Mutex
	idle     []*conn // most recently used last
	sweeping bool    // a sweep is scheduled
	closed   bool    // Close was called: nothing is pooled any more
}

// NewPool pools connections to host (host[:port] of an http URL), dialed
// with dial.
func NewPool(host string, dial Dialer) *Pool {
	return &Pool{addr: dialAddr(host), dial: dial, idleTimeout: idleTimeout}
}

// dialAddr adds the default port to a host of an http URL.
func dialAddr(host string) string { return dialAddrPort(host, "80") }

// dialAddrPort adds port to host unless it has one.
func dialAddrPort(host, port string) string {
	if _, _, err := net.SplitHostPort(host); err == nil {
		return host
	}
	h := host
	if len(h) > 1 && h[0] == '[' && h[len(h)-1] == ']' {
		h = h[1 : len(h)-1]
	}
	return net.JoinHostPort(h, port)
}

// RoundTrip sends req, a bodiless request to this pool's address with a
// method that may be sent twice, and returns the final response; informational
// responses before it go to info (which may be nil). The response body gives
// the connection back when read to its end, and closes it when closed
// before. timeout bounds the wait for the response head; ctx ending aborts
// the exchange, body included.
func (p *Pool) RoundTrip(ctx context.Context, req *http.Request, timeout time.Duration, info Informer) (*http.Response, error) {
	for attempt := 0; ; attempt++ {
		c, reused, err := p.get(ctx, timeout)
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

// CloseIdle closes the idle connections; the pool stays usable.
func (p *Pool) CloseIdle() {
	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	p.mu.Unlock()
	for _, c := range idle {
		_ = c.Conn.Close()
	}
}

// Close closes the idle connections, and every connection in use is
// closed when its exchange ends instead of going back to the pool. A
// request sent after Close still works, on a connection of its own.
func (p *Pool) Close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.CloseIdle()
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

// get returns an idle connection (reused) or dials a new one (its TLS
// handshake bounded by timeout). An idle connection with anything to read
// is closed and skipped.
func (p *Pool) get(ctx context.Context, timeout time.Duration) (c *conn, reused bool, err error) {
	now := time.Now()
	p.mu.Lock()
	for n := len(p.idle); n > 0; n = len(p.idle) {
		c = p.idle[n-1]
		p.idle[n-1] = nil
		p.idle = p.idle[:n-1]
		if now.Sub(c.idleSince) < p.idleTimeout {
			p.mu.Unlock()
			if c.quiet() {
				return c, true, nil
			}
			_ = c.Conn.Close()
			p.mu.Lock()
			continue
		}
		_ = c.Conn.Close()
	}
	p.mu.Unlock()
	if p.alpn != nil {
		c, err = p.dialAuto(ctx, timeout)
		return c, false, err
	}
	nc, err := p.dial(ctx, "tcp", p.addr)
	if err != nil {
		return nil, false, err
	}
	if p.tls != nil {
		c, err = p.handshake(ctx, nc, timeout)
		return c, false, err
	}
	return newConn(nc, p), false, nil
}

// put takes back a connection whose exchange ended cleanly.
func (p *Pool) put(c *conn) {
	c.idleSince = time.Now()
	p.mu.Lock()
	if p.closed || len(p.idle) >= maxIdle || !c.checkable() {
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
func (p *Pool) sweep() {
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
