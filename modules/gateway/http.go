package gateway

import (
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// Request variables that byteproxy handlers set for later handlers, logs
// and placeholders ({http.vars.byteproxy.client}, ...).
const (
	// VarClient holds the consumer id: a non-secret id of the API key used,
	// set by byteproxy_auth.
	VarClient = "byteproxy.client"
	// VarService holds the service key of a proxied request.
	VarService = "byteproxy.service"
	// VarScope holds the auth scope byteproxy_auth admitted the request to
	// ("proxy" or "management"); byteproxy_manage refuses /manage/* without
	// it, so a route that forgets the auth handler fails closed.
	VarScope = "byteproxy.scope"
	// VarAuthorization is true when the client's request carried an
	// Authorization header, which byteproxy_auth (proxy scope) removed
	// before the request went on. byteproxy_services reads it for upstream
	// routes that need the service's credential only when the client sent
	// one (Discord's webhook and interaction-callback routes).
	VarAuthorization = "byteproxy.client_authorization"
)

// ProxyPath splits "/proxy/{service}/{rest}" into the service key and the
// rest (starting with "/"). ok is false for paths that are not a service
// call: not under /proxy/, a reserved name in any letter case
// (/proxy/services, ...), or a bare "/proxy/{service}" without the
// trailing slash. The key is taken as it is written: /proxy/MyAPI/ calls
// the service MyAPI, not myapi.
func ProxyPath(p string) (key, rest string, ok bool) {
	const prefix = "/proxy/"
	if !strings.HasPrefix(p, prefix) {
		return "", "", false
	}
	p = p[len(prefix):]
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

// IsManagementPath reports whether a request path is the management API
// (/manage, /manage/*) as the path matchers `/manage` and `/manage/*`
// (and the standard route) decide it: on the lowercased, cleaned path, so
// `/MANAGE/x` or `/a/../manage/x` count too. Handlers that must treat the
// management API differently (CORS) ask this instead of comparing prefixes.
func IsManagementPath(p string) bool {
	p = caddyhttp.NormalizedPath(strings.ToLower(p), true)
	return p == "/manage" || strings.HasPrefix(p, "/manage/")
}
