package auth

import (
	"net/http"
	"strings"

	"github.com/byteproxy/byteproxy/modules/gateway"
)

// queryParam is the query parameter that may carry a key.
const queryParam = "api_key"

// credentials are the keys a request presents, one per transport; "" where
// the transport carries none.
type credentials struct {
	bearer string // Authorization: Bearer <key>
	header string // X-API-Key: <key>
	query  string // ?api_key=<key>, only with query_key on
}

func (c credentials) any() bool { return c.bearer != "" || c.header != "" || c.query != "" }

// readCredentials collects the credentials of a request without allocating.
// The scheme must be exactly "Bearer" followed by one space, as the
// original accepted; "bearer", "Basic" or a bare key are not a bearer
// credential, and nothing is trimmed from the value.
func readCredentials(r *http.Request, queryKey bool) credentials {
	var c credentials
	if v, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		c.bearer = v
	}
	c.header = r.Header.Get("X-Api-Key")
	if queryKey {
		c.query, _ = queryValue(r.URL.RawQuery, queryParam)
	}
	return c
}

// queryValue returns the first value of the parameter name in a raw query
// and whether it is present, under the gateway's one rule for key
// parameters (gateway.QueryParam: '&' and ';' both separate parameters,
// the name is matched percent-decoded), the rule the parameter is stripped
// by before anything goes upstream.
func queryValue(rawQuery, name string) (string, bool) {
	return gateway.QueryParam(rawQuery, name)
}

// strip removes every credential transport from the request before it goes
// on, so no key reaches an upstream or a later handler: X-API-Key and the
// api_key parameter always (even with query_key off: a key put there must
// not travel), Authorization always on the proxy scope (the client's
// Authorization is never forwarded to a service) and on the management
// scope when it carried a bearer token meant for us.
func (h *Handler) strip(r *http.Request, c credentials) {
	if h.Scope == gateway.ScopeProxy || c.bearer != "" {
		r.Header.Del("Authorization")
	}
	r.Header.Del("X-Api-Key")
	if q := gateway.StripQueryParam(r.URL.RawQuery, queryParam); q != r.URL.RawQuery {
		r.URL.RawQuery = q
		r.URL.ForceQuery = false
		r.RequestURI = r.URL.RequestURI()
	}
}
