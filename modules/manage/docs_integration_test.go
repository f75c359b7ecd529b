package manage

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/byteproxy/byteproxy/internal/routes"
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

// TestRoutesServed checks on a running gateway that the OpenAPI document
// it serves, the 404's list of endpoints and the routes it answers are the
// same set, routes.Table: every operation of the table is answered (not
// the JSON 404, not 405); every other method of a route gets the JSON 404
// or 405 with the table's Allow; a trailing slash is answered where the
// table says so; and paths below a route are the JSON 404.
func TestRoutesServed(t *testing.T) {
	in := startDocsGateway(t)
	table := routes.Endpoints("")

	resp, b := testutil.Do(t, "GET", in.URL(routes.DocsOpenAPI), nil)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d", routes.DocsOpenAPI, resp.StatusCode)
	}
	sameOperations(t, "the served OpenAPI document", documentedOperations(t, b), "routes.Table", table)
	resp, b = testutil.Do(t, "GET", in.URL("/nope"), nil)
	var nf struct {
		AvailableEndpoints []string `json:"availableEndpoints"`
	}
	if err := json.Unmarshal(b, &nf); resp.StatusCode != 404 || err != nil {
		t.Fatalf("GET /nope: %d %s", resp.StatusCode, b)
	}
	sameOperations(t, "the served 404's availableEndpoints", nf.AvailableEndpoints, "routes.Table", table)

	fill := strings.NewReplacer("{service}", "fake", "{path}", "some/path", "{key}", "fake")
	do := func(method string, rt routes.Route, path string) (*http.Response, []byte) {
		key := "docs-proxy-key"
		if rt.Area == routes.Management {
			key = "docs-mgmt-key"
		}
		var body []byte
		if method == "POST" || method == "PUT" || method == "PATCH" {
			body = []byte(`{}`)
		}
		return testutil.Do(t, method, in.URL(path), body, "X-API-Key", key, "Content-Type", "application/json")
	}
	notFound := func(method string, resp *http.Response, b []byte) bool {
		return resp.StatusCode == http.StatusNotFound && (method == "HEAD" || strings.Contains(string(b), "Endpoint not found"))
	}
	for _, rt := range routes.Table {
		path := fill.Replace(rt.Path)
		allow := routes.Allow(rt.Path)
		for _, method := range []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"} {
			if method == "HEAD" && !slices.Contains(rt.Methods, method) {
				continue // served with GET, but no operation of the document (the answers are checked against it)
			}
			resp, b := do(method, rt, path)
			switch {
			case slices.Contains(allow, method):
				if notFound(method, resp, b) || resp.StatusCode == http.StatusMethodNotAllowed {
					t.Errorf("%s %s (%s): the gateway does not answer it: %d %s", method, path, rt.Path, resp.StatusCode, b)
				}
			case resp.StatusCode == http.StatusMethodNotAllowed:
				if got, want := resp.Header.Get("Allow"), strings.Join(append(slices.Clone(allow), "OPTIONS"), ", "); got != want {
					t.Errorf("%s %s: Allow %q, the table says %q", method, path, got, want)
				}
			case !notFound(method, resp, b):
				t.Errorf("%s %s: %d %s; the table does not list %s, want the JSON 404 or 405", method, path, resp.StatusCode, b, method)
			}
		}
		if rt.Path == routes.ProxyService {
			continue // any path below a service is the upstream's
		}
		if rt.By == "byteproxy_manage" {
			// OPTIONS without Origin (no preflight): 204 with Allow.
			resp, _ := do("OPTIONS", rt, path)
			if want := strings.Join(append(slices.Clone(allow), "OPTIONS"), ", "); resp.StatusCode != 204 || resp.Header.Get("Allow") != want {
				t.Errorf("OPTIONS %s: %d Allow %q, want 204 Allow %q", path, resp.StatusCode, resp.Header.Get("Allow"), want)
			}
		}
		if resp, b := do("GET", rt, path+"/"); notFound("GET", resp, b) == rt.Slash {
			t.Errorf("GET %s/: %d %s; the table says trailing slash answered: %v", path, resp.StatusCode, b, rt.Slash)
		}
		// Two segments: one more can be another route's ({key} below /manage/services).
		if resp, b := do("GET", rt, strings.TrimSuffix(path, "/")+"/x/y"); !notFound("GET", resp, b) {
			t.Errorf("GET %s/x/y: %d %s, want the JSON 404", path, resp.StatusCode, b)
		}
	}
	// Paths near the routes are "Endpoint not found".
	for _, path := range []string{"/nope", "/proxy/fake", "/docs/nope", "/manage-x", "/manage", "/manage/", "/proxy/", "/healthz"} {
		key := "docs-proxy-key"
		if routes.IsManagement(path) {
			key = "docs-mgmt-key"
		}
		resp, b := testutil.Do(t, "GET", in.URL(path), nil, "X-API-Key", key)
		if resp.StatusCode != 404 || !strings.Contains(string(b), "Endpoint not found") {
			t.Errorf("GET %s: %d %s, want the JSON 404", path, resp.StatusCode, b)
		}
	}
	// Content types and the page's CSP through the whole handler chain.
	resp, _ = testutil.Do(t, "GET", in.URL("/docs"), nil)
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
