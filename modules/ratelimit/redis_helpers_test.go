package ratelimit

import (
	"fmt"
	"time"

	"go.uber.org/zap"
)

// The Redis of the tests is internal/testutil/redistest's.

// uniqueName keeps tests that share one Redis (CI runs every package
// against the same one) from seeing each other's keys.
func uniqueName(prefix string) string {
	return fmt.Sprintf("%s%d", prefix, time.Now().UnixNano()%1_000_000_000)
}

func nopLogger() *zap.Logger { return zap.NewNop() }
