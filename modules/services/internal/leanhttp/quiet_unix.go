//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package leanhttp

import (
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
