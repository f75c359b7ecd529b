// Package pressure is the http.handlers.byteproxy_pressure module: load
// shedding. One monitor per process samples heap, RSS, Go scheduler
// latency, CPU and an optional dependency health check every interval; the
// handler answers 503 while a threshold is exceeded and caps the requests
// in flight. The hot path reads one atomic snapshot and never measures.
package pressure

import (
	"net/http"

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

// Handler sheds load with 503 Service Unavailable while the process is
// under pressure. Its thresholds are the `pressure` settings of the
// byteproxy app; when several configs are alive during a reload, the
// newest one's settings apply. It never sheds /up, /ready and /health,
// and never counts management requests (/manage, /manage/*) against
// max_in_flight, so operators can still reach them when proxied traffic
// fills the cap.
type Handler struct {
	app    *gateway.App
	mon    *Monitor
	lease  *lease
	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (*Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.byteproxy_pressure",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision resolves the app's pressure settings and takes a lease on the
// process's monitor, starting it if this is the first handler.
func (h *Handler) Provision(ctx caddy.Context) error {
	app, err := gateway.FromContext(ctx)
	if err != nil {
		return err
	}
	h.app = app
	h.logger = ctx.Logger()
	s := resolve(app.Pressure) // checked by the app's Validate
	s.metrics = app.Metrics()
	s.logger = h.logger
	if h.mon, err = Open(); err != nil {
		return err
	}
	h.lease = h.mon.acquire(s)
	return nil
}

// ServeHTTP passes the request on unless a threshold is exceeded or the
// in-flight cap is reached.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	path := r.URL.Path
	if routes.IsProbe(path) {
		return next.ServeHTTP(w, r)
	}
	snap := h.mon.snap.Load()
	if snap == nil { // only between a last Cleanup and shutdown
		return next.ServeHTTP(w, r)
	}
	if snap.exceeded != nil {
		return h.shed(w, r, snap.s, snap.exceeded.Type, snap.exceeded.Value, snap.message)
	}
	if routes.IsManagement(path) {
		return next.ServeHTTP(w, r)
	}
	n := h.mon.inFlight.Add(1)
	defer h.mon.inFlight.Add(-1)
	if limit := snap.s.maxInFlight; limit > 0 && n > limit && !snap.s.disabled {
		e := Threshold{Type: TypeInFlight, Value: float64(n - 1), Limit: float64(limit)}
		return h.shed(w, r, snap.s, e.Type, e.Value, e.message(snap.s.retryAfter))
	}
	return next.ServeHTTP(w, r)
}

// shed answers 503 in the original's shape, with Retry-After.
func (h *Handler) shed(w http.ResponseWriter, r *http.Request, s *settings, typ string, value float64, msg string) error {
	h.app.Metrics().Shed(typ)
	gateway.AddLogField(r, zap.String("pressure", typ))
	h.logger.Debug("shed request", zap.String("type", typ), zap.Float64("value", value))
	w.Header().Set("Retry-After", s.retryAfterHdr)
	return httpx.WriteError(w, r, http.StatusServiceUnavailable, "", msg, shedBody{
		Error:   "Server under pressure",
		Type:    typ,
		Value:   value,
		Message: msg,
	})
}

type shedBody struct {
	Error   string  `json:"error"`
	Type    string  `json:"type"`
	Value   float64 `json:"value"`
	Message string  `json:"message"`
}

// Cleanup returns the lease (the last one stops the sampler) and the
// monitor.
func (h *Handler) Cleanup() error {
	if h.lease != nil {
		h.mon.release(h.lease)
		h.lease = nil
		h.mon.Close()
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
