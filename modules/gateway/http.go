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
	// VarAuthorization is true when the client's request carried an
	// Authorization header, which byteproxy_auth (proxy scope) removed
	// before the request went on. byteproxy_services reads it for upstream
	// routes that need the service's credential only when the client sent
	// one (Discord's webhook and interaction-callback routes).
	VarAuthorization = "byteproxy.client_authorization"
)

// WriteJSON writes v as the JSON body of a response with this status. Every
// byteproxy module answers through it, so every body has the same shape
// rules: application/json, and on an error (any status from 400 up) no
// caching and `X-Proxy-Error: true`, which tells a client, as the
// original's header did, that the gateway made the answer itself rather
// than pass on the upstream's. (Each response gets its own header values:
// see STYLE, never one slice for two responses.)
func WriteJSON(w http.ResponseWriter, status int, v any) error {
	body, err := json.Marshal(v)
	if err != nil {
		return err
	}
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	if status >= 400 {
		h.Set("Cache-Control", "no-store")
		h.Set("X-Proxy-Error", "true")
	}
	h.Del("Content-Length")
	w.WriteHeader(status)
	_, err = w.Write(append(body, '\n'))
	return err
}

// WriteError is WriteJSON for an error the gateway makes about a request
// to a known service: the answer also carries `X-Proxy-Service: <service>`
// (none when service is ""), as a forwarded answer does.
func WriteError(w http.ResponseWriter, status int, service string, v any) error {
	if service != "" {
		w.Header().Set("X-Proxy-Service", service)
	}
	return WriteJSON(w, status, v)
}

// MountPrefix is the path prefix that Caddy removed before the request
// reached the gateway (`handle_path /api/*`, `uri strip_prefix`): the start
// of the path the client sent (Caddy keeps the original request) that the
// current path ends, compared as sent and, should a rewrite have changed
// the escaping, decoded; escaped, "" when there is none. Any other rewrite
// of the path leaves no prefix. The gateway puts it before every URL of
// its own that it writes (links in JSON bodies, the API page, rewritten
// Link and Location headers), so that they work for the client.
func MountPrefix(r *http.Request) string {
	orig, ok := r.Context().Value(caddyhttp.OriginalRequestCtxKey).(http.Request)
	if !ok || orig.URL == nil {
		return ""
	}
	if op, cp := orig.URL.EscapedPath(), r.URL.EscapedPath(); len(op) > len(cp) && strings.HasSuffix(op, cp) {
		return op[:len(op)-len(cp)]
	}
	if op, cp := orig.URL.Path, r.URL.Path; len(op) > len(cp) && strings.HasSuffix(op, cp) {
		return (&url.URL{Path: op[:len(op)-len(cp)]}).EscapedPath()
	}
	return ""
}

// Query parameters that carry a key (?api_key=, read by byteproxy_auth)
// or a service credential are found by one rule, used both to read a key
// and to strip the parameter before a request goes upstream (both
// forwarding paths), so that no spelling of the parameter is forwarded
// while the gateway reads it as something else:
//
//   - '&' and ';' both separate parameters: Go's url.ParseQuery refuses ';'
//     since Go 1.17, but many upstream frameworks still split on it, so
//     "?x=1;api_key=K" carries the parameter api_key (read as the key and
//     stripped);
//   - the name is compared percent-decoded ("%61pi_key" is api_key);
//   - a name without "=" is the parameter with an empty value;
//   - reading is case-sensitive (only "api_key" is a key, as in the
//     original, and as Caddy's access-log query filter matches it, so an
//     accepted key is always one the documented filter removes), while
//     stripping ignores letter case: "API_KEY" is no key, but some
//     frameworks read query names case-insensitively, so it never travels
//     upstream either.
//
// Everything else in the query is left byte for byte as the client sent it
// (order, repeated parameters, bare flags, encoding), unlike url.Values.

// StripQueryParam removes every occurrence of the parameter name, in any
// letter case, from a raw query string under the rule above.
func StripQueryParam(rawQuery, name string) string {
	if !mayHoldParam(rawQuery, name) || !hasParam(rawQuery, name) {
		return rawQuery
	}
	var b strings.Builder
	b.Grow(len(rawQuery))
	wrote := false
	var sep byte // the separator before the current segment
	for q := rawQuery; ; {
		seg, next, found := cutSegment(q)
		if !namesParam(seg, name, equalFoldASCII) {
			if wrote {
				b.WriteByte(sep)
			}
			b.WriteString(seg)
			wrote = true
		}
		if !found {
			return b.String()
		}
		sep, q = q[len(seg)], next
	}
}

// QueryParam returns the first value of the parameter name (exactly: letter
// case counts) in a raw query under the rule above, decoded, and whether
// the parameter is present. It allocates only when the value is
// percent-encoded. A value that does not decode counts as present and
// empty.
func QueryParam(rawQuery, name string) (string, bool) {
	if !mayHoldParam(rawQuery, name) {
		return "", false
	}
	for q := rawQuery; ; {
		seg, next, found := cutSegment(q)
		if namesParam(seg, name, equal) {
			_, v, _ := strings.Cut(seg, "=")
			uv, err := url.QueryUnescape(v)
			if err != nil {
				return "", true
			}
			return uv, true
		}
		if !found {
			return "", false
		}
		q = next
	}
}

// cutSegment splits off the first parameter of a query; found reports a
// separator ('&' or ';') after it.
func cutSegment(q string) (seg, rest string, found bool) {
	i := strings.IndexAny(q, "&;")
	if i < 0 {
		return q, "", false
	}
	return q[:i], q[i+1:], true
}

// namesParam reports whether one query segment ("k=v" or "k") is the
// parameter name, comparing the decoded name with same.
func namesParam(seg, name string, same func(a, b string) bool) bool {
	k, _, _ := strings.Cut(seg, "=")
	if same(k, name) {
		return true
	}
	if !strings.ContainsAny(k, "%+") {
		return false
	}
	uk, err := url.QueryUnescape(k)
	return err == nil && same(uk, name)
}

func equal(a, b string) bool { return a == b }

// equalFoldASCII compares ignoring the case of ASCII letters only (unlike
// strings.EqualFold, the Kelvin sign is not a k).
func equalFoldASCII(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		if lowerASCII(a[i]) != lowerASCII(b[i]) {
			return false
		}
	}
	return true
}

func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// hasParam reports whether any segment of a query is the parameter name in
// any letter case.
func hasParam(rawQuery, name string) bool {
	for q := rawQuery; ; {
		seg, next, found := cutSegment(q)
		if namesParam(seg, name, equalFoldASCII) {
			return true
		}
		if !found {
			return false
		}
		q = next
	}
}

// mayHoldParam is a quick test that a query cannot hold the parameter: it
// holds neither a '%' nor the name in any letter case.
func mayHoldParam(rawQuery, name string) bool {
	if rawQuery == "" {
		return false
	}
	if strings.IndexByte(rawQuery, '%') >= 0 {
		return true
	}
	for i := 0; i+len(name) <= len(rawQuery); i++ {
		if equalFoldASCII(rawQuery[i:i+len(name)], name) {
			return true
		}
	}
	return false
}
