// Package routes is the gateway's table of routes: every path it answers,
// which chain of the standard route reaches it, which methods it serves,
// and the path matching the handlers share. The OpenAPI document
// (modules/manage/docs/openapi.json), the 404's list of endpoints and the
// routes a running gateway serves are checked against Table.
package routes

import (
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// Paths of the gateway's endpoints, as the OpenAPI document writes them.
const (
	Root         = "/"
	Health       = "/health"
	Status       = "/status"
	Up           = "/up"
	Ready        = "/ready"
	Version      = "/version"
	VersionCheck = "/version/check"
	AuthStatus   = "/auth-status"
	Docs         = "/docs"
	DocsOpenAPI  = "/docs/openapi.json"
	DocsJSON     = "/docs/json" // the original's address of the document

	ProxyService   = "/proxy/{service}/{path}"
	ProxyServices  = "/proxy/services"
	ProxyRateLimit = "/proxy/services/{service}/rate-limit"
	ProxyAuthTest  = "/proxy/auth-test"
	ProxyAuthDebug = "/proxy/auth-debug"
	ProxyKeyDebug  = "/proxy/key-debug"

	Manage            = "/manage"
	ManageServices    = "/manage/services"
	ManageService     = "/manage/services/{key}"
	ManageServiceTest = "/manage/services/{key}/test"
	ManageDiagnostics = "/manage/diagnostics"
	ManageKeyDebug    = "/manage/key-debug"

	// ProxyPrefix starts every path of the proxy area.
	ProxyPrefix = "/proxy/"
)

// Area is the part of the gateway a path belongs to, which decides the
// chain of handlers the standard route runs for it (see modules/route).
type Area int

const (
	// Public is everything else: informational endpoints, /docs, the 404.
	Public Area = iota
	// Proxy is /proxy/*: byteproxy_pressure, byteproxy_auth proxy,
	// byteproxy_ratelimit, byteproxy_services, then byteproxy_manage.
	Proxy
	// Management is /manage and /manage/*: byteproxy_pressure,
	// byteproxy_auth management, byteproxy_manage.
	Management
)

// Route is one path of the gateway.
type Route struct {
	Path string
	// Methods are the documented operations; a GET route serves HEAD
	// too, and the routes byteproxy_manage answers serve OPTIONS (204
	// with Allow).
	Methods []string
	Area    Area
	// By is the handler that answers it.
	By string
	// Slash: the path with a trailing slash is answered the same.
	Slash bool
	// Probe: answered while the gateway sheds load (byteproxy_pressure
	// passes it on, see IsProbe).
	Probe bool
}

var (
	read  = []string{"GET"}
	every = []string{"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}
)

// Table is every route of the gateway (DESIGN §3).
var Table = []Route{
	{Path: ProxyService, Methods: every, Area: Proxy, By: "byteproxy_services"},
	{Path: ProxyServices, Methods: read, Area: Proxy, By: "byteproxy_manage", Slash: true},
	{Path: ProxyRateLimit, Methods: read, Area: Proxy, By: "byteproxy_ratelimit"},
	{Path: ProxyAuthTest, Methods: read, Area: Proxy, By: "byteproxy_auth"},
	{Path: ProxyAuthDebug, Methods: read, Area: Proxy, By: "byteproxy_auth"},
	{Path: ProxyKeyDebug, Methods: read, Area: Proxy, By: "byteproxy_auth"},

	{Path: ManageServices, Methods: []string{"GET", "POST"}, Area: Management, By: "byteproxy_manage", Slash: true},
	{Path: ManageService, Methods: []string{"GET", "PUT", "DELETE"}, Area: Management, By: "byteproxy_manage", Slash: true},
	{Path: ManageServiceTest, Methods: []string{"POST"}, Area: Management, By: "byteproxy_manage", Slash: true},
	{Path: ManageDiagnostics, Methods: read, Area: Management, By: "byteproxy_manage", Slash: true},
	{Path: ManageKeyDebug, Methods: read, Area: Management, By: "byteproxy_auth"},

	{Path: Root, Methods: []string{"GET", "OPTIONS"}, By: "byteproxy_manage"},
	{Path: Health, Methods: read, By: "byteproxy_manage", Probe: true},
	{Path: Status, Methods: read, By: "byteproxy_manage"},
	{Path: Up, Methods: read, By: "byteproxy_manage", Probe: true},
	{Path: Ready, Methods: read, By: "byteproxy_manage", Probe: true},
	{Path: Version, Methods: read, By: "byteproxy_manage", Slash: true},
	{Path: VersionCheck, Methods: read, By: "byteproxy_manage"},
	{Path: AuthStatus, Methods: read, By: "byteproxy_manage"},
	{Path: Docs, Methods: read, By: "byteproxy_manage", Slash: true},
	{Path: DocsOpenAPI, Methods: read, By: "byteproxy_manage"},
	{Path: DocsJSON, Methods: read, By: "byteproxy_manage"},
}

// operationOrder is the order of methods in an OpenAPI path item, which
// the endpoint list follows.
var operationOrder = []string{"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE"}

// endpoints is Table as "METHOD path", by path, then in operationOrder;
// allow is each route's Allow list without OPTIONS (which every route
// serves and the 405 adds).
var endpoints, allow = func() ([]string, map[string][]string) {
	paths := make([]string, 0, len(Table))
	byPath := map[string]*Route{}
	for i := range Table {
		paths = append(paths, Table[i].Path)
		byPath[Table[i].Path] = &Table[i]
	}
	slices.Sort(paths)
	var ops []string
	allow := map[string][]string{}
	for _, p := range paths {
		rt := byPath[p]
		for _, m := range operationOrder {
			if slices.Contains(rt.Methods, m) {
				ops = append(ops, m+" "+p)
			}
		}
		var a []string
		for _, m := range rt.Methods {
			switch m {
			case "OPTIONS":
			case "GET":
				a = append(a, "GET", "HEAD")
			default:
				a = append(a, m)
			}
		}
		allow[p] = a
	}
	return ops, allow
}()

// Endpoints lists every operation as "METHOD path", each path under the
// mount prefix (see MountPrefix in the gateway's HTTP helpers); the
// caller must not change the result.
func Endpoints(prefix string) []string {
	if prefix == "" {
		return endpoints
	}
	out := make([]string, len(endpoints))
	for i, op := range endpoints {
		method, path, _ := strings.Cut(op, " ")
		out[i] = method + " " + prefix + path
	}
	return out
}

// Allow is the methods the route at path (a Table path) serves, OPTIONS
// left out; the caller must not change the result.
func Allow(path string) []string { return allow[path] }

// Of decides the area of a request path as the path matchers `/proxy/*`
// and `/manage`, `/manage/*` would (caddyhttp.MatchPath): on the
// lowercased, cleaned path with doubled slashes merged, so `/PROXY/x`,
// `//manage/keys` or `/a/../manage/keys` reach the same chain as with
// those matchers. NormalizedPath is what MatchPath cleans with; for an
// already clean lowercase path neither step allocates (BenchmarkOf).
func Of(p string) Area {
	p = caddyhttp.NormalizedPath(strings.ToLower(p), true)
	switch {
	case strings.HasPrefix(p, ProxyPrefix):
		return Proxy
	case IsManagement(p):
		return Management
	}
	return Public
}

// IsManagement reports a path of the management API, /manage or
// /manage/*, compared as it is. The handlers compare the path they are
// given; the standard route (Of) has already decided on the cleaned one.
func IsManagement(p string) bool {
	return p == Manage || strings.HasPrefix(p, Manage+"/")
}

// IsDocs reports /docs and /docs/*, compared as it is.
func IsDocs(p string) bool {
	return p == Docs || strings.HasPrefix(p, Docs+"/")
}

// IsProbe reports the routes of Table marked Probe, which byteproxy_pressure
// never sheds. A switch rather than a lookup in Table: it runs on every
// request (BenchmarkIsProbe); TestIndexesMatchTable keeps it in step.
func IsProbe(p string) bool {
	switch p {
	case Up, Health, Ready:
		return true
	}
	return false
}

// ProxyPath splits "/proxy/{service}/{rest}" into the service key and the
// rest (starting with "/"). ok is false for paths that are not a service
// call: not under /proxy/, a reserved name in any letter case
// (/proxy/services, ...), or a bare "/proxy/{service}" without the
// trailing slash. The key is taken as it is written: /proxy/MyAPI/ calls
// the service MyAPI, not myapi.
func ProxyPath(p string) (key, rest string, ok bool) {
	if !strings.HasPrefix(p, ProxyPrefix) {
		return "", "", false
	}
	p = p[len(ProxyPrefix):]
	i := strings.IndexByte(p, '/')
	if i <= 0 {
		return "", "", false
	}
	key, rest = p[:i], p[i:]
	if IsReservedKey(key) {
		return "", "", false
	}
	return key, rest, true
}

// RateLimitPath matches /proxy/services/{service}/rate-limit
// (ProxyRateLimit). ProxyPath does not: "services" is reserved.
func RateLimitPath(p string) (string, bool) {
	const prefix, suffix = ProxyServices + "/", "/rate-limit"
	if !strings.HasPrefix(p, prefix) || !strings.HasSuffix(p, suffix) || len(p) <= len(prefix)+len(suffix) {
		return "", false
	}
	key := p[len(prefix) : len(p)-len(suffix)]
	if strings.Contains(key, "/") {
		return "", false
	}
	return key, true
}

// reservedKeys are the first segments under /proxy/ of the routes of
// Table that are no service call, so no service may take them
// (TestIndexesMatchTable derives them from Table).
var reservedKeys = [...]string{"services", "auth-test", "auth-debug", "key-debug"}

// IsReservedKey reports whether key is a reserved name in any letter case:
// /proxy/Services is no service either, so that no key can look like one
// of the gateway's own endpoints (which the standard route matches
// ignoring case).
func IsReservedKey(key string) bool {
	var lower [len("auth-debug")]byte // the longest reserved key
	if len(key) < len("services") || len(key) > len(lower) {
		return false
	}
	for i := 0; i < len(key); i++ { // ASCII only: "ſervices" with a long s is not "services"
		c := key[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		lower[i] = c
	}
	for _, r := range reservedKeys {
		if string(lower[:len(key)]) == r { // compared without a copy
			return true
		}
	}
	return false
}
