package cors_test

// Integration tests: the gateway in the test process (testutil.InProcess),
// one config per cors setting, each case a request a browser would send.

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/byteproxy/byteproxy"
	"github.com/byteproxy/byteproxy/internal/testutil"
)

const proxyKey = "cors-test-proxy-key-7f3a9c1e5b"

type answer struct {
	status int
	header http.Header
	body   string
}

func do(t *testing.T, method, url string, headers ...string) answer {
	t.Helper()
	resp, body := testutil.Do(t, method, url, nil, headers...)
	return answer{resp.StatusCode, resp.Header, string(body)}
}

func preflight(t *testing.T, url, origin string) answer {
	t.Helper()
	return do(t, http.MethodOptions, url, "Origin", origin,
		"Access-Control-Request-Method", "POST",
		"Access-Control-Request-Headers", "authorization, x-api-key, content-type")
}

// want checks headers: a value of "" means the header must be absent.
func want(t *testing.T, what string, a answer, kv ...string) {
	t.Helper()
	for i := 0; i+1 < len(kv); i += 2 {
		k, v := kv[i], kv[i+1]
		got, present := a.header[http.CanonicalHeaderKey(k)]
		switch {
		case v == "" && present:
			t.Errorf("%s: %s should be absent, got %q", what, k, got)
		case v != "" && (len(got) != 1 || got[0] != v):
			t.Errorf("%s: %s = %q, want exactly %q", what, k, got, v)
		}
	}
}

func hasVaryOrigin(h http.Header) bool {
	for _, v := range h.Values("Vary") {
		for _, p := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(p), "Origin") {
				return true
			}
		}
	}
	return false
}

const exposed = "RateLimit, RateLimit-Policy, Retry-After, X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset, X-RateLimit-Reset-After, X-RateLimit-Used, X-RateLimit-Resource, X-RateLimit-Scope, X-RateLimit-Global, X-RateLimit-Bucket, X-Proxy-Service, X-Proxy-Duration"

// routes composes cors with auth, fixed error answers and pressure, so
// that the tests do not depend on the other modules' bodies.
const routes = `
:{{PORT}} {
	route /plain/* {
		byteproxy_cors
		respond "plain" 200
	}
	route /proxy/* {
		byteproxy_cors
		byteproxy_auth proxy
		respond "secret" 200
	}
	route /err/401 {
		byteproxy_cors
		respond "nope" 401
	}
	route /err/503 {
		byteproxy_cors
		error "down" 503
	}
	route /busy/* {
		byteproxy_cors
		byteproxy_pressure
		respond "calm" 200
	}
	route /upstream/* {
		byteproxy_cors
		reverse_proxy {{UPSTREAM}}
	}
}
`

func start(t *testing.T, cors string) *testutil.Instance {
	t.Helper()
	// An upstream that sends its own CORS headers, as public APIs do.
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Access-Control-Allow-Origin", "*")
		w.Header().Set("Access-Control-Allow-Credentials", "true")
		w.Header().Set("Access-Control-Expose-Headers", "X-Upstream-Id, X-RateLimit-Limit")
		w.Header().Set("X-Upstream-Id", "42")
		_, _ = io.WriteString(w, "upstream")
	}))
	t.Cleanup(up.Close)
	global := `{
	byteproxy {
		auth proxy {
			key ` + proxyKey + `
		}
		pressure {
			max_heap 1KiB
			interval 50ms
		}
		` + cors + `
	}
}
`
	cfg := global + strings.ReplaceAll(routes, "{{UPSTREAM}}", strings.TrimPrefix(up.URL, "http://"))
	return testutil.InProcess(t, cfg, testutil.Options{})
}

func TestAnyOrigin(t *testing.T) {
	t.Parallel()
	in := start(t, "") // no cors block: origins *
	const origin = "https://anywhere.example"

	a := do(t, "GET", in.URL("/plain/x"), "Origin", origin)
	want(t, "simple GET", a, "Access-Control-Allow-Origin", "*", "Access-Control-Allow-Credentials", "",
		"Access-Control-Expose-Headers", exposed)
	if a.status != 200 || a.body != "plain" || hasVaryOrigin(a.header) {
		t.Errorf("simple GET: %d %q %v", a.status, a.body, a.header)
	}

	a = do(t, "GET", in.URL("/plain/x"))
	want(t, "GET without Origin (same answer for caches)", a, "Access-Control-Allow-Origin", "*")
	want(t, "GET without Origin (no browser to read Expose-Headers)", a, "Access-Control-Expose-Headers", "")

	a = preflight(t, in.URL("/plain/x"), origin)
	if a.status != http.StatusNoContent {
		t.Errorf("preflight: %d %q", a.status, a.body)
	}
	want(t, "preflight", a, "Access-Control-Allow-Origin", "*", "Access-Control-Allow-Credentials", "",
		"Access-Control-Allow-Methods", "GET, POST, PUT, PATCH, DELETE, OPTIONS",
		"Access-Control-Allow-Headers", "Authorization, X-API-Key, Content-Type, X-Requested-With",
		"Access-Control-Max-Age", "86400")

	// A plain OPTIONS is not a preflight: it goes on to the next handler.
	a = do(t, http.MethodOptions, in.URL("/plain/x"), "Origin", origin)
	if a.status != 200 || a.body != "plain" {
		t.Errorf("plain OPTIONS was answered by cors: %d %q", a.status, a.body)
	}
}

