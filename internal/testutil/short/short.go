// Package short is the one switch between the contributor's quick loop,
// `go test -short ./...`, and the full suite that CI runs (.ci/run, without
// -short and with CI=true). Tests that spawn the gateway binary, need Redis,
// Chromium or Node, or run for long call Skip; under -short they skip and
// say why. With CI=true nothing skips, even with -short, so a test can never
// count as passing in CI without having run.
//
// It imports nothing of the module, so any package's tests can use it.
package short

import (
	"os"
	"testing"
)

// Skip skips t under -short, unless CI=true; why names what the test needs
// that the quick loop leaves out ("spawns the gateway binary").
func Skip(t testing.TB, why string) {
	t.Helper()
	if Skipping() {
		t.Skipf("-short: %s; the full suite (.ci/run) runs it", why)
	}
}

// Skipping reports whether Skip would skip: -short and not CI.
func Skipping() bool {
	return testing.Short() && os.Getenv("CI") != "true"
}
