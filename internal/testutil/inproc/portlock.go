package inproc

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// reservedPorts keeps the lock files of the ports this process reserved
// open: the flock lasts as long as the descriptor, and the kernel drops it
// when the process ends, however it ends.
var reservedPorts []*os.File

// reservePort takes an exclusive flock on port's file in a directory that
// every test process of this user shares; false when another process
// holds it. Where no lock can be taken at all (no such directory, a file
// system without flock), the port is not refused: the check stays what it
// was before the locks, this process's own record and a test bind.
func reservePort(port int) bool {
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("byteproxy-test-ports-%d", os.Getuid()))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return true
	}
	f, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("%d.lock", port)), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return true
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return !errors.Is(err, syscall.EWOULDBLOCK)
	}
	reservedPorts = append(reservedPorts, f)
	return true
}