// TestBeforeAuthAndOnErrors: the preflight of a protected route is 204
// without a key, and 401 and 503 answers carry the CORS headers.
func TestBeforeAuthAndOnErrors(t *testing.T) {
	t.Parallel()
	in := start(t, "")
	const origin = "https://app.example"

	a := preflight(t, in.URL("/proxy/github/user"), origin)
	if a.status != http.StatusNoContent {
		t.Fatalf("preflight of a route that requires a key: %d %q", a.status, a.body)
	}
	want(t, "preflight before auth", a, "Access-Control-Allow-Origin", "*")

	a = do(t, "GET", in.URL("/proxy/github/user"), "Origin", origin)
	if a.status != http.StatusUnauthorized {
		t.Errorf("GET without a key: %d %q", a.status, a.body)
	}
	want(t, "auth's 401", a, "Access-Control-Allow-Origin", "*", "Access-Control-Expose-Headers", exposed)

	a = do(t, "GET", in.URL("/proxy/github/user"), "Origin", origin, "X-API-Key", proxyKey)
	if a.status != 200 || a.body != "secret" {
		t.Errorf("GET with the key: %d %q", a.status, a.body)
	}
	want(t, "authorized GET", a, "Access-Control-Allow-Origin", "*")

	for _, p := range []string{"/err/401", "/err/503"} {
		a = do(t, "GET", in.URL(p), "Origin", origin)
		if !strings.HasSuffix(p, strconv.Itoa(a.status)) {
			t.Errorf("%s: status %d", p, a.status)
		}
		want(t, p, a, "Access-Control-Allow-Origin", "*", "Access-Control-Expose-Headers", exposed)
	}

	// The pressure handler's 503 (max_heap 1KiB) too.
	a = do(t, "GET", in.URL("/busy/x"), "Origin", origin)
	if a.status != 503 || !strings.Contains(a.body, "Server under pressure") {
		t.Errorf("pressure: %d %q", a.status, a.body)
	}
	want(t, "pressure 503", a, "Access-Control-Allow-Origin", "*", "Access-Control-Expose-Headers", exposed)
}

