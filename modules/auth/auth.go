// Package auth is the http.handlers.byteproxy_auth module: API keys that
// protect one scope of the gateway ("proxy" for /proxy/*, "management" for
// /manage/*).
package auth

import (
	"fmt"
	"net/http"
	"net/netip"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/byteproxy/byteproxy/internal/metrics"
	"github.com/byteproxy/byteproxy/modules/gateway"
)

func init() {
	caddy.RegisterModule(new(Handler))
}

// Handler requires an API key of one scope (proxy or management); the
// keys are settings of the byteproxy app, so every handler of a scope
// agrees on them. docs/HANDLERS.md describes where a key is read, what a
// keyless scope admits, and the throttling of wrong keys.
type Handler struct {
	// Scope to enforce: "proxy" or "management".
	Scope string `json:"scope,omitempty"`

	app      *gateway.App
	scopeVar any // Scope boxed once for the request variable (BenchmarkServeHTTP: 0 allocs/op with, 1 boxing per request)
	keys     *keyring
	required bool
	queryKey bool
	logger   *zap.Logger
	metrics  *metrics.Recorder

	failures    *failureStore // nil when auth_failures is off
	failuresKey string        // its key in the pool
}

// failureStores keeps the failure counts across config reloads: the new
// config's handlers load the store of the old one before it is cleaned up,
// so a reload does not give a guesser a fresh budget.
var failureStores = caddy.NewUsagePool()

// CaddyModule returns the Caddy module information.
func (*Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.byteproxy_auth",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision takes the scope's keys from the byteproxy app and hashes them
// once, so that serving a request only compares digests.
func (h *Handler) Provision(ctx caddy.Context) error {
	app, err := gateway.FromContext(ctx)
	if err != nil {
		return err
	}
	sc := app.ScopeFor(h.Scope)
	if sc == nil {
		return nil // an unknown scope name, which Validate refuses
	}
	h.app = app
	h.setup(sc, app.QueryKeyOn(), ctx.Logger(), app.Metrics())
	if n, window, on := app.AuthFailures.Limit(); on {
		h.failuresKey = fmt.Sprintf("%d|%d", n, window)
		v, _, err := failureStores.LoadOrNew(h.failuresKey, func() (caddy.Destructor, error) {
			s := newFailureStore(n, window)
			s.Start()
			return s, nil
		})
		if err != nil {
			return err
		}
		h.failures = v.(*failureStore)
	}
	return nil
}

// setup is Provision without a Caddy context, for tests.
func (h *Handler) setup(sc *gateway.Scope, queryKey bool, logger *zap.Logger, m *metrics.Recorder) {
	h.scopeVar = h.Scope
	h.keys = newKeyring(sc.Keys)
	h.required = sc.Required
	h.queryKey = queryKey
	h.logger = logger
	h.metrics = m
}

// Validate checks the scope name.
func (h *Handler) Validate() error {
	if h.Scope != gateway.ScopeProxy && h.Scope != gateway.ScopeManagement {
		return fmt.Errorf("scope: want %q or %q, got %q", gateway.ScopeProxy, gateway.ScopeManagement, h.Scope)
	}
	return nil
}

// ServeHTTP authenticates the request, removes its credential, and either
// answers one of the auth endpoints or passes the request on.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if h.failures != nil && h.failures.Active() {
		if retry, blocked := h.failures.blocked(time.Now(), clientAddr(r)); blocked {
			return h.throttled(w, r, retry)
		}
	}
	c := readCredentials(r, h.queryKey)
	idx := h.check(c)
	switch {
	case idx >= 0:
		id := h.keys.ids[idx]
		caddyhttp.SetVar(r.Context(), gateway.VarClient, id)
		gateway.AddLogField(r, zap.String("client", id.(string)))
	case h.required, c.any() && len(h.keys.sums) > 0:
		// A wrong key is refused even where none is required: the client
		// meant to authenticate, and ignoring a bad key hides a mistake.
		// (A required scope without keys cannot be provisioned; should one
		// appear anyway, it fails closed here.) An Authorization header
		// the gateway cannot read a key from is no key: it is refused only
		// where a key is required, and then counts as a wrong one.
		if c.presented() && h.failures != nil {
			h.failures.fail(time.Now(), clientAddr(r))
		}
		return h.unauthorized(w, r, c)
	case h.Scope == gateway.ScopeManagement:
		// Without a key (none configured, or none required and none sent),
		// management is for the machine itself only, and only for programs
		// on it, not for web pages a browser on it shows.
		if why := notLocal(r); why != nil {
			return h.forbidden(w, r, why)
		}
	}
	h.strip(r, c)
	caddyhttp.SetVar(r.Context(), gateway.VarScope, h.scopeVar)
	if h.serveEndpoint(w, r, c) {
		return nil
	}
	return next.ServeHTTP(w, r)
}

// check returns the index of the key one of the credentials carries, or -1.
// Each presented credential is compared with every key.
func (h *Handler) check(c credentials) int {
	idx := -1
	for _, v := range [...]string{c.authz, c.header, c.query} {
		if v == "" {
			continue
		}
		if m := h.keys.match(v); m >= 0 && idx < 0 {
			idx = m
		}
	}
	return idx
}

// peerIsLoopback reports whether the TCP peer (not a forwarded-for header)
// is on this machine. Anything unparsable, such as a Unix socket peer, is
// not loopback: fail closed.
func peerIsLoopback(remoteAddr string) bool {
	if ap, err := netip.ParseAddrPort(remoteAddr); err == nil {
		return ap.Addr().Unmap().IsLoopback()
	}
	if a, err := netip.ParseAddr(remoteAddr); err == nil {
		return a.Unmap().IsLoopback()
	}
	return false
}

// Cleanup releases this config's hold on the failure store.
func (h *Handler) Cleanup() error {
	if h.failures != nil {
		_, err := failureStores.Delete(h.failuresKey)
		return err
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
