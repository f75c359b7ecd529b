package leanhttp

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"math"
	"net"
	"net/http"
	"syscall"
	"time"
)

// conn is one upstream connection with its buffers.
type conn struct {
	net.Conn
	pool      *Pool
	limit     limitReader // bounds response heads
	br        *bufio.Reader
	bw        *bufio.Writer
	keys      []string // writeHead's, kept between exchanges
	idleSince time.Time

	// For the check before reuse (quiet): the socket, and the check as a
	// method value made once, so that a check allocates nothing.
	raw     syscall.RawConn // nil when the connection cannot be checked (or is TLS)
	tc      *tls.Conn       // the TLS connection of a pool made by NewTLSPool, else nil
	wire    *wire           // its socket (tls.go)
	peek    func(fd uintptr) bool
	peekN   int
	peekErr error
	peekBuf [1]byte
}

func newConn(nc net.Conn, p *Pool) *conn {
	c := &conn{Conn: nc, pool: p, raw: rawConn(nc)}
	c.peek = c.peekFD
	c.limit.r = nc
	c.br = bufio.NewReaderSize(&c.limit, 16<<10)
	c.bw = bufio.NewWriterSize(nc, 8<<10)
	return c
}

// checkable reports whether the connection can be checked before reuse;
// one that cannot is never pooled.
func (c *conn) checkable() bool { return c.raw != nil || c.wire != nil && c.wire.nb.checkable() }

// ErrHeadTooLarge: the upstream's response head exceeds MaxHeaderBytes.
var ErrHeadTooLarge = errors.New("response head too large")

// limitReader fails reads once n bytes were read, for as long as a head
// is being read; n is unlimited while a body is.
type limitReader struct {
	r    io.Reader
	n    int64
	read int64 // bytes read in the current exchange
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, ErrHeadTooLarge
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
func (c *conn) exchange(ctx context.Context, req *http.Request, timeout time.Duration, info Informer, reused bool) (*http.Response, error) {
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
	resp.Body = &body{body: resp.Body, c: c, stop: stop, reuse: reuse}
	return resp, nil
}

// roundTrip writes req and reads responses up to the final one, passing
// informational ones to info.
func (c *conn) roundTrip(req *http.Request, info Informer) (*http.Response, error) {
	if err := writeHead(c.bw, req, &c.keys); err != nil {
		return nil, err
	}
	if err := c.bw.Flush(); err != nil {
		return nil, err
	}
	for n := 0; ; n++ {
		c.limit.n = MaxHeaderBytes
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
			info.Informational(code, resp.Header)
		}
	}
}

func (c *conn) abort() { _ = c.SetDeadline(aLongTimeAgo) }

// finish ends an exchange: the connection goes back to the pool if its
// response was read to the end and the client's context never fired.
func (c *conn) finish(stop func() bool, reuse bool) {
	// Bytes after the response are not an answer to anything: a
	// connection holding some is not used again. (Bytes still on their
	// way are found by the check before reuse.)
	if stop() && reuse && c.br.Buffered() == 0 {
		c.pool.put(c)
		return
	}
	_ = c.Conn.Close()
}

// body is a response body on a pooled connection.
type body struct {
	body  io.ReadCloser
	c     *conn
	stop  func() bool
	reuse bool // the connection may serve another request after this body
	done  bool
}

func (b *body) Read(p []byte) (int, error) {
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
func (b *body) Close() error {
	if !b.done {
		b.done = true
		b.c.finish(b.stop, false)
	}
	return nil
}
