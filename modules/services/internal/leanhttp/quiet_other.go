//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package leanhttp

import (
	"net"
	"syscall"
)

// rawConn: on this platform a connection cannot be checked without
// blocking, so none is (and none is pooled: every exchange has a
// connection of its own).
func rawConn(net.Conn) syscall.RawConn { return nil }

func (c *conn) quiet() bool { return false }

func (c *conn) peekFD(uintptr) bool { return true }

// nbReader: no read without waiting on this platform.
type nbReader struct{}

func (*nbReader) init(net.Conn) {}

func (*nbReader) read([]byte) (int, error) { return 0, errWouldBlock }

func (*nbReader) checkable() bool { return false }
