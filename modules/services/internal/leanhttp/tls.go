package leanhttp

import (
	"context"
	"crypto/tls"
	"net"
	"time"
)

// HTTPS: a pool made by NewTLSPool speaks HTTP/1.1 over TLS (crypto/tls,
// ALPN http/1.1, sessions resumed from a cache of the pool's own), with the
// same guarantees. The check before reuse cannot be a look at the socket
// there: what arrives on an idle TLS connection may be a post-handshake
// message (a TLS 1.3 NewSessionTicket sent after the handshake, a
// KeyUpdate), which is no answer to anything, and records the TLS layer
// has already read are not on the socket any more. Nor can it be a read
// with a deadline that has passed: the runtime then fails the read before
// asking the socket (TestExpiredDeadlineDoesNotRead). So the check is a
// read on the tls.Conn whose socket reads, for that read only, never wait
// (wire): the TLS layer processes every whole record it holds or can read
// now, post-handshake messages included, and the connection is quiet when
// that yields no data and no end, and the bytes taken from the socket end
// on a record boundary (no record is half arrived).

// NewTLSPool pools TLS connections to host (host[:port] of an https URL,
// port 443 by default), dialed with dial and secured with a clone of conf:
// its verification settings as they are, ServerName the host's name unless
// conf sets one, ALPN http/1.1 only, and a session cache of the pool's own
// unless conf has one.
func NewTLSPool(host string, dial Dialer, conf *tls.Config) *Pool {
	p := NewPool(host, dial)
	p.addr = dialAddrPort(host, "443")
	c := conf.Clone()
	if c == nil {
		c = new(tls.Config)
	}
	if c.ServerName == "" {
		c.ServerName, _, _ = net.SplitHostPort(p.addr)
	}
	c.NextProtos = []string{"http/1.1"}
	if c.ClientSessionCache == nil {
		c.ClientSessionCache = tls.NewLRUClientSessionCache(64)
	}
	p.tls = c
	return p
}

// handshake secures nc for the pool, within timeout (0: none) and ctx.
func (p *Pool) handshake(ctx context.Context, nc net.Conn, timeout time.Duration) (*conn, error) {
	w := newWire(nc)
	tc := tls.Client(w, p.tls)
	if timeout > 0 {
		_ = nc.SetDeadline(time.Now().Add(timeout))
	}
	err := p.checkALPN(tc, tc.HandshakeContext(ctx))
	if err != nil {
		_ = nc.Close() // nothing was sent; a decline (ErrNoHTTP1) is not told the server
		return nil, err
	}
	if timeout > 0 {
		_ = nc.SetDeadline(time.Time{})
	}
	c := newConn(tc, p)
	c.raw = nil // the socket is the wire's; quiet asks the TLS layer
	c.tc, c.wire = tc, w
	return c, nil
}

// quietTLS is quiet for a TLS connection: a read on the tls.Conn whose
// socket reads do not wait.
func (c *conn) quietTLS() bool {
	c.wire.check = true
	n, err := c.tc.Read(c.peekBuf[:])
	c.wire.check = false
	return n == 0 && err == errWouldBlock && c.wire.atBoundary()
}

// wire is the socket under a pooled TLS connection. It follows the TLS
// record framing of what it reads (header, then as many bytes as the
// header says) to tell whether the TLS layer holds part of a record, and
// during the check before reuse its reads do not wait: with nothing to
// read they fail with errWouldBlock, which crypto/tls passes on without
// failing the connection (a temporary net.Error).
type wire struct {
	net.Conn
	check bool    // reads do not wait
	hdr   [5]byte // the record header being read
	hdrN  int     // bytes of it read
	left  int     // bytes of the current record still to come
	nb    nbReader
}

func newWire(nc net.Conn) *wire {
	w := &wire{Conn: nc}
	w.nb.init(nc)
	return w
}

func (w *wire) Read(p []byte) (int, error) {
	var n int
	var err error
	if w.check {
		n, err = w.nb.read(p)
	} else {
		n, err = w.Conn.Read(p)
	}
	w.track(p[:n])
	return n, err
}

// track follows the record framing over b, the next bytes read.
func (w *wire) track(b []byte) {
	for len(b) > 0 {
		if w.left > 0 {
			k := min(w.left, len(b))
			w.left -= k
			b = b[k:]
			continue
		}
		w.hdr[w.hdrN] = b[0]
		w.hdrN++
		b = b[1:]
		if w.hdrN == len(w.hdr) {
			w.left = int(w.hdr[3])<<8 | int(w.hdr[4])
			w.hdrN = 0
		}
	}
}

// atBoundary: the bytes read so far end a record.
func (w *wire) atBoundary() bool { return w.hdrN == 0 && w.left == 0 }

// wouldBlock is the error of a check read with nothing to read.
type wouldBlock struct{}

func (wouldBlock) Error() string   { return "leanhttp: nothing to read yet" }
func (wouldBlock) Timeout() bool   { return true }
func (wouldBlock) Temporary() bool { return true }

var errWouldBlock error = wouldBlock{}
