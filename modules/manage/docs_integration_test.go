package manage

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/byteproxy/byteproxy/internal/testutil"
)

const docsGatewayCaddyfile = `{
	byteproxy {
		auth proxy {
			key docs-proxy-key
		}
		auth management {
			key docs-mgmt-key
		}
		service fake {
			base_url {{UPSTREAM}}
			rate_limit 100 1m
		}
	}
}

:{{PORT}} {
	bind 127.0.0.1
	byteproxy
}
`

func startDocsGateway(t *testing.T) *testutil.Instance {
	t.Helper()
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "upstream "+r.Method+" "+r.URL.Path)
	}))
	t.Cleanup(up.Close)
	return testutil.Start(t, strings.ReplaceAll(docsGatewayCaddyfile, "{{UPSTREAM}}", up.URL+"/"), testutil.Options{})
}

// TestDocsRoutesAnswered requests every documented operation from a
// running gateway (with the right key) and checks that none is the JSON
// 404 "Endpoint not found"; together with TestOpenAPIDocument's list
// check, every route the gateway answers is documented and every
// documented route is answered.
func TestDocsRoutesAnswered(t *testing.T) {
	in := startDocsGateway(t)
	fill := strings.NewReplacer("{service}", "fake", "{path}", "some/path", "{key}", "fake")
	for _, op := range gatewayRoutes {
		method, path, _ := strings.Cut(op, " ")
		key := "docs-proxy-key"
		if strings.HasPrefix(path, "/manage") {
			key = "docs-mgmt-key"
		}
		var body []byte
		if method == "POST" || method == "PUT" {
			body = []byte(`{}`)
		}
		resp, b := testutil.Do(t, method, in.URL(fill.Replace(path)), body, "X-API-Key", key, "Content-Type", "application/json")
		if resp.StatusCode == http.StatusNotFound && (method == "HEAD" || strings.Contains(string(b), "Endpoint not found")) {
			t.Errorf("%s: the gateway does not answer it: %d %s", op, resp.StatusCode, b)
		}
		if resp.StatusCode == http.StatusMethodNotAllowed {
			t.Errorf("%s: 405 %s", op, b)
		}
	}
	// The check can fail: paths that do not exist are "Endpoint not found".
	for _, path := range []string{"/nope", "/proxy/fake", "/docs/nope", "/manage-x"} {
		resp, b := testutil.Do(t, "GET", in.URL(path), nil, "X-API-Key", "docs-proxy-key")
		if resp.StatusCode != 404 || !strings.Contains(string(b), "Endpoint not found") {
			t.Errorf("GET %s: %d %s, want the JSON 404", path, resp.StatusCode, b)
		}
	}
	// Content types and the page's CSP through the whole handler chain.
	resp, _ := testutil.Do(t, "GET", in.URL("/docs"), nil)
	if resp.Header.Get("Content-Type") != "text/html; charset=utf-8" || !strings.Contains(resp.Header.Get("Content-Security-Policy"), "nonce-") {
		t.Errorf("/docs headers %v", resp.Header)
	}
	resp, _ = testutil.Do(t, "GET", in.URL("/docs/openapi.json"), nil)
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		t.Errorf("/docs/openapi.json Content-Type %q", resp.Header.Get("Content-Type"))
	}
}

// TestGatewayDocsChromium opens /docs of a running gateway in headless
// Chromium and finds every operation in the rendered page.
func TestGatewayDocsChromium(t *testing.T) {
	chromium(t)
	in := startDocsGateway(t)
	assertRendered(t, browse(t, in.URL("/docs")))
}

// TestGatewayVersionCheck configures update_check in the Caddyfile and
// reads /version/check through the running gateway.
func TestGatewayVersionCheck(t *testing.T) {
	feedURL, hits := feed(t, `[{"tag_name": "v99.0.0", "html_url": "https://example.test/v99", "published_at": "2026-10-01T00:00:00Z"}]`)
	in := testutil.Start(t, `{
	byteproxy {
		update_check `+feedURL+`
	}
}

:{{PORT}} {
	bind 127.0.0.1
	byteproxy
}
`, testutil.Options{})
	if n := hits.Load(); n != 0 {
		t.Fatalf("the feed was read %d times at startup, want 0 (only on demand)", n)
	}
	resp, b := testutil.Do(t, "GET", in.URL("/version/check"), nil)
	if resp.StatusCode != 200 || !strings.Contains(string(b), `"latestVersion":"v99.0.0"`) || !strings.Contains(string(b), `"updateAvailable":true`) {
		t.Fatalf("/version/check: %d %s", resp.StatusCode, b)
	}
}
