// Package manage is the http.handlers.byteproxy_manage module: the
// management API (/manage/*) and the informational endpoints (/, /health,
// /status, /up, /version, /auth-status, /docs, /proxy/services), with the
// JSON 404 for anything else.
package manage

import (
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/byteproxy/byteproxy/internal/httpx"
	"github.com/byteproxy/byteproxy/internal/routes"
	"github.com/byteproxy/byteproxy/modules/gateway"
	"github.com/byteproxy/byteproxy/modules/pressure"
)

func init() {
	caddy.RegisterModule(new(Handler))
}

// Handler answers /manage/* and the informational endpoints. It is
// terminal: every request that reaches it gets an answer, a JSON 404 for
// paths it does not know.
//
// It does not authenticate: put `byteproxy_auth management` in front of
// /manage/* (the `byteproxy` site directive does). Informational endpoints
// are public and show nothing secret; /status omits base URLs, which the
// authenticated /manage/services and /proxy/services show.
type Handler struct {
	app      *gateway.App
	logger   *zap.Logger
	checker  *updateChecker    // update_check's, nil if none
	pressure *pressure.Monitor // the process's: /up, /ready, /health, admission of bodies
}

// CaddyModule returns the Caddy module information.
func (*Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.byteproxy_manage",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision borrows the byteproxy app, the process's pressure monitor and
// the checker of the app's update_check feed.
func (h *Handler) Provision(ctx caddy.Context) error {
	app, err := gateway.FromContext(ctx)
	if err != nil {
		return err
	}
	h.app = app
	h.logger = ctx.Logger()
	if h.pressure, err = pressure.Open(); err != nil {
		return err
	}
	if app.UpdateCheck != "" {
		if h.checker, err = acquireChecker(app.UpdateCheck, app.Logger()); err != nil {
			return err
		}
	}
	return nil
}

// Cleanup lets go of what Provision acquired.
func (h *Handler) Cleanup() error {
	releaseChecker(h.checker)
	h.checker = nil
	if h.pressure != nil {
		h.pressure.Close()
	}
	return nil
}

// ServeHTTP answers the request; it never calls next.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	p := r.URL.Path
	switch {
	case routes.IsManagement(p):
		w.Header().Set("Cache-Control", "no-store")
		if caddyhttp.GetVar(r.Context(), gateway.VarScope) != gateway.ScopeManagement {
			return h.unguarded(w, r)
		}
		return h.serveManage(w, r, p)
	case routes.IsDocs(p):
		if serveDocs(w, r) {
			return nil
		}
	}
	return h.serveInfo(w, r)
}

// unguarded refuses /manage/* that did not pass byteproxy_auth management:
// a custom route that forgot the auth handler must not open the API.
func (h *Handler) unguarded(w http.ResponseWriter, r *http.Request) error {
	h.logger.Warn("refusing /manage request: no byteproxy_auth management before byteproxy_manage in this route",
		zap.String("path", r.URL.Path))
	return httpx.WriteJSON(w, http.StatusForbidden, map[string]any{
		"error":   "Forbidden",
		"message": "The management API is not protected in this route: put 'byteproxy_auth management' before 'byteproxy_manage'.",
	})
}

// methodNotAllowed answers a known path (route, a path of routes.Table)
// with a method it does not serve: 405 with Allow. OPTIONS, which every
// known path serves, gets 204 with Allow instead (a CORS preflight, which
// carries Origin, never gets here: byteproxy_cors answers it).
func methodNotAllowed(w http.ResponseWriter, r *http.Request, route string) error {
	allowed := routes.Allow(route)
	allowed = append(allowed[:len(allowed):len(allowed)], "OPTIONS")
	w.Header().Set("Allow", strings.Join(allowed, ", "))
	if r.Method == http.MethodOptions {
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	return httpx.WriteJSON(w, http.StatusMethodNotAllowed, map[string]any{
		"error":   "Method not allowed",
		"message": "The endpoint '" + shortPath(httpx.MountPrefix(r)+r.URL.Path) + "' does not accept " + r.Method,
		"allowed": allowed,
	})
}

// needsJSON reports a management write that does not say its body is
// JSON. POST, PUT and PATCH must carry Content-Type: application/json
// (parameters such as charset allowed; a +json type too), even without a
// body (POST
// .../test): a browser sends a cross-site POST without asking first only
// with a form or text/plain content type, so requiring JSON leaves no
// cross-site "simple" request that can change anything. DELETE has no
// body and needs no Content-Type: a browser never sends it cross-site
// without a preflight, and the preflight decides.
func needsJSON(r *http.Request) bool {
	switch r.Method {
	case http.MethodPost, http.MethodPut, http.MethodPatch:
	default:
		return false
	}
	ct := r.Header["Content-Type"]
	return len(ct) != 1 || ct[0] == "" || checkContentType(r) != nil
}

// unsupportedMediaType answers a management write that is not JSON.
func unsupportedMediaType(w http.ResponseWriter, r *http.Request) error {
	w.Header().Set("Accept", "application/json")
	return httpx.WriteJSON(w, http.StatusUnsupportedMediaType, map[string]any{
		"error":   "Unsupported Media Type",
		"message": r.Method + " requests to the management API must send Content-Type: application/json, also without a body.",
	})
}

// isRead reports GET and HEAD.
func isRead(r *http.Request) bool { return r.Method == http.MethodGet || r.Method == http.MethodHead }

// shortPath bounds a request path echoed in a message.
func shortPath(p string) string {
	if len(p) > 200 {
		return p[:200] + "…"
	}
	return p
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