func TestOriginList(t *testing.T) {
	t.Parallel()
	in := start(t, `cors {
			origins https://app.example.com,http://localhost:3000
			headers Authorization X-API-Key X-Custom
			methods get post
			max_age 1h
		}`)
	const good = "https://app.example.com"

	a := do(t, "GET", in.URL("/plain/x"), "Origin", good)
	want(t, "listed origin", a, "Access-Control-Allow-Origin", good, "Access-Control-Allow-Credentials", "true",
		"Access-Control-Expose-Headers", exposed)
	if !hasVaryOrigin(a.header) {
		t.Errorf("listed origin: no Vary: Origin in %v", a.header)
	}
	a = do(t, "GET", in.URL("/plain/x"), "Origin", "http://localhost:3000")
	want(t, "second listed origin", a, "Access-Control-Allow-Origin", "http://localhost:3000")

	for _, bad := range []string{"https://evil.example", "https://app.example.com.evil.example", "http://app.example.com", "null"} {
		a = do(t, "GET", in.URL("/plain/x"), "Origin", bad)
		if a.status != 200 || a.body != "plain" {
			t.Errorf("%s: the request itself must still be served: %d", bad, a.status)
		}
		want(t, "disallowed "+bad, a, "Access-Control-Allow-Origin", "", "Access-Control-Allow-Credentials", "",
			"Access-Control-Expose-Headers", "")
		if !hasVaryOrigin(a.header) {
			t.Errorf("disallowed %s: no Vary: Origin", bad)
		}
		a = preflight(t, in.URL("/proxy/x/y"), bad)
		if a.status != http.StatusForbidden || !strings.Contains(a.body, `"error"`) {
			t.Errorf("preflight from %s: %d %q, want 403 JSON", bad, a.status, a.body)
		}
		want(t, "disallowed preflight "+bad, a, "Access-Control-Allow-Origin", "", "Access-Control-Allow-Methods", "")
	}

	a = do(t, "GET", in.URL("/plain/x"))
	want(t, "no Origin", a, "Access-Control-Allow-Origin", "")
	if !hasVaryOrigin(a.header) {
		t.Error("no Origin: responses must still say Vary: Origin for caches")
	}

	a = preflight(t, in.URL("/proxy/x/y"), good)
	if a.status != http.StatusNoContent {
		t.Errorf("listed preflight: %d %q", a.status, a.body)
	}
	want(t, "listed preflight", a, "Access-Control-Allow-Origin", good, "Access-Control-Allow-Credentials", "true",
		"Access-Control-Allow-Methods", "GET, POST",
		"Access-Control-Allow-Headers", "Authorization, X-API-Key, X-Custom",
		"Access-Control-Max-Age", "3600")

	a = do(t, "GET", in.URL("/err/401"), "Origin", good)
	want(t, "401 from a listed origin", a, "Access-Control-Allow-Origin", good, "Access-Control-Allow-Credentials", "true")

	// An upstream's own CORS headers do not double or override ours.
	a = do(t, "GET", in.URL("/upstream/x"), "Origin", good)
	if a.status != 200 || a.body != "upstream" {
		t.Fatalf("upstream: %d %q", a.status, a.body)
	}
	want(t, "upstream with its own CORS headers", a, "Access-Control-Allow-Origin", good,
		"Access-Control-Allow-Credentials", "true",
		"Access-Control-Expose-Headers", exposed+", X-Upstream-Id")
}

func TestUpstreamHeadersUnderAnyOrigin(t *testing.T) {
	t.Parallel()
	in := start(t, "cors on")
	a := do(t, "GET", in.URL("/upstream/x"), "Origin", "https://x.example")
	want(t, "upstream under origins *", a, "Access-Control-Allow-Origin", "*",
		"Access-Control-Allow-Credentials", "") // never with *
}

func TestCORSOff(t *testing.T) {
	t.Parallel()
	in := start(t, "cors off")
	a := do(t, "GET", in.URL("/plain/x"), "Origin", "https://app.example")
	want(t, "cors off", a, "Access-Control-Allow-Origin", "", "Access-Control-Expose-Headers", "")
	a = preflight(t, in.URL("/plain/x"), "https://app.example")
	if a.status != 200 || a.body != "plain" {
		t.Errorf("cors off: the preflight goes on to the next handler; got %d %q", a.status, a.body)
	}
	want(t, "cors off preflight", a, "Access-Control-Allow-Origin", "", "Access-Control-Allow-Methods", "")
}

// TestSiteDirective: in the standard `byteproxy` route, the preflight of
// a proxy call is answered before authentication.
func TestSiteDirective(t *testing.T) {
	t.Parallel()
	in := testutil.InProcess(t, `{
	byteproxy {
		auth proxy {
			key `+proxyKey+`
			required true
		}
		cors {
			origins https://app.example.com
		}
	}
}
:{{PORT}} {
	byteproxy
}
`, testutil.Options{})
	a := preflight(t, in.URL("/proxy/github/user"), "https://app.example.com")
	if a.status != http.StatusNoContent {
		t.Fatalf("preflight through the byteproxy directive: %d %q", a.status, a.body)
	}
	want(t, "byteproxy directive preflight", a, "Access-Control-Allow-Origin", "https://app.example.com",
		"Access-Control-Allow-Credentials", "true")
	a = do(t, "GET", in.URL("/proxy/github/user"), "Origin", "https://app.example.com")
	if a.status != http.StatusUnauthorized {
		t.Errorf("GET without a key: %d", a.status)
	}
	want(t, "byteproxy directive 401", a, "Access-Control-Allow-Origin", "https://app.example.com")
}

// githubLike is an upstream that answers like api.github.com: with its own
// Access-Control-Allow-Origin: * on every response.
func githubLike(t *testing.T) string {
	t.Helper()
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Access-Control-Allow-Origin", "*")
		w.Header().Set("Access-Control-Expose-Headers", "ETag, X-GitHub-Request-Id")
		_, _ = io.WriteString(w, `{"login":"octocat"}`)
	}))
	t.Cleanup(up.Close)
	return up.URL + "/"
}

