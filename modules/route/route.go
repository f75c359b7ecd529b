// Package route is the http.handlers.byteproxy module: the whole gateway
// as one handler, the standard route of DESIGN compiled once.
package route

import (
	"encoding/json"
	"fmt"
	"net/http"
	"runtime/debug"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/byteproxy/byteproxy/internal/httpx"
	"github.com/byteproxy/byteproxy/internal/routes"
	"github.com/byteproxy/byteproxy/modules/gateway"
)

func init() {
	caddy.RegisterModule(new(Handler))
}

// Handler is the whole gateway on a site: byteproxy_cors on every request
// (so error answers carry CORS headers too), then by path (routes.Of)
//
//	/proxy/*            byteproxy_pressure, byteproxy_auth proxy,
//	                    byteproxy_ratelimit, byteproxy_services, byteproxy_manage
//	/manage, /manage/*  byteproxy_pressure, byteproxy_auth management, byteproxy_manage
//	anything else       byteproxy_manage (informational endpoints, JSON 404)
//
// It never calls the next handler. It has no settings of its own: they are
// the byteproxy app's. The same chains can be composed by hand from the
// byteproxy_* handlers; this handler builds them once at provisioning
// instead of matching and compiling routes on every request, and turns a
// panic in any of them into a JSON 500 instead of a reset connection.
type Handler struct {
	logger   *zap.Logger
	cors     caddyhttp.MiddlewareHandler
	dispatch caddyhttp.Handler
}

// CaddyModule returns the Caddy module information.
func (*Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.byteproxy",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision loads and provisions the byteproxy_* handlers (Caddy cleans
// them up with this handler's context) and compiles the three chains.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	load := func(name string, cfg string) (caddyhttp.MiddlewareHandler, error) {
		m, err := ctx.LoadModuleByID("http.handlers."+name, json.RawMessage(cfg))
		if err != nil {
			return nil, fmt.Errorf("loading %s: %w", name, err)
		}
		return m.(caddyhttp.MiddlewareHandler), nil
	}
	var err error
	mods := map[string]caddyhttp.MiddlewareHandler{}
	for name, cfg := range map[string]string{
		"cors": `{}`, "pressure": `{}`, "ratelimit": `{}`, "services": `{}`, "manage": `{}`,
		"auth_proxy":      `{"scope":"` + gateway.ScopeProxy + `"}`,
		"auth_management": `{"scope":"` + gateway.ScopeManagement + `"}`,
	} {
		mod, _, _ := strings.Cut(name, "_")
		if mods[name], err = load("byteproxy_"+mod, cfg); err != nil {
			return err
		}
	}
	h.compile(mods)
	return nil
}

// compile builds the three chains from the handlers by name (cors,
// pressure, ratelimit, services, manage, auth_proxy, auth_management).
func (h *Handler) compile(mods map[string]caddyhttp.MiddlewareHandler) {
	h.cors = mods["cors"]
	manage := terminal(mods["manage"])
	proxy := chain(manage, mods["pressure"], mods["auth_proxy"], mods["ratelimit"], mods["services"])
	management := chain(manage, mods["pressure"], mods["auth_management"])
	h.dispatch = caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		switch routes.Of(r.URL.Path) {
		case routes.Proxy:
			return proxy.ServeHTTP(w, r)
		case routes.Management:
			return management.ServeHTTP(w, r)
		}
		return manage.ServeHTTP(w, r)
	})
}

// ServeHTTP runs the gateway on the request.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) (err error) {
	defer func() {
		if rec := recover(); rec != nil {
			if rec == http.ErrAbortHandler {
				panic(rec)
			}
			h.logger.Error("handler panic", zap.Any("panic", rec), zap.ByteString("stack", debug.Stack()),
				zap.String("method", r.Method), zap.String("path", r.URL.Path))
			err = httpx.WriteJSON(w, http.StatusInternalServerError, map[string]string{
				"error":   "Internal Server Error",
				"message": "The gateway failed to handle this request; the error is logged.",
			})
		}
	}()
	return h.cors.ServeHTTP(w, r, h.dispatch)
}

// chain builds mws[0] -> mws[1] -> ... -> last once, so a request pays no
// closure allocations for it.
func chain(last caddyhttp.Handler, mws ...caddyhttp.MiddlewareHandler) caddyhttp.Handler {
	next := last
	for i := len(mws) - 1; i >= 0; i-- {
		mw, n := mws[i], next
		next = caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			return mw.ServeHTTP(w, r, n)
		})
	}
	return next
}

// terminal adapts a handler that never calls next (byteproxy_manage).
func terminal(mw caddyhttp.MiddlewareHandler) caddyhttp.Handler {
	return caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		return mw.ServeHTTP(w, r, notFound)
	})
}

// notFound is what a terminal handler's next would be; byteproxy_manage
// answers every request itself, so it only guards against a change there.
var notFound = caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
	return httpx.WriteError(w, r, http.StatusNotFound, "", "Endpoint not found", map[string]string{"error": "Endpoint not found"})
})

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
