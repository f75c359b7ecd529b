//go:build unix

package route_test

import (
	"syscall"
	"time"
)

// processCPU is the CPU time (user and system) this process has used: on
// a machine shared with other work it says what a request costs where
// ns/op also counts the time spent waiting for a core.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
