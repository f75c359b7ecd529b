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
	"github.com/byteproxy/byteproxy/internal/metrics"
	"github.com/byteproxy/byteproxy/internal/routes"
	"github.com/byteproxy/byteproxy/modules/gateway"
)

func init() {
	caddy.RegisterModule(new(Handler))
}

// Handler proxies /proxy/{service}/{path} to the service's base URL and
// passes every other request to the next handler. It has no options: the
// services are the byteproxy app's. What is forwarded, refused and
// rewritten is described in docs/HANDLERS.md.
type Handler struct {
	app     *gateway.App
	metrics *metrics.Recorder
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
	key, rest, ok := routes.ProxyPath(r.URL.EscapedPath())
	if !ok {
		return next.ServeHTTP(w, r)
	}
	svc := h.app.Service(key)
	if svc == nil {
		return h.notConfigured(w, r, key)
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
		_ = httpx.WriteError(w, r, status, key, http.StatusText(status), body)
		return nil
	}
	f.forward(w, r, rest)
	return nil
}

// notConfigured answers 404 for a key no service has, listing at most
// gateway.PublicListLimit of the services there are.
func (h *Handler) notConfigured(w http.ResponseWriter, r *http.Request, key string) error {
	services := h.app.AllServices()
	keys, truncated := gateway.ListedKeys(services)
	body := notConfiguredBody{Error: "Service '" + key + "' not configured", AvailableServices: keys}
	if truncated {
		body.Truncated, body.ServicesTotal = true, len(services)
	}
	_ = httpx.WriteError(w, r, http.StatusNotFound, "", body.Error, body)
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
// Below a second the string is made once (msValues): every response
// carries one (BenchmarkModules/services: 35 allocs/op with, 36 with the
// string built per response).
func durationMS(d time.Duration) string {
	ms := max(d.Milliseconds(), 0)
	if ms < int64(len(msValues)) {
		return msValues[ms]
	}
	return strconv.FormatInt(ms, 10) + "ms"
}

// msValues[i] is "<i>ms".
var msValues = func() (v [1000]string) {
	for i := range v {
		v[i] = strconv.Itoa(i) + "ms"
	}
	return v
}()

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
