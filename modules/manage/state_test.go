package manage

import (
	"net/http"
	"testing"

	"github.com/byteproxy/byteproxy/internal/testutil/inproc"
)

// TestReloadKeepsUpdateChecker: across real config reloads the update
// checker of a feed carries over (a reload fetches nothing), the pool
// holds it once, and unloading the last config releases it.
func TestReloadKeepsUpdateChecker(t *testing.T) {
	url, hits := feed(t, `[{"tag_name": "v9.0.0", "html_url": "https://example.test/v9.0.0"}]`)
	app := func(svc string) map[string]any {
		return map[string]any{"update_check": url, "services": map[string]any{svc: map[string]any{"base_url": "http://127.0.0.1:1/"}}}
	}
	manage := map[string]any{"handler": "byteproxy_manage"}
	check := func(in *inproc.Instance) {
		t.Helper()
		resp, err := http.Get(in.URL("/version/check"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("/version/check: %d", resp.StatusCode)
		}
	}
	refs := func() int { n, _ := checkers.References(url); return n }

	in := inproc.Load(t, app("one"), manage)
	check(in)
	for _, svc := range []string{"two", "three"} {
		in.Reload(app(svc), manage)
		check(in)
		if n := refs(); n != 1 {
			t.Fatalf("after a reload the checker is held %d times, want once", n)
		}
	}
	if n := hits.Load(); n != 1 {
		t.Fatalf("the feed was read %d times over two reloads, want once", n)
	}
	in.Stop()
	if n := refs(); n != 0 {
		t.Fatalf("after the last config the checker is held %d times", n)
	}
}
