package examples

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/byteproxy/byteproxy/internal/testutil"
)

// TestHandlePathLinks runs examples/handle-path (the gateway under
// `handle_path /api/*`) and follows every link the gateway writes into a
// body: each carries the mount prefix, and each answers (issue 17.6).
func TestHandlePathLinks(t *testing.T) {
	caddyfile, err := os.ReadFile("handle-path/Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	const key = "handle-path-proxy-key-0123456789"
	port := testutil.FreePort(t)
	in := testutil.Start(t, string(caddyfile), testutil.Options{Port: port, Env: []string{fmt.Sprintf("PORT=%d", port), "PROXY_API_KEY=" + key}})
	get := func(path string, want int) (map[string]any, string) {
		t.Helper()
		resp, body := testutil.Do(t, "GET", in.URL(path), nil, "X-API-Key", key)
		if resp.StatusCode != want {
			t.Fatalf("GET %s: %d, want %d: %s", path, resp.StatusCode, want, body)
		}
		var m map[string]any
		if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
			if err := json.Unmarshal(body, &m); err != nil {
				t.Fatalf("GET %s: %v", path, err)
			}
		}
		return m, string(body)
	}
	follow := func(where, link string) {
		t.Helper()
		if !strings.HasPrefix(link, "/api/") {
			t.Errorf("%s: link %q lacks the mount prefix /api", where, link)
			return
		}
		get(link, 200)
	}

	welcome, _ := get("/api/", 200)
	for _, field := range []string{"documentation", "status", "health", "checkUpdates"} {
		link, _ := welcome[field].(string)
		follow("/ "+field, link)
	}

	nf, _ := get("/api/nope", 404)
	follow("404 documentation", nf["documentation"].(string))
	if msg := nf["message"].(string); !strings.Contains(msg, "'/api/nope'") {
		t.Errorf("404 message %q does not name the path the client sent", msg)
	}
	if s := nf["suggestion"].(string); !strings.Contains(s, "/api/proxy/{service}/{path}") || !strings.Contains(s, "GET /api/docs") {
		t.Errorf("404 suggestion %q lacks the prefix", s)
	}
	endpoints := nf["availableEndpoints"].([]any)
	if len(endpoints) == 0 {
		t.Fatal("404 lists no endpoint")
	}
	for _, e := range endpoints {
		method, path, _ := strings.Cut(e.(string), " ")
		if !strings.HasPrefix(path, "/api/") {
			t.Errorf("404 lists %q without the prefix", e)
		}
		if method == "GET" && !strings.Contains(path, "{") {
			follow("404 availableEndpoints", path)
		}
	}

	_, page := get("/api/docs", 200)
	if !strings.Contains(page, `href="/api/docs/openapi.json"`) {
		t.Error("the /docs page does not link its document under the prefix")
	}
	for _, p := range []string{"/api/docs/openapi.json", "/api/docs/json"} {
		spec, _ := get(p, 200)
		servers := spec["servers"].([]any)
		if url := servers[0].(map[string]any)["url"]; url != "/api/" {
			t.Errorf("%s: server URL %v, want /api/", p, url)
		}
	}

	resp, body := testutil.Do(t, "POST", in.URL("/api/health"), nil)
	if resp.StatusCode != 405 || !strings.Contains(string(body), "'/api/health'") {
		t.Errorf("POST /api/health: %d %s", resp.StatusCode, body)
	}
}
