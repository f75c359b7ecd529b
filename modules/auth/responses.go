package auth

import (
	"net/http"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/byteproxy/byteproxy/internal/httpx"
	"github.com/byteproxy/byteproxy/internal/routes"
	"github.com/byteproxy/byteproxy/modules/gateway"
)

// isoMillis is JavaScript's Date.toISOString, as the original wrote
// timestamps.
const isoMillis = "2006-01-02T15:04:05.000Z07:00"

// unauthorized answers 401. Neither the body nor the log line says anything
// about the presented or the configured keys: not a part, not a length.
//
// A request that presented anything (a key in any transport, or an
// Authorization header without a readable key) is told its credential was
// wrong, and for an unreadable Authorization header why (detail), without
// the header's value.
func (h *Handler) unauthorized(w http.ResponseWriter, r *http.Request, c credentials) error {
	msg, reason := "No authentication provided. API key required for "+h.Scope+" routes.", "missing"
	if c.presented() {
		msg, reason = "Authentication failed. Invalid API key for "+h.Scope+" routes.", "invalid"
	}
	if h.metrics != nil {
		h.metrics.AuthFailure(h.Scope)
	}
	h.logFailure(r, reason)
	w.Header().Set("WWW-Authenticate", `Bearer realm="byteproxy"`)
	body := map[string]any{
		"error":             "Unauthorized",
		"message":           msg,
		"howToAuthenticate": howToAuthenticate(h.Scope, h.queryKey),
	}
	if c.badAuthz != "" {
		body["detail"] = c.badAuthz
	}
	_ = httpx.WriteError(w, r, http.StatusUnauthorized, "", msg, body)
	// A write error means the client left. It is not returned: Caddy would
	// log it with the request as it arrived, X-API-Key included.
	return nil
}

// forbidden answers 403 to a management request without a key that is not
// from a local program, saying why and what to configure.
func (h *Handler) forbidden(w http.ResponseWriter, r *http.Request, why *refusal) error {
	h.logFailure(r, why.reason)
	_ = httpx.WriteError(w, r, http.StatusForbidden, "", why.message, map[string]string{
		"error":   "Forbidden",
		"message": why.message,
	})
	return nil // as in unauthorized
}

// throttled answers 429 to a client address that presented too many wrong
// keys, without looking at this request's keys, and closes the connection
// so that the next guess costs a new one.
func (h *Handler) throttled(w http.ResponseWriter, r *http.Request, retry time.Duration) error {
	secs := max(int64((retry+time.Second-1)/time.Second), 1)
	if h.metrics != nil {
		h.metrics.AuthThrottled(h.Scope)
	}
	h.logFailure(r, "throttled")
	hdr := w.Header()
	hdr.Set("Retry-After", strconv.FormatInt(secs, 10))
	hdr.Set("Connection", "close")
	msg := "Too many failed authentication attempts from this address. Try again in " + strconv.FormatInt(secs, 10) + " seconds."
	_ = httpx.WriteError(w, r, http.StatusTooManyRequests, "", msg, map[string]any{
		"error":      "Too Many Requests",
		"message":    msg,
		"retryAfter": secs,
	})
	return nil // as in unauthorized
}

// logFailure records a refused request at debug level (an attacker must not
// be able to flood the log at the default level) with what identifies the
// request, never the credential.
func (h *Handler) logFailure(r *http.Request, reason string) {
	if h.logger == nil {
		return
	}
	if ce := h.logger.Check(zap.DebugLevel, "authentication failed"); ce != nil {
		ce.Write(
			zap.String("scope", h.Scope),
			zap.String("reason", reason),
			zap.String("method", r.Method),
			zap.String("path", r.URL.Path),
			zap.String("remote", r.RemoteAddr),
		)
	}
}

// howToAuthenticate lists the transports, as the original's 401 did.
func howToAuthenticate(scope string, queryKey bool) []string {
	ph := "<your-" + scope + "-key>"
	q := "Query parameter: ?api_key=" + ph
	if !queryKey {
		q = "Query parameter ?api_key= is disabled on this gateway (query_key off)"
	}
	return []string{
		"Authorization: Bearer " + ph + " (also 'Bot " + ph + "' or 'token " + ph + "', as client libraries send their token)",
		"X-API-Key: " + ph, q,
	}
}

// serveEndpoint answers the auth endpoints of this handler's scope (the
// routes of routes.Table by byteproxy_auth) and reports whether it did.
func (h *Handler) serveEndpoint(w http.ResponseWriter, r *http.Request, c credentials) bool {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return false
	}
	var body map[string]any
	switch {
	case h.Scope == gateway.ScopeProxy && r.URL.Path == routes.ProxyAuthTest:
		body = success()
	case h.Scope == gateway.ScopeProxy && r.URL.Path == routes.ProxyAuthDebug:
		body = success()
		body["authMethod"] = map[string]string{
			"bearer":     provided(c.authz),
			"xApiKey":    provided(c.header),
			"queryParam": provided(c.query),
		}
		if c.scheme != "" {
			body["authorizationScheme"] = c.scheme
		}
		body["help"] = "Any one of the methods above is enough; 'bearer' is the Authorization header under any accepted scheme (Bearer, Bot or token). The key is removed from the request before it is forwarded to a service."
	case h.Scope == gateway.ScopeProxy && r.URL.Path == routes.ProxyKeyDebug:
		body = proxyKeyDebug(h.app)
	case h.Scope == gateway.ScopeManagement && r.URL.Path == routes.ManageKeyDebug:
		body = keyDebug(h.app)
	default:
		return false
	}
	_ = httpx.WriteJSON(w, http.StatusOK, body)
	return true
}

