package ratelimit

import (
	"net/http"
	"testing"

	"github.com/byteproxy/byteproxy/internal/testutil/inproc"
)

// poolEntries counts what limiters holds and the references to key.
func poolEntries(key string) (entries, refs int) {
	limiters.Range(func(any, any) bool { entries++; return true })
	refs, _ = limiters.References(key)
	return entries, refs
}

// TestReloadReleasesLimiters: across real config reloads a limit's window
// and the client buckets carry over, held once; a removed service's window
// is released; unloading the last config empties the pool.
func TestReloadReleasesLimiters(t *testing.T) {
	limit := map[string]any{"max_requests": 100, "window": "1m"}
	app := func(services ...string) map[string]any {
		m := map[string]any{}
		for _, s := range services {
			m[s] = map[string]any{"base_url": "http://127.0.0.1:1/", "rate_limit": limit}
		}
		return map[string]any{"client_rate_limit": map[string]any{"max_requests": 1000, "window": "1m"}, "services": m}
	}
	handlers := []any{map[string]any{"handler": "byteproxy_ratelimit"}, map[string]any{"handler": "static_response", "body": "ok"}}
	xKey := "window|x|100|60000000000"
	in := inproc.Load(t, app("x", "y"), handlers...)
	for range 3 {
		resp, err := http.Get(in.URL("/proxy/x/a"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	if n, refs := poolEntries(xKey); n != 3 || refs != 1 {
		t.Fatalf("one config: %d entries (want x's and y's windows and the client buckets), x's window held %d times", n, refs)
	}

	in.Reload(app("x"), handlers...) // y removed
	if n, refs := poolEntries(xKey); n != 2 || refs != 1 {
		t.Fatalf("after a reload: %d entries, x's window held %d times; want 2 (y's window released) and 1", n, refs)
	}
	resp, err := http.Get(in.URL("/proxy/x/a"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got, _ := limitState(t, resp.Header, "service"); got != 96 {
		t.Fatalf("after the reload: RateLimit %q, want service r=96 (the window carried over)", resp.Header.Get("RateLimit"))
	}
	in.Stop()
	if n, refs := poolEntries(xKey); n != 0 || refs != 0 {
		t.Fatalf("after the last config: %d entries, x's window held %d times; want none", n, refs)
	}
}
