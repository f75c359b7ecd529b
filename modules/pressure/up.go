package pressure

import "net/http"

// UpBody is the JSON body of /up: the monitor's latest readings, in the
// original's field names.
type UpBody struct {
	// "ok", or "under_pressure" while a threshold is exceeded.
	Status string `json:"status"`
	// p99 Go scheduler latency over the last interval, in milliseconds:
	// the analogue of the original's event-loop delay.
	EventLoopDelay float64 `json:"eventLoopDelay"`
	// Go heap in use, in bytes.
	HeapUsed uint64 `json:"heapUsed"`
	// Resident set size, in bytes (0 where it is not measured).
	RSSBytes uint64 `json:"rssBytes"`
	// Process CPU use over the last interval as a fraction of GOMAXPROCS.
	EventLoopUtilized float64 `json:"eventLoopUtilized"`
	// Whether the health_check dependency answers (true without one).
	Healthy bool `json:"healthy"`
	// Goroutines alive.
	Goroutines int64 `json:"goroutines"`
	// Requests in flight through byteproxy_pressure.
	InFlight int64 `json:"inFlight"`
	// The threshold exceeded, if any.
	Exceeded *Threshold `json:"exceeded,omitempty"`
}

// Up returns the status code and JSON body for /up: the monitor's latest
// readings. manage serves /up through it.
//
// /up is liveness: the status code is always 200 while the process works.
// It is never shed and reports pressure in its body ("status":
// "under_pressure", "exceeded"), so a liveness probe never restarts a busy
// instance. Readiness, which a load balancer uses to drain an instance, is
// /ready (Ready).
func (m *Monitor) Up() (status int, body any) {
	return http.StatusOK, m.upBody(m.current())
}

// Ready returns the status code, the Retry-After value ("" for none) and
// the JSON body for /ready: readiness for load balancers. It answers 503
// with Retry-After (the pressure retry_after) while the gateway sheds
// proxied requests (a threshold exceeded, or max_in_flight reached) and
// while the health_check dependency fails, even with `pressure off`: a
// request would fail there too. Otherwise 200. The body is /up's.
func (m *Monitor) Ready() (status int, retryAfter string, body UpBody) {
	snap := m.current()
	b := m.upBody(snap)
	if b.Exceeded == nil && !snap.healthy {
		b.Status = "under_pressure"
		b.Exceeded = &Threshold{Type: TypeHealthCheck, Value: float64(snap.healthCode)}
	}
	if b.Exceeded == nil {
		return http.StatusOK, "", b
	}
	return http.StatusServiceUnavailable, snap.s.retryAfterHdr, b
}

func (m *Monitor) upBody(snap *snapshot) UpBody {
	inFlight := m.inFlight.Load()
	b := UpBody{
		Status:            "ok",
		EventLoopDelay:    ms(snap.sched),
		HeapUsed:          snap.heap,
		RSSBytes:          snap.rss,
		EventLoopUtilized: snap.cpu,
		Healthy:           snap.healthy,
		Goroutines:        snap.goroutines,
		InFlight:          inFlight,
		Exceeded:          snap.exceeded,
	}
	if b.Exceeded == nil {
		b.Exceeded = inFlightAtCap(snap.s, inFlight)
	}
	if b.Exceeded != nil {
		b.Status = "under_pressure"
	}
	return b
}

// UnderPressure reports whether a threshold is exceeded now, and which
// type ("heapUsed", "rssBytes", "eventLoopDelay", "cpu", "inFlight",
// "healthCheck"); /health reports it. Always false with `pressure off`.
func (m *Monitor) UnderPressure() (bool, string) {
	snap := m.current()
	e := snap.exceeded
	if e == nil {
		e = inFlightAtCap(snap.s, m.inFlight.Load())
	}
	if e == nil {
		return false, ""
	}
	return true, e.Type
}

// inFlightAtCap reports the in-flight cap as exceeded when the next
// request would be refused.
func inFlightAtCap(s *settings, n int64) *Threshold {
	if s == nil || s.disabled || s.maxInFlight <= 0 || n < s.maxInFlight {
		return nil
	}
	return &Threshold{Type: TypeInFlight, Value: float64(n), Limit: float64(s.maxInFlight)}
}

// current is the latest snapshot; with no handler provisioned (the
// monitor is not running) it measures once, judged by the default
// settings.
func (m *Monitor) current() *snapshot {
	if snap := m.snap.Load(); snap != nil {
		return snap
	}
	s := resolve(nil)
	r := newSampler().take()
	return &snapshot{reading: r, s: s, exceeded: evaluate(r, s)}
}