// gatewayWith runs the standard `byteproxy` route with a service "gh" on
// a GitHub-like upstream; mgmt is the management auth block.
func gatewayWith(t *testing.T, mgmt string) *testutil.Instance {
	t.Helper()
	return testutil.InProcess(t, `{
	byteproxy {
		auth proxy {
			key `+proxyKey+`
		}
		`+mgmt+`
		service gh {
			base_url `+githubLike(t)+`
		}
	}
}
:{{PORT}} {
	byteproxy
}
`, testutil.Options{})
}

// TestOneAllowOriginWithoutOrigin (issue 11.14): a client without Origin
// (a bot, curl, a cache filling itself) got "Access-Control-Allow-Origin:
// *, *" when the upstream sends its own, which browsers reject when such
// a cached response reaches them.
func TestOneAllowOriginWithoutOrigin(t *testing.T) {
	t.Parallel()
	in := gatewayWith(t, "")
	for _, h := range [][]string{nil, {"Origin", "https://app.example"}} {
		a := do(t, "GET", in.URL("/proxy/gh/user"), append([]string{"X-API-Key", proxyKey}, h...)...)
		if a.status != 200 {
			t.Fatalf("%q: %d %s", h, a.status, a.body)
		}
		want(t, fmt.Sprintf("proxied answer, %q", h), a, "Access-Control-Allow-Origin", "*")
	}
	// The same through Caddy's reverse_proxy in a custom composition.
	up := start(t, "")
	a := do(t, "GET", up.URL("/upstream/x"))
	want(t, "reverse_proxy without Origin", a, "Access-Control-Allow-Origin", "*", "Access-Control-Allow-Credentials", "")
}

// TestPreflightAllowsClientHeaders (issue 11.14): the headers octokit and
// other clients send (If-None-Match for conditional requests,
// X-GitHub-Api-Version) are allowed when a preflight asks for them.
func TestPreflightAllowsClientHeaders(t *testing.T) {
	t.Parallel()
	in := gatewayWith(t, "")
	a := do(t, http.MethodOptions, in.URL("/proxy/gh/repos/o/r"), "Origin", "https://app.example",
		"Access-Control-Request-Method", "GET",
		"Access-Control-Request-Headers", "authorization,if-none-match,x-github-api-version")
	if a.status != http.StatusNoContent {
		t.Fatalf("preflight: %d %s", a.status, a.body)
	}
	allowed := strings.ToLower(a.header.Get("Access-Control-Allow-Headers"))
	for _, h := range []string{"authorization", "if-none-match", "x-github-api-version", "x-api-key", "content-type"} {
		if !slices.Contains(strings.Split(allowed, ", "), h) {
			t.Errorf("preflight does not allow %s: %q", h, allowed)
		}
	}
}

// TestManagementCORS (issue 11.1): without a management key, /manage/*
// carries no CORS headers and refuses preflights; with a key it is a
// normal cross-origin API.
func TestManagementCORS(t *testing.T) {
	t.Parallel()
	keyless := gatewayWith(t, "")
	a := do(t, "GET", keyless.URL("/manage/services"))
	if a.status != 200 {
		t.Fatalf("local GET: %d %s", a.status, a.body)
	}
	want(t, "keyless management answer", a, "Access-Control-Allow-Origin", "", "Access-Control-Expose-Headers", "")
	a = do(t, http.MethodOptions, keyless.URL("/manage/services/gh"), "Origin", "https://evil.example",
		"Access-Control-Request-Method", "PUT", "Access-Control-Request-Headers", "content-type")
	if a.status != http.StatusForbidden || !strings.Contains(a.body, `"error"`) {
		t.Errorf("keyless management preflight: %d %s", a.status, a.body)
	}
	want(t, "keyless management preflight", a, "Access-Control-Allow-Origin", "", "Access-Control-Allow-Methods", "")
	// The rest of the gateway still serves browsers.
	a = do(t, "GET", keyless.URL("/health"), "Origin", "https://app.example")
	want(t, "informational endpoint", a, "Access-Control-Allow-Origin", "*")

	keyed := gatewayWith(t, "auth management {\n\t\t\tkey mgmt-"+proxyKey+"\n\t\t}")
	a = do(t, http.MethodOptions, keyed.URL("/manage/services/gh"), "Origin", "https://admin.example",
		"Access-Control-Request-Method", "PUT", "Access-Control-Request-Headers", "authorization, content-type")
	if a.status != http.StatusNoContent {
		t.Errorf("management preflight with a key: %d %s", a.status, a.body)
	}
	want(t, "management preflight with a key", a, "Access-Control-Allow-Origin", "*")
}
