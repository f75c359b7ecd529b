package pressure

import (
	"bytes"
	"os"
	"strconv"
)

var pageSize = uint64(os.Getpagesize())

// rssBytes reads the resident set size from /proc/self/statm (its second
// field, in pages); 0 if it cannot.
func rssBytes() uint64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := bytes.Fields(b)
	if len(f) < 2 {
		return 0
	}
	pages, err := strconv.ParseUint(string(f[1]), 10, 64)
	if err != nil {
		return 0
	}
	return pages * pageSize
}
