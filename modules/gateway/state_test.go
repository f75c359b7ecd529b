package gateway

import (
	"testing"

	"github.com/caddyserver/caddy/v2"

	"github.com/byteproxy/byteproxy/internal/metrics"
	"github.com/byteproxy/byteproxy/internal/testutil/inproc"
)

// liveApp is the byteproxy app of the config running in this process.
func liveApp(t *testing.T) *App {
	t.Helper()
	v, err := caddy.ActiveContext().App("byteproxy")
	if err != nil {
		t.Fatal(err)
	}
	return v.(*App)
}

// refs is appState's reference count of key (0: not held).
func refs(key string) int {
	n, _ := appState.References(key)
	return n
}

// TestReloadKeepsAppState: across real config reloads the new config gets
// the old one's metric collectors (their counts go on) and peer set, and
// appState holds each once; unloading the last config releases them.
func TestReloadKeepsAppState(t *testing.T) {
	app := func(svc string) map[string]any {
		return map[string]any{"services": map[string]any{svc: map[string]any{"base_url": "http://127.0.0.1:1/"}}}
	}
	ok := map[string]any{"handler": "static_response", "body": "ok"}
	in := inproc.Load(t, app("one"), ok)
	a1 := liveApp(t)
	a1.Metrics().AuthFailure("proxy")
	if metrics.Held() != 1 || refs(peersKey) != 1 {
		t.Fatalf("one config: metrics held %d times, peers %d, want 1 and 1", metrics.Held(), refs(peersKey))
	}

	for i, svc := range []string{"two", "three"} {
		in.Reload(app(svc), ok)
		a := liveApp(t)
		if a == a1 || a.Service(svc) == nil {
			t.Fatalf("reload %d did not load the new config", i)
		}
		a.Metrics().AuthFailure("proxy")
		if a.peers != a1.peers {
			t.Fatalf("reload %d: new peer set", i)
		}
		if metrics.Held() != 1 || refs(peersKey) != 1 {
			t.Fatalf("reload %d: metrics held %d times, peers %d, want 1 and 1 (the old config released its share)", i, metrics.Held(), refs(peersKey))
		}
		a.peers.mu.Lock()
		_, old := a.peers.apps[a1]
		_, cur := a.peers.apps[a]
		n := len(a.peers.apps)
		a.peers.mu.Unlock()
		if old || !cur || n != 1 {
			t.Fatalf("reload %d: peers hold the old app %v, the new one %v, %d apps", i, old, cur, n)
		}
		// The counts go on in the new config's registry (Caddy's /metrics):
		// the collectors are the old config's.
		if got := proxyAuthFailures(t); got != float64(i+2) {
			t.Fatalf("reload %d: auth failures %v, want %d", i, got, i+2)
		}
	}

	in.Stop()
	if metrics.Held() != 0 || refs(peersKey) != 0 {
		t.Fatalf("after the last config: metrics held %d times, peers %d, want none", metrics.Held(), refs(peersKey))
	}
	n := 0
	appState.Range(func(any, any) bool { n++; return true })
	if n != 0 {
		t.Fatalf("appState holds %d entries after the last config", n)
	}
}

// proxyAuthFailures reads byteproxy_auth_failures_total{scope="proxy"}
// from the running config's metrics registry.
func proxyAuthFailures(t *testing.T) float64 {
	t.Helper()
	ctx := caddy.ActiveContext()
	mfs, err := ctx.GetMetricsRegistry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			if mf.GetName() == "byteproxy_auth_failures_total" && len(m.GetLabel()) == 1 && m.GetLabel()[0].GetValue() == "proxy" {
				return m.GetCounter().GetValue()
			}
		}
	}
	return -1
}
