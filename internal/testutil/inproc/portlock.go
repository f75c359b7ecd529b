package inproc

import (
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
// holds it (or the lock cannot be taken at all).
func reservePort(port int) bool {
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("byteproxy-test-ports-%d", os.Getuid()))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return false
	}
	f, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("%d.lock", port)), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return false
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return false
	}
	reservedPorts = append(reservedPorts, f)
	return true
}
