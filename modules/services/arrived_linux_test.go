package services

import (
	"net"
	"time"

	"golang.org/x/sys/unix"
)

// waitArrived waits until the bytes the upstream wrote on up have reached
// the gateway's side gw of the connection: they wait in its receive queue
// (SIOCINQ), or its kernel acknowledged them (SIOCOUTQ on the upstream's
// side is 0: read already), or the gateway closed its side.
func waitArrived(gw *net.TCPConn, up net.Conn, limit time.Duration) error {
	upRaw, err := up.(*net.TCPConn).SyscallConn()
	if err != nil {
		return nil
	}
	gwRaw, err := gw.SyscallConn()
	if err != nil {
		return nil
	}
	deadline := time.Now().Add(limit)
	for pause := time.Microsecond; time.Now().Before(deadline); pause = min(2*pause, time.Millisecond) {
		inq, outq := -1, -1
		if gwRaw.Control(func(fd uintptr) { inq, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ) }) != nil {
			return nil // closed by the gateway
		}
		if upRaw.Control(func(fd uintptr) { outq, _ = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ) }) != nil {
			return nil
		}
		if inq > 0 || outq == 0 {
			return nil
		}
		time.Sleep(pause)
	}
	return errNotArrived
}