func success() map[string]any {
	return map[string]any{
		"status":    "success",
		"message":   "Authentication successful",
		"timestamp": time.Now().UTC().Format(isoMillis),
	}
}

func provided(v string) string {
	if v != "" {
		return "provided"
	}
	return "not provided"
}

// keyDebug describes the key setup of both scopes: whether keys are
// required and configured, and how many. Deliberately nothing else about a
// key, not even its length (the original showed prefixes and lengths).
func keyDebug(app *gateway.App) map[string]any {
	cfg := configOf(app)
	return map[string]any{
		"message": "API key configuration",
		"note":    "Keys are never shown, not even in part or by length.",
		"authStatus": map[string]any{
			"proxyAuthRequired":       cfg.ProxyAuthRequired,
			"managementAuthRequired":  cfg.ManagementAuthRequired,
			"proxyKeyConfigured":      cfg.ProxyKeyConfigured,
			"managementKeyConfigured": cfg.ManagementKeyConfigured,
			"proxyKeyCount":           cfg.proxyKeys,
			"managementKeyCount":      cfg.managementKeys,
			"queryKeyEnabled":         app != nil && app.QueryKeyOn(),
			"setupStatus": map[string]string{
				"proxy":      setupStatus(app, gateway.ScopeProxy),
				"management": setupStatus(app, gateway.ScopeManagement),
			},
		},
		"howToAuthenticate": howToAuthenticate(gateway.ScopeManagement, app != nil && app.QueryKeyOn()),
		"help": map[string]string{
			"keys":     "Keys are set in the byteproxy global option: auth proxy { key {env.PROXY_API_KEY} } and auth management { key {env.MANAGEMENT_API_KEY} }. Repeat key for rotation.",
			"required": "A scope that is required with no key set stops the configuration from loading.",
			"proxy":    "The proxy key opens /proxy/* only; the management key opens /manage/* only.",
		},
	}
}

// proxyKeyDebug is /proxy/key-debug, the original's key check for holders
// of a proxy key: whether each scope requires a key and has one, how to
// send it, and what to do when it is refused. Like keyDebug it says
// nothing about any key (the original showed the first and last four
// characters and the length of both keys here); unlike keyDebug it does
// not count the management keys.
func proxyKeyDebug(app *gateway.App) map[string]any {
	cfg := configOf(app)
	queryKey := app != nil && app.QueryKeyOn()
	return map[string]any{
		"message": "Proxy API key configuration",
		"note":    "Keys are never shown, not even in part or by length.",
		"authStatus": map[string]any{
			"proxyAuthRequired":       cfg.ProxyAuthRequired,
			"managementAuthRequired":  cfg.ManagementAuthRequired,
			"proxyKeyConfigured":      cfg.ProxyKeyConfigured,
			"managementKeyConfigured": cfg.ManagementKeyConfigured,
			"queryKeyEnabled":         queryKey,
			"setupStatus": map[string]string{
				"proxy":      setupStatus(app, gateway.ScopeProxy),
				"management": setupStatus(app, gateway.ScopeManagement),
			},
		},
		"howToAuthenticate": howToAuthenticate(gateway.ScopeProxy, queryKey),
		"troubleshooting": map[string]string{
			"noKeyProvided": "Send the proxy key in one of the ways above. Client libraries send their token as 'Authorization: Bearer|Bot|token <token>': give them the proxy key as their token.",
			"invalidKey":    "The key did not match any proxy key. The management key does not open /proxy/*. Check for a stray space or newline in the key.",
			"envSetup":      "Proxy keys are set in the byteproxy global option: auth proxy { key {env.PROXY_API_KEY} }; repeat key for rotation, then reload.",
			"envExample":    "PROXY_API_KEY=$(openssl rand -hex 32)",
		},
	}
}

func setupStatus(app *gateway.App, scope string) string {
	var sc *gateway.Scope
	if app != nil {
		sc = app.ScopeFor(scope)
	}
	switch {
	case sc == nil || len(sc.Keys) == 0 && scope == gateway.ScopeManagement:
		return "no key configured: open to local programs only (loopback, no proxy, no cross-site page)"
	case len(sc.Keys) == 0:
		return "no key configured: open to everyone"
	case sc.Required:
		return "key required"
	case scope == gateway.ScopeManagement:
		return "key optional for local programs, required from elsewhere"
	default:
		return "key optional: requests without a key pass, a wrong key is refused"
	}
}
