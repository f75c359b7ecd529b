package pressure

import (
	"net/http"
	"testing"
	"time"

	"github.com/byteproxy/byteproxy/internal/testutil/inproc"
)

// pooled returns the monitor in the pool, without taking a reference,
// and how many references it has.
func pooled() (*Monitor, int) {
	var m *Monitor
	monitors.Range(func(_, v any) bool { m = v.(*Monitor); return true })
	n, _ := monitors.References(monitorKey)
	return m, n
}

// TestReloadKeepsMonitor: across real config reloads the new config's
// handler takes over the process's monitor (one sampler, its in-flight
// and reserved counts) with the newest settings, and the pool holds it
// once; unloading the last config stops the sampler and releases it.
func TestReloadKeepsMonitor(t *testing.T) {
	app := func(maxHeap int64) map[string]any {
		// Only max_heap can fire, also on a loaded machine.
		return map[string]any{"pressure": map[string]any{"max_heap": maxHeap, "max_rss": int64(1) << 40,
			"max_sched_latency": "1h", "max_cpu": 1, "interval": "10ms"}}
	}
	handlers := []any{map[string]any{"handler": "byteproxy_pressure"}, map[string]any{"handler": "static_response", "body": "ok"}}
	status := func(in *inproc.Instance) int {
		t.Helper()
		resp, err := http.Get(in.URL("/x"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}

	in := inproc.Load(t, app(1), handlers...) // 1 byte of heap: sheds
	m1, n := pooled()
	if m1 == nil || n != 1 || m1.snap.Load() == nil {
		t.Fatalf("one config: monitor %p held %d times, want once and sampling", m1, n)
	}
	if got := status(in); got != http.StatusServiceUnavailable {
		t.Fatalf("max_heap 1: status %d, want 503", got)
	}
	release, _ := m1.Reserve(1000) // a request of the old config holding a body

	in.Reload(app(1<<40), handlers...)
	m2, n := pooled()
	if m2 != m1 || n != 1 {
		t.Fatalf("after a reload: monitor %p (was %p) held %d times, want the same once", m2, m1, n)
	}
	// The sampler applies the new settings when it next wakes.
	deadline := time.Now().Add(10 * time.Second)
	for got := status(in); got != http.StatusOK; got = status(in) {
		if time.Now().After(deadline) {
			t.Fatalf("max_heap 1 TiB after the reload: status %d, want 200 (the newest settings apply)", got)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := m2.reserved.Load(); got != 1000 {
		t.Fatalf("reserved %d after the reload, want the 1000 bytes the old config's request holds", got)
	}
	release()

	in.Stop()
	if m, n := pooled(); m != nil || n != 0 {
		t.Fatalf("after the last config: monitor %p held %d times, want none", m, n)
	}
	if m1.snap.Load() != nil || m1.stop != nil {
		t.Fatal("the sampler outlives the last config")
	}
}
