//go:build !unix

package pressure

import "time"

// cpuTime is not measured off Unix: the max_cpu threshold never fires.
func cpuTime() (time.Duration, bool) { return 0, false }
