// Package inproc runs Caddy configs in the test's own process (caddy.Load):
// the one place tests start, reload and stop Caddy in process. It imports
// no byteproxy package, so any package's internal tests can use it;
// testutil.InProcess runs a whole Caddyfile on top of it.
package inproc

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"testing"

	"github.com/caddyserver/caddy/v2"
	_ "github.com/caddyserver/caddy/v2/modules/caddyhttp" // the http app, static_response
	_ "github.com/caddyserver/caddy/v2/modules/filestorage"

	"github.com/byteproxy/byteproxy/internal/testutil/drain"
)

// Instance is a test's hold on the process's Caddy, which runs one config
// at a time: what a caddy.UsagePool holds across real config reloads,
// which object a new config got. The modules a config names must be
// linked into the test binary.
type Instance struct {
	t       testing.TB
	port    int    // the server of Load's configs
	storage string // the file storage of Load's configs
	loaded  bool   // a config of this instance runs
}

// held is the instance whose test holds the process's Caddy (holdMu),
// nil when no test does.
var (
	holdMu sync.Mutex
	heldMu sync.Mutex
	held   *Instance
)

// New takes the process's Caddy for t, with no config loaded yet. A test
// in another goroutine that holds it is waited for; an instance t already
// holds is stopped. When t ends the config is stopped and the hold is
// given up, after the cleanups t registers later.
func New(t testing.TB) *Instance {
	t.Helper()
	heldMu.Lock()
	prev := held
	heldMu.Unlock()
	if prev != nil && prev.t == t {
		prev.Stop()
	} else {
		holdMu.Lock()
		t.Cleanup(func() {
			heldMu.Lock()
			last := held
			held = nil
			heldMu.Unlock()
			if last != nil {
				last.Stop()
			}
			holdMu.Unlock()
		})
	}
	p := &Instance{t: t}
	heldMu.Lock()
	held = p
	heldMu.Unlock()
	return p
}

// LoadJSON runs a whole Caddy config, replacing the running one as a
// config reload does: the new config is provisioned, then the old one is
// stopped and cleaned up.
//
// It returns when the replaced config's servers have closed their
// listeners and connections (package drain), and the default client has
// no kept-alive connection to them, so the next request is the new
// config's.
func (p *Instance) LoadJSON(raw []byte) error {
	if err := load(raw); err != nil {
		return err
	}
	p.loaded = true
	return nil
}

// load runs raw with the drain wrapper on its servers.
func load(raw []byte) error {
	var cfg map[string]any
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return err
	}
	drain.Inject(cfg)
	out, err := json.Marshal(cfg)
	if err != nil {
		return err
	}
	err = caddy.Load(out, true)
	CloseClientIdle()
	return err
}

// CloseClientIdle drops the default client's idle connections, which may
// lead to a replaced server.
func CloseClientIdle() {
	if tr, ok := http.DefaultTransport.(*http.Transport); ok {
		tr.CloseIdleConnections()
	}
}

// Stop unloads the config: the apps stop, every module's Cleanup runs, the
// admin endpoint closes (caddy.Stop would leave it open). A stopped
// instance stays stopped.
func (p *Instance) Stop() {
	p.t.Helper()
	if !p.loaded {
		return
	}
	p.loaded = false
	if err := load([]byte(`{"admin":{"disabled":true,"config":{"persist":false}}}`)); err != nil {
		p.t.Errorf("stopping the in-process config: %v", err)
	}
}

// Load loads a config with the byteproxy app app (a JSON value:
// apps.byteproxy) and one server on a free loopback port whose single
// route runs handlers (JSON values, each with a "handler" member), as New
// does.
func Load(t testing.TB, app any, handlers ...any) *Instance {
	t.Helper()
	p := New(t)
	p.port, p.storage = FreePort(t), t.TempDir()
	p.Reload(app, handlers...)
	return p
}

// Reload replaces the running config by one of Load's shape.
func (p *Instance) Reload(app any, handlers ...any) {
	p.t.Helper()
	cfg := map[string]any{
		"admin":   map[string]any{"disabled": true, "config": map[string]any{"persist": false}},
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
	if err := p.LoadJSON(raw); err != nil {
		p.t.Fatalf("loading the config: %v", err)
	}
}

// URL is the URL of path on Load's server.
func (p *Instance) URL(path string) string {
	return fmt.Sprintf("http://127.0.0.1:%d%s", p.port, path)
}

// FreePort returns a loopback port that no other caller got, in this
// process or in another test process on the machine.
//
// Caddy listens with SO_REUSEPORT, so two gateways given the same port
// would both start and share its connections: a test would then talk to
// another test's gateway (and one on 127.0.0.1:P takes every connection
// from one on :P). Ports therefore come from a counter that starts at a
// random point of 20000–31999 (below the kernel's ephemeral range, so a
// bind to :0 elsewhere never takes them), are never handed out twice in
// this process, are reserved against the other test processes (`go test`
// runs packages side by side) by an flock held until this process exits,
// and are checked free before they are returned.
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
		if portsGiven[port] || !reservePort(port) {
			continue
		}
		portsGiven[port] = true
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue // in use by something that does not reserve
		}
		l.Close()
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
