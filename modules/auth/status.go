package auth

import (
	"net/http"
	"strings"

	"github.com/byteproxy/byteproxy/modules/gateway"
)

// authConfig is the key setup of both scopes, as /auth-status shows it.
type authConfig struct {
	ProxyAuthRequired       bool `json:"proxyAuthRequired"`
	ManagementAuthRequired  bool `json:"managementAuthRequired"`
	ProxyKeyConfigured      bool `json:"proxyKeyConfigured"`
	ManagementKeyConfigured bool `json:"managementKeyConfigured"`

	proxyKeys, managementKeys int
}

func configOf(app *gateway.App) authConfig {
	var c authConfig
	if app == nil {
		return c
	}
	if sc := app.ScopeFor(gateway.ScopeProxy); sc != nil {
		c.ProxyAuthRequired, c.ProxyKeyConfigured, c.proxyKeys = sc.Required, len(sc.Keys) > 0, len(sc.Keys)
	}
	if sc := app.ScopeFor(gateway.ScopeManagement); sc != nil {
		c.ManagementAuthRequired, c.ManagementKeyConfigured, c.managementKeys = sc.Required, len(sc.Keys) > 0, len(sc.Keys)
	}
	return c
}

// statusBody is the body of /auth-status.
type statusBody struct {
	Path        string      `json:"path"`
	AuthConfig  authConfig  `json:"authConfig"`
	RequestInfo requestInfo `json:"requestInfo"`
	Help        statusHelp  `json:"help"`
}

// requestInfo says which transports this request used, never what they
// carried (the original echoed the full URL, ?api_key= included).
type requestInfo struct {
	Method          string   `json:"method"`
	HasAuthHeader   bool     `json:"hasAuthHeader"`
	HasAPIKeyHeader bool     `json:"hasApiKeyHeader"`
	HasQueryKey     bool     `json:"hasQueryKey"`
	PathSegments    []string `json:"pathSegments"`
}

type statusHelp struct {
	Proxy             string   `json:"proxy"`
	Management        string   `json:"management"`
	HowToAuthenticate []string `json:"howToAuthenticate"`
	Test              string   `json:"test"`
}

// Status returns the JSON body of /auth-status: which scopes require keys,
// whether keys are configured, and how this request presented one. It holds
// no key material. manage serves /auth-status through it.
func Status(app *gateway.App, r *http.Request) any {
	_, hasQuery := queryValue(r.URL.RawQuery, queryParam)
	segs := []string{}
	for s := range strings.SplitSeq(r.URL.Path, "/") {
		if s != "" {
			segs = append(segs, s)
		}
	}
	return statusBody{
		Path:       r.URL.Path,
		AuthConfig: configOf(app),
		RequestInfo: requestInfo{
			Method:          r.Method,
			HasAuthHeader:   r.Header.Get("Authorization") != "",
			HasAPIKeyHeader: r.Header.Get("X-Api-Key") != "",
			HasQueryKey:     hasQuery,
			PathSegments:    segs,
		},
		Help: statusHelp{
			Proxy:             "/proxy/* requires the proxy key when proxyAuthRequired is true.",
			Management:        "/manage/* requires the management key when managementAuthRequired is true; with no management key it answers local programs only (a loopback client calling localhost, 127.0.0.1 or [::1] directly, not through a proxy, not from a web page of another origin).",
			HowToAuthenticate: howToAuthenticate("api", app == nil || app.QueryKeyOn()),
			Test:              "GET /proxy/auth-test checks a proxy key; GET /proxy/auth-debug shows which methods a request used.",
		},
	}
}
