//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package leanhttp

import (
	"io"
	"net"
	"syscall"
)

// rawConn returns the socket of nc, or nil when nc has none.
func rawConn(nc net.Conn) syscall.RawConn {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return raw
}

// quiet reports whether nothing has arrived on an idle connection since
// its last response: no byte and no end. It asks the socket without
// taking anything and without waiting (recv with MSG_PEEK|MSG_DONTWAIT),
// one system call per reuse.
func (c *conn) quiet() bool {
	if c.tc != nil {
		return c.quietTLS()
	}
	if c.raw == nil {
		return false
	}
	c.peekN, c.peekErr = 0, nil
	if err := c.raw.Read(c.peek); err != nil {
		return false
	}
	return c.peekErr == syscall.EAGAIN || c.peekErr == syscall.EWOULDBLOCK
}

// peekFD is quiet's look at the socket; returning true tells the poller
// not to wait for readability.
func (c *conn) peekFD(fd uintptr) bool {
	c.peekN, _, c.peekErr = syscall.Recvfrom(int(fd), c.peekBuf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	return true
}

// nbReader reads a socket without waiting (one recv with MSG_DONTWAIT).
type nbReader struct {
	raw syscall.RawConn
	fn  func(fd uintptr) bool
	buf []byte
	n   int
	err error
}

func (r *nbReader) init(nc net.Conn) {
	r.raw = rawConn(nc)
	r.fn = r.readFD
}

// read returns what the socket holds now: bytes, io.EOF at its end, or
// errWouldBlock when nothing has arrived.
func (r *nbReader) read(p []byte) (int, error) {
	if r.raw == nil || len(p) == 0 {
		return 0, errWouldBlock
	}
	r.buf = p
	err := r.raw.Read(r.fn)
	r.buf = nil
	switch {
	case err != nil:
		return 0, err
	case r.err == syscall.EAGAIN || r.err == syscall.EWOULDBLOCK:
		return 0, errWouldBlock
	case r.err != nil:
		return 0, r.err
	case r.n <= 0:
		return 0, io.EOF
	}
	return r.n, nil
}

func (r *nbReader) readFD(fd uintptr) bool {
	r.n, _, r.err = syscall.Recvfrom(int(fd), r.buf, syscall.MSG_DONTWAIT)
	return true
}

func (r *nbReader) checkable() bool { return r.raw != nil }
