// Package services is the http.handlers.byteproxy_services module: the
// proxy itself, forwarding /proxy/{service}/{path} to the service's base
// URL with the gateway's credential.
package services

import (
	"net/http"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/byteproxy/byteproxy/internal/httpx"
	"github.com/byteproxy/byteproxy/modules/gateway"
)

func init() {
	caddy.RegisterModule(new(Handler))
}

// Handler proxies `/proxy/{service}/{path}?{query}` to
// `{base_url}{path}?{query}` of the service configured in the byteproxy
// app (`apps.byteproxy`), and passes every other request to the next
// handler (so `/proxy/services` and the like reach byteproxy_manage).
//
// What goes upstream: the method, the path below the service's base URL
// (a first segment naming one of the service's versions selects that
// version's base URL), the query without `api_key`, the body streamed as
// it arrives, and the headers: the service's default headers, then the
// client's (a client header wins), then the service's credential (always
// the gateway's). Never forwarded: hop-by-hop headers, the client's
// credentials (`Authorization`, `Proxy-Authorization`, `X-API-Key`), and
// headers that claim the client's identity or the request's route
// (`Forwarded`, `X-Forwarded-*`, `X-Real-IP`, `True-Client-IP`,
// `X-Client-IP`, `CF-Connecting-IP`, `X-Original-URL`, `X-Rewrite-URL`;
// also spelled with `_` for `-`). None are added: the upstream does not
// learn the client's address.
//
// Refused by the gateway, never forwarded: `TRACE` and `CONNECT` (405,
// with `Allow`: a TRACE echo would hand the service's credential to the
// caller), and a protocol upgrade to anything but WebSocket (400: `h2c`
// and the like would open a tunnel past the gateway's rules).
//
// What comes back: the upstream's status, headers and body as they are
// (redirects are not followed, compressed bodies stay compressed, bodies
// and trailers stream, WebSocket upgrades pass through), plus
// `X-Proxy-Service: <key>` and `X-Proxy-Duration: <ms>ms` (time until the
// upstream's response headers). URLs in `Link`, `Location` and
// `Content-Location` that point under the service's base or version URLs
// are rewritten to the gateway's URL for the service as the client
// reached it (links.go), so that pagination and redirects stay on the
// gateway; bodies are never rewritten.
//
// A path can never leave the base URL: the upstream host is always the
// service's, a leading `//` is collapsed, and a `.` or `..` segment (also
// percent-encoded, or hidden behind an encoded slash or a backslash) is
// refused with 400.
//
// Errors are JSON: 404 unknown service, 401 when the service's token is
// not set, 400 for a refused path or the GitHub `/org/` mistake, 502 when
// the upstream cannot be reached, 504 when it does not answer within the
// service's timeout. Connection failures of idempotent requests without a
// body are retried up to the service's `retries`; a GET, HEAD or OPTIONS
// that finds its kept-alive upstream connection closed by the upstream
// before any answer is sent again on a new connection.
//
// Connections: each service has its own pool. Bodiless GET, HEAD and
// OPTIONS requests to a plain-http upstream go through a lean HTTP/1.1
// client (see lean.go; the byteproxy app's `lean_path off` turns it off);
// TLS upstreams (HTTP/2 when offered), request bodies and upgrades go
// through the service's http.Transport.
//
// The handler has no options: services are configured in the byteproxy
// app (the `byteproxy` global option).
type Handler struct {
	app     *gateway.App
	metrics *gateway.Metrics
	logger  *zap.Logger
	build   func(*gateway.Service) http.Handler
}

// CaddyModule returns the Caddy module information.
func (*Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.byteproxy_services",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision borrows the byteproxy app.
func (h *Handler) Provision(ctx caddy.Context) error {
	app, err := gateway.FromContext(ctx)
	if err != nil {
		return err
	}
	h.app = app
	h.metrics = app.Metrics()
	h.logger = ctx.Logger()
	lean := app.LeanPathOn()
	h.build = func(s *gateway.Service) http.Handler { return newForwarder(s, h.metrics, h.logger, lean) }
	return nil
}

// ServeHTTP forwards a service call, answers its local errors, and passes
// anything that is not a service call to next.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	// The escaped path, so that an encoded slash stays one.
	key, rest, ok := gateway.ProxyPath(r.URL.EscapedPath())
	if !ok {
		return next.ServeHTTP(w, r)
	}
	svc := h.app.Service(key)
	if svc == nil {
		return h.notConfigured(w, key)
	}
	f := svc.Proxy(h.build).(*forwarder)
	caddyhttp.SetVar(r.Context(), gateway.VarService, f.keyVar)
	gateway.AddLogField(r, zap.String("service", key))
	if status, body := f.check(r, rest); status != 0 {
		if status == http.StatusMethodNotAllowed {
			w.Header().Set("Allow", gateway.AllowedMethods)
		}
		f.metrics.ProxyRequest(key, status, 0, 0)
		f.logLocal(r, status)
		_ = httpx.WriteError(w, status, key, body)
		return nil
	}
	f.forward(w, r, rest)
	return nil
}

// notConfigured answers 404 for a key no service has, listing at most
// gateway.PublicListLimit of the services there are.
func (h *Handler) notConfigured(w http.ResponseWriter, key string) error {
	services := h.app.AllServices()
	keys, truncated := gateway.ListedKeys(services)
	body := notConfiguredBody{Error: "Service '" + key + "' not configured", AvailableServices: keys}
	if truncated {
		body.Truncated, body.ServicesTotal = true, len(services)
	}
	_ = httpx.WriteJSON(w, http.StatusNotFound, body)
	return nil
}

type notConfiguredBody struct {
	Error             string   `json:"error"`
	AvailableServices []string `json:"availableServices"`
	// Only when more services exist than availableServices lists.
	Truncated     bool `json:"truncated,omitempty"`
	ServicesTotal int  `json:"servicesTotal,omitempty"`
}

// check answers what the gateway refuses before contacting the upstream
// (gateway.Service.LocalRefusal, which byteproxy_ratelimit asks too, so
// that such a request spends no limit). It returns status 0 when the
// request may go upstream.
func (f *forwarder) check(r *http.Request, rest string) (int, any) {
	return f.svc.LocalRefusal(r, rest)
}

type upstreamErrorBody struct {
	Error   string `json:"error"`
	Message string `json:"message"`
	Service string `json:"service"`
}

// logLocal records a request the gateway answered itself.
func (f *forwarder) logLocal(r *http.Request, status int) {
	if ce := f.logger.Check(zap.DebugLevel, "refused proxy request"); ce != nil {
		ce.Write(zap.String("service", f.key), zap.String("method", r.Method), zap.Int("status", status))
	}
}

// durationMS formats d as the original's X-Proxy-Duration value, "12ms".
func durationMS(d time.Duration) string {
	var buf [24]byte
	return string(append(strconv.AppendInt(buf[:0], max(d.Milliseconds(), 0), 10), 'm', 's'))
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
