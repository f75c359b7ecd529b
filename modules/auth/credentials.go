package auth

import (
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/byteproxy/byteproxy/internal/httpx"
	"github.com/byteproxy/byteproxy/modules/gateway"
)

// queryParam is the query parameter that may carry a key.
const queryParam = "api_key"

// credentials are the keys a request presents, one per transport; "" where
// the transport carries none.
type credentials struct {
	authz  string // Authorization: <scheme> <key>, scheme Bearer, Bot or token
	scheme string // the scheme of authz as documented ("Bearer", "Bot", "token")
	header string // X-API-Key: <key>
	query  string // ?api_key=<key>, only with query_key on

	// badAuthz says why an Authorization header the request carries is no
	// credential of ours (no scheme, another scheme, no key); "" when it
	// is one or there is none. It never quotes the header.
	badAuthz string
}

// any reports whether a key was presented in a transport the gateway reads.
func (c credentials) any() bool { return c.authz != "" || c.header != "" || c.query != "" }

// presented reports whether the client tried to authenticate: a key, or an
// Authorization header the gateway could not read a key from. A 401 then
// says the credential was wrong rather than missing.
func (c credentials) presented() bool { return c.any() || c.badAuthz != "" }

// readCredentials collects the credentials of a request without allocating.
func readCredentials(r *http.Request, queryKey bool) credentials {
	var c credentials
	if v, ok := r.Header["Authorization"]; ok && len(v) > 0 {
		c.authz, c.scheme, c.badAuthz = parseAuthorization(v[0])
	}
	c.header = r.Header.Get("X-Api-Key")
	if queryKey {
		c.query, _ = queryValue(r.URL.RawQuery, queryParam)
	}
	return c
}

// parseAuthorization reads the key from an Authorization value
// "<scheme> <key>". The schemes are those client libraries send their
// token with when the proxy key is given to them as their token: Bearer
// (most; PyGithub and octokit with a bearer strategy), Bot (discord.js,
// discordgo) and token (octokit, PyGithub, GitHub's classic form). A
// scheme is case-insensitive (RFC 9110 section 11.1) and one or more
// spaces separate it from the key; nothing else is trimmed, so a key with
// a leading tab or a trailing byte does not match. For anything else, bad
// says what was wrong without repeating the value, which may be a key.
func parseAuthorization(v string) (key, scheme, bad string) {
	name, rest, found := strings.Cut(v, " ")
	if !found {
		if v == "" {
			return "", "", "The Authorization header is empty."
		}
		return "", "", "The Authorization header has no scheme: send 'Authorization: Bearer <key>'."
	}
	switch {
	case equalFoldASCII(name, "Bearer"):
		scheme = "Bearer"
	case equalFoldASCII(name, "Bot"):
		scheme = "Bot"
	case equalFoldASCII(name, "token"):
		scheme = "token"
	case equalFoldASCII(name, "Basic"):
		return "", "", "Basic authentication is not accepted: send the key as 'Authorization: Bearer <key>' or in X-API-Key."
	default:
		return "", "", "The Authorization scheme is not one the gateway accepts (Bearer, Bot or token)."
	}
	key = strings.TrimLeft(rest, " ")
	if key == "" {
		return "", "", "The Authorization header names a scheme but holds no key."
	}
	return key, scheme, ""
}

// equalFoldASCII compares ignoring the case of ASCII letters only, so that
// no Unicode folding (the Kelvin sign as a k) turns another word into a
// scheme.
func equalFoldASCII(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// queryValue returns the first value of the parameter name in a raw query
// and whether it is present, under the gateway's one rule for key
// parameters (httpx.QueryParam: '&' and ';' both separate parameters,
// the name is matched percent-decoded), the rule the parameter is stripped
// by before anything goes upstream.
func queryValue(rawQuery, name string) (string, bool) {
	return httpx.QueryParam(rawQuery, name)
}

// strip removes every credential transport from the request before it goes
// on, so no key reaches an upstream or a later handler: X-API-Key and the
// api_key parameter always (even with query_key off: a key put there must
// not travel), Authorization always on the proxy scope (the client's
// Authorization is never forwarded to a service) and on the management
// scope when it carried a key meant for us. On the proxy scope it notes
// that the client sent an Authorization header (gateway.VarAuthorization),
// which decides whether some upstream routes get the service's credential.
func (h *Handler) strip(r *http.Request, c credentials) {
	if h.Scope == gateway.ScopeProxy {
		if _, sent := r.Header["Authorization"]; sent {
			caddyhttp.SetVar(r.Context(), gateway.VarAuthorization, true)
			r.Header.Del("Authorization")
		}
	} else if c.authz != "" {
		r.Header.Del("Authorization")
	}
	r.Header.Del("X-Api-Key")
	if q := httpx.StripQueryParam(r.URL.RawQuery, queryParam); q != r.URL.RawQuery {
		r.URL.RawQuery = q
		r.URL.ForceQuery = false
		r.RequestURI = r.URL.RequestURI()
	}
}
