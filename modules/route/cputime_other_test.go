//go:build !unix

package route_test

import "time"

// processCPU is not read on this system: the cpu-ns/op metric is 0.
func processCPU() time.Duration { return 0 }
