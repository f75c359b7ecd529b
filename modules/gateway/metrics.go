package gateway

import (
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// Metrics records the gateway's Prometheus metrics. Every module reports
// through these methods; label values are bounded (service keys come only
// from the registry, never from a request path).
//
// NOT YET IMPLEMENTED: the methods are no-ops until the observability
// issue lands; their signatures are the contract the modules call.
type Metrics struct{}

// Upstream error kinds.
const (
	UpstreamErrDial    = "dial"
	UpstreamErrTimeout = "timeout"
	UpstreamErrReset   = "reset"
	UpstreamErrOther   = "other"
)

// Rate-limit kinds.
const (
	LimitService = "service"
	LimitClient  = "client"
)

// ProxyRequest records one proxied request of a known service: the status
// sent to the client, the total duration, and the upstream duration (zero
// if the upstream was never reached).
func (m *Metrics) ProxyRequest(service string, status int, total, upstream time.Duration) {}

// UpstreamError records a failed upstream exchange of a known service.
func (m *Metrics) UpstreamError(service, kind string) {}

// RateLimited records a 429 of the given kind (LimitService, LimitClient).
func (m *Metrics) RateLimited(service, kind string) {}

// AuthFailure records a 401 for a scope ("proxy", "management").
func (m *Metrics) AuthFailure(scope string) {}

// Shed records a request refused with 503 for a pressure type.
func (m *Metrics) Shed(pressureType string) {}

// SetPressure publishes the monitor's latest readings.
func (m *Metrics) SetPressure(heapBytes, rssBytes uint64, schedLatency time.Duration, cpu float64, goroutines, inFlight int64) {
}

// SetRedisFallback publishes whether rate limits fell back to memory.
func (m *Metrics) SetRedisFallback(fallback bool) {}

// Metrics returns the app's metrics recorder (never nil).
func (a *App) Metrics() *Metrics {
	if a.metrics == nil {
		return new(Metrics)
	}
	return a.metrics
}

// AddLogField adds a field to the request's access log entry (Caddy's `log`
// directive), e.g. the service or the consumer id. Never pass a secret.
func AddLogField(r *http.Request, f zap.Field) {
	if extra, ok := r.Context().Value(caddyhttp.ExtraLogFieldsCtxKey).(*caddyhttp.ExtraLogFields); ok {
		extra.Add(f)
	}
}
