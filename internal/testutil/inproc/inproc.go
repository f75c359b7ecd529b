// Package inproc runs a Caddy config in the test's own process, for tests
// that look at package state across real config reloads. It imports no
// byteproxy package, so any package's internal tests can use it.
package inproc

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"testing"

	"github.com/caddyserver/caddy/v2"
	_ "github.com/caddyserver/caddy/v2/modules/caddyhttp" // the http app, static_response
	_ "github.com/caddyserver/caddy/v2/modules/filestorage"
)

// Instance is a Caddy config running in the test's own process
// (caddy.Load), for tests that look at package state across real config
// reloads: what a caddy.UsagePool holds, which object a new config got.
// One Caddy runs per process, so such tests must not be parallel. The
// modules the config names must be linked into the test binary.
type Instance struct {
	t       testing.TB
	port    int
	storage string
}

// Load loads a config with the byteproxy app app (a JSON value:
// apps.byteproxy) and one server on a free loopback port whose single
// route runs handlers (JSON values, each with a "handler" member). Caddy
// is stopped when the test ends.
func Load(t testing.TB, app any, handlers ...any) *Instance {
	t.Helper()
	p := &Instance{t: t, port: FreePort(t), storage: t.TempDir()}
	p.Reload(app, handlers...)
	t.Cleanup(func() { _ = caddy.Stop() })
	return p
}

// Reload replaces the running config as a config reload does: the new
// config is provisioned, then the old one is stopped and cleaned up.
func (p *Instance) Reload(app any, handlers ...any) {
	p.t.Helper()
	cfg := map[string]any{
		"admin":   map[string]any{"disabled": true},
		"logging": map[string]any{"logs": map[string]any{"default": map[string]any{"level": "ERROR"}}},
		"storage": map[string]any{"module": "file_system", "root": p.storage},
		"apps": map[string]any{
			"byteproxy": app,
			"http": map[string]any{"servers": map[string]any{"test": map[string]any{
				"listen":          []string{fmt.Sprintf("127.0.0.1:%d", p.port)},
				"routes":          []any{map[string]any{"handle": handlers}},
				"automatic_https": map[string]any{"disable": true},
			}}},
		},
	}
	raw, err := json.Marshal(cfg)
	if err != nil {
		p.t.Fatal(err)
	}
	if err := caddy.Load(raw, true); err != nil {
		p.t.Fatalf("loading the config: %v", err)
	}
}

// URL is the server's URL for path.
func (p *Instance) URL(path string) string {
	return fmt.Sprintf("http://127.0.0.1:%d%s", p.port, path)
}

// Stop unloads the config (every module's Cleanup runs).
func (p *Instance) Stop() {
	p.t.Helper()
	if err := caddy.Stop(); err != nil {
		p.t.Fatal(err)
	}
}

// Caddy listens with SO_REUSEPORT, so two gateways given the same port
// would both start and share its connections: a test would then talk to
// another test's gateway. Ports therefore come from a counter that starts
// at a random point of 20000–31999 (below the kernel's ephemeral range, so
// a bind to :0 elsewhere never takes them), are never handed out twice in
// this process, and are checked free before they are returned.
func FreePort(t testing.TB) int {
	t.Helper()
	portMu.Lock()
	defer portMu.Unlock()
	if nextPort == 0 {
		nextPort = 20000 + rand.IntN(12000)
	}
	for range 2000 {
		port := nextPort
		nextPort++
		if nextPort >= 32000 {
			nextPort = 20000
		}
		if portsGiven[port] {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue // in use
		}
		l.Close()
		portsGiven[port] = true
		return port
	}
	t.Fatal("no free loopback port in 20000-31999")
	return 0
}

var (
	portMu     sync.Mutex
	nextPort   int
	portsGiven = map[int]bool{}
)
