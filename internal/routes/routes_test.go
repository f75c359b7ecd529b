package routes

import (
	"context"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// TestOfMatchesPathMatchers checks Of against the path matchers the
// standard route was written with, on the paths where raw prefixes and
// Caddy's cleaned, case-insensitive matching differ.
func TestOfMatchesPathMatchers(t *testing.T) {
	proxyM := caddyhttp.MatchPath{"/proxy/*"}
	manageM := caddyhttp.MatchPath{"/manage", "/manage/*"}
	for _, p := range []string{
		"/proxy/bench/ping", "/proxy/", "/proxy", "/proxyx/a", "/PROXY/a/b", "//proxy/a/b",
		"/proxy/../manage/keys", "/a/../proxy/s/x", "/proxy/./s/x", "/proxy//s/x",
		"/manage", "/manage/", "/manage/keys", "/MANAGE/keys", "/manager", "//manage",
		"/manage/../health", "/health", "/", "", "/up", "/x/..", "/proxy/s/x/",
		"/Manage", "/managex/y", "/proxy/manage/x", "/manage/./services",
	} {
		r := httptest.NewRequest("GET", "/", nil)
		r.URL.Path = p
		r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
		want := Public
		if ok, _ := proxyM.MatchWithError(r); ok {
			want = Proxy
		} else if ok, _ := manageM.MatchWithError(r); ok {
			want = Management
		}
		if got := Of(p); got != want {
			t.Errorf("Of(%q) = %d, the path matchers say %d", p, got, want)
		}
	}
}

// sinkBool keeps the results of the lookups measured for allocations.
var sinkBool bool

func TestLookupsDoNotAllocate(t *testing.T) {
	for name, f := range map[string]func(){
		"Of":            func() { Of("/proxy/bench/ping") },
		"Of management": func() { Of("/manage/services/x") },
		"IsProbe":       func() { sinkBool = IsProbe("/proxy/bench/ping") },
		"IsManagement":  func() { sinkBool = IsManagement("/manage/services/x") },
		"ProxyPath":     func() { ProxyPath("/proxy/bench/ping") },
		"IsReservedKey": func() { IsReservedKey("Auth-Debug"); IsReservedKey("api-debug") },
		"RateLimitPath": func() { RateLimitPath("/proxy/services/bench/rate-limit") },
		"Endpoints":     func() { Endpoints("") },
		"Allow":         func() { Allow(ManageService) },
	} {
		if n := testing.AllocsPerRun(100, f); n != 0 {
			t.Errorf("%s allocates %v times on a clean path", name, n)
		}
	}
}

// TestIndexesMatchTable checks the lookups that do not read Table on each
// request against it: the area of each path, the probes, the reserved
// service keys, and that every constant path is in Table once.
func TestIndexesMatchTable(t *testing.T) {
	seen := map[string]bool{}
	var reserved []string
	for _, rt := range Table {
		if seen[rt.Path] {
			t.Errorf("%s twice in Table", rt.Path)
		}
		seen[rt.Path] = true
		if len(rt.Methods) == 0 || rt.By == "" {
			t.Errorf("%s: methods %q, by %q", rt.Path, rt.Methods, rt.By)
		}
		concrete := strings.NewReplacer("{service}", "svc", "{path}", "a/b", "{key}", "svc").Replace(rt.Path)
		if got := Of(concrete); got != rt.Area {
			t.Errorf("Of(%q) = %d, Table says %d", concrete, got, rt.Area)
		}
		if rt.Slash {
			if got := Of(concrete + "/"); got != rt.Area {
				t.Errorf("Of(%q) = %d, Table says %d", concrete+"/", got, rt.Area)
			}
		}
		if IsProbe(rt.Path) != rt.Probe {
			t.Errorf("IsProbe(%q) = %v, Table says %v", rt.Path, IsProbe(rt.Path), rt.Probe)
		}
		if IsManagement(concrete) != (rt.Area == Management) {
			t.Errorf("IsManagement(%q) = %v", concrete, IsManagement(concrete))
		}
		if rt.Area == Proxy && rt.Path != ProxyService {
			seg, _, _ := strings.Cut(strings.TrimPrefix(rt.Path, ProxyPrefix), "/")
			if !slices.Contains(reserved, seg) {
				reserved = append(reserved, seg)
			}
			if _, _, ok := ProxyPath(concrete + "/x"); ok {
				t.Errorf("%s/x is a service call", concrete)
			}
		}
	}
	slices.Sort(reserved)
	have := slices.Sorted(slices.Values(reservedKeys[:]))
	if !slices.Equal(reserved, have) {
		t.Errorf("reserved keys %q, Table says %q", have, reserved)
	}
	for _, p := range []string{Root, Health, Status, Up, Ready, Version, VersionCheck, AuthStatus, Docs, DocsOpenAPI, DocsJSON,
		ProxyService, ProxyServices, ProxyRateLimit, ProxyAuthTest, ProxyAuthDebug, ProxyKeyDebug,
		ManageServices, ManageService, ManageServiceTest, ManageDiagnostics, ManageKeyDebug} {
		if !seen[p] {
			t.Errorf("%s is not in Table", p)
		}
		delete(seen, p)
	}
	for p := range seen {
		t.Errorf("%s in Table has no constant", p)
	}
}

func TestEndpointsAndAllow(t *testing.T) {
	ops := Endpoints("")
	if len(ops) != 32 || ops[0] != "GET /" || ops[1] != "OPTIONS /" || !slices.Contains(ops, "DELETE /manage/services/{key}") {
		t.Errorf("Endpoints = %q", ops)
	}
	// By path, then in the OpenAPI document's order of methods.
	i := slices.Index(ops, "GET /proxy/{service}/{path}")
	if got := ops[i : i+7]; !slices.Equal(got, []string{
		"GET /proxy/{service}/{path}", "POST /proxy/{service}/{path}", "PUT /proxy/{service}/{path}", "PATCH /proxy/{service}/{path}",
		"DELETE /proxy/{service}/{path}", "HEAD /proxy/{service}/{path}", "OPTIONS /proxy/{service}/{path}"}) {
		t.Errorf("proxy operations %q", got)
	}
	under := Endpoints("/api")
	if len(under) != len(ops) || under[0] != "GET /api/" || under[len(under)-1] != "GET /api"+ops[len(ops)-1][len("GET "):] {
		t.Errorf("Endpoints(/api) = %q", under)
	}
	for path, want := range map[string]string{
		ManageServices: "GET,HEAD,POST", ManageService: "GET,HEAD,PUT,DELETE", ManageServiceTest: "POST",
		Root: "GET,HEAD", Health: "GET,HEAD", DocsJSON: "GET,HEAD",
	} {
		if got := strings.Join(Allow(path), ","); got != want {
			t.Errorf("Allow(%s) = %s, want %s", path, got, want)
		}
	}
}

func TestProxyPath(t *testing.T) {
	cases := []struct {
		in, key, rest string
		ok            bool
	}{
		{"/proxy/github/users/x", "github", "/users/x", true},
		{"/proxy/github/", "github", "/", true},
		{"/proxy/github", "", "", false},
		{"/proxy/", "", "", false},
		{"/proxy//x", "", "", false},
		{"/proxy/services", "", "", false},
		{"/proxy/services/github/rate-limit", "", "", false},
		{"/proxy/auth-test/", "", "", false},
		{"/manage/services", "", "", false},
		{"/proxyx/github/a", "", "", false},
		// Routing is exact, and reserved names are no service call in any case.
		{"/proxy/MyAPI/x", "MyAPI", "/x", true},
		{"/proxy/my.api/x", "my.api", "/x", true},
		{"/proxy/Services/x", "", "", false},
		{"/proxy/KEY-DEBUG/x", "", "", false},
		{"/proxy/\u017fervices/x", "\u017fervices", "/x", true}, // a long s is not an s
	}
	for _, c := range cases {
		key, rest, ok := ProxyPath(c.in)
		if key != c.key || rest != c.rest || ok != c.ok {
			t.Errorf("ProxyPath(%q) = %q, %q, %v; want %q, %q, %v", c.in, key, rest, ok, c.key, c.rest, c.ok)
		}
	}
}

func TestRateLimitPath(t *testing.T) {
	for _, tc := range []struct {
		path string
		key  string
		ok   bool
	}{
		{"/proxy/services/github/rate-limit", "github", true},
		{"/proxy/services/custom-api/rate-limit", "custom-api", true},
		{"/proxy/services//rate-limit", "", false},
		{"/proxy/services/rate-limit", "", false},
		{"/proxy/services/a/b/rate-limit", "", false},
		{"/proxy/services/github/rate-limit/", "", false},
		{"/proxy/github/rate-limit", "", false},
		{"/proxy/services", "", false},
	} {
		if key, ok := RateLimitPath(tc.path); key != tc.key || ok != tc.ok {
			t.Errorf("RateLimitPath(%q) = %q, %v; want %q, %v", tc.path, key, ok, tc.key, tc.ok)
		}
	}
}

func TestIsManagementAndDocsCompareAsGiven(t *testing.T) {
	for p, want := range map[string]bool{"/manage": true, "/manage/": true, "/manage/x": true, "/manager": false, "/MANAGE/x": false, "//manage": false, "": false} {
		if IsManagement(p) != want {
			t.Errorf("IsManagement(%q) = %v", p, !want)
		}
	}
	for p, want := range map[string]bool{"/docs": true, "/docs/": true, "/docs/json": true, "/docsx": false, "/DOCS": false} {
		if IsDocs(p) != want {
			t.Errorf("IsDocs(%q) = %v", p, !want)
		}
	}
}

// BenchmarkOf is the route lookup every request pays (modules/route's
// BenchmarkRouteOf before the table, on the same paths).
func BenchmarkOf(b *testing.B) {
	for name, p := range map[string]string{"proxy": "/proxy/bench/ping", "manage": "/manage/services/discord", "info": "/health", "unclean": "/PROXY//bench/../bench/ping"} {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				Of(p)
			}
		})
	}
}

// BenchmarkIsProbe is byteproxy_pressure's check on every request.
func BenchmarkIsProbe(b *testing.B) {
	paths := []string{"/proxy/bench/ping", "/health", "/manage/services/discord"}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		IsProbe(paths[i%len(paths)])
	}
}
