package gateway

import (
	"encoding/json"
	"net/http"
	"net/url"
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
)

// WriteJSON writes v as the JSON body of a response with this status. Every
// byteproxy module answers through it, so every body has the same shape
// rules: application/json, no caching of errors.
func WriteJSON(w http.ResponseWriter, status int, v any) error {
	body, err := json.Marshal(v)
	if err != nil {
		return err
	}
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	if status >= 400 {
		h.Set("Cache-Control", "no-store")
	}
	h.Del("Content-Length")
	w.WriteHeader(status)
	_, err = w.Write(append(body, '\n'))
	return err
}

// ProxyPath splits "/proxy/{service}/{rest}" into the service key and the
// rest (starting with "/"). ok is false for paths that are not a service
// call: not under /proxy/, a reserved name (/proxy/services, ...), or a
// bare "/proxy/{service}" without the trailing slash.
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
	if ReservedKeys[key] {
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

// StripQueryParam removes every occurrence of the parameter name from a
// raw query string and leaves everything else byte for byte as it was
// (order, repeated parameters, bare flags, encoding), unlike
// url.Values.Encode. It is used to drop ?api_key= before a request goes
// upstream.
func StripQueryParam(rawQuery, name string) string {
	if rawQuery == "" || !strings.Contains(rawQuery, name) && !strings.Contains(rawQuery, "%") {
		return rawQuery
	}
	var b strings.Builder
	for part := range strings.SplitSeq(rawQuery, "&") {
		k, _, _ := strings.Cut(part, "=")
		if uk, err := url.QueryUnescape(k); err == nil && uk == name || k == name {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('&')
		}
		b.WriteString(part)
	}
	return b.String()
}
