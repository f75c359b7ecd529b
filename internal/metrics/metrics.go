// Package metrics records the gateway's Prometheus metrics (namespace
// byteproxy). The collectors are shared by every config alive, so a reload
// keeps the counts; see Acquire.
package metrics

import (
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
)

// Recorder records the gateway's Prometheus metrics. Every module reports
// through its methods; they are safe for concurrent use, and a nil or zero
// Recorder records nothing.
//
// Label values are bounded: service keys come only from the registry,
// never from a request path, and at most MaxServiceLabels distinct
// services get their own label value (the rest are counted as "other").
type Recorder struct {
	set    *metricSet
	pooled bool // set holds a reference in pool (Acquire)
}

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

// Label bounds: distinct values beyond these share the label "other".
const (
	MaxServiceLabels = 1000
	maxSmallLabels   = 32
	otherLabel       = "other"
)

// ProxyRequest records one proxied request of a known service: the status
// sent to the client, the total duration, and the upstream duration (zero
// if the upstream was never reached).
func (m *Recorder) ProxyRequest(service string, status int, total, upstream time.Duration) {
	if m == nil || m.set == nil {
		return
	}
	sm := m.set.service(service)
	sm.code(status).Inc()
	sm.duration.Observe(total.Seconds())
	if upstream > 0 {
		sm.upstream.Observe(upstream.Seconds())
	}
}

// UpstreamError records a failed upstream exchange of a known service.
func (m *Recorder) UpstreamError(service, kind string) {
	if m == nil || m.set == nil {
		return
	}
	sm := m.set.service(service)
	switch kind {
	case UpstreamErrDial:
		sm.errDial.Inc()
	case UpstreamErrTimeout:
		sm.errTimeout.Inc()
	case UpstreamErrReset:
		sm.errReset.Inc()
	default:
		sm.errOther.Inc()
	}
}

// RateLimited records a 429 of the given kind (LimitService, LimitClient).
func (m *Recorder) RateLimited(service, kind string) {
	if m == nil || m.set == nil {
		return
	}
	sm := m.set.service(service)
	switch kind {
	case LimitService:
		sm.limitService.Inc()
	case LimitClient:
		sm.limitClient.Inc()
	default:
		sm.limitOther.Inc()
	}
}

// Reasons of a request the upstream budget answered itself.
const (
	BudgetBucket       = "bucket"       // a route bucket (Discord) or a policy (other services)
	BudgetResource     = "resource"     // a GitHub resource (core, search, ...)
	BudgetGlobal       = "global"       // Discord's global limit
	BudgetShared       = "shared"       // a Discord resource shared with others
	BudgetRetryAfter   = "retry_after"  // the upstream asked to wait (a 429's Retry-After)
	BudgetSecondary    = "secondary"    // a GitHub secondary limit
	BudgetSerial       = "serial"       // GitHub mutations go one at a time, spaced
	BudgetConcurrency  = "concurrency"  // too many requests of the credential in flight
	BudgetBan          = "ban"          // the ban guard paused the credential
	BudgetUnauthorized = "unauthorized" // the upstream rejected the credential (401)
	BudgetQueue        = "queue"        // no room to wait
	BudgetUnavailable  = "unavailable"  // the budget could not decide (its config unloaded)
)

// BudgetHeld records a request the upstream budget held for waited
// before it was sent.
func (m *Recorder) BudgetHeld(service string, waited time.Duration) {
	if m == nil || m.set == nil {
		return
	}
	sm := m.set.service(service)
	sm.held.Inc()
	sm.wait.Observe(waited.Seconds())
}

// BudgetRefused records a request the upstream budget answered itself
// (429, 403 or 503) for a reason (BudgetBucket, ...), after holding it for
// waited (0: answered at once).
func (m *Recorder) BudgetRefused(service, reason string, waited time.Duration) {
	if m == nil || m.set == nil {
		return
	}
	sm := m.set.service(service)
	m.set.budgetRefused.WithLabelValues(sm.label, boundedReason(reason)).Inc()
	if waited > 0 {
		sm.wait.Observe(waited.Seconds())
	}
}

// BudgetBanTrip records a ban-guard trip of a service's credential.
func (m *Recorder) BudgetBanTrip(service string) {
	if m == nil || m.set == nil {
		return
	}
	m.set.service(service).banTrips.Inc()
}

// UpstreamRateLimited records an upstream answer that refused a request for
// rate limiting, by scope: Discord's X-RateLimit-Scope ("user", "global",
// "shared"), "exhausted" (x-ratelimit-remaining: 0, GitHub's primary
// limit), "retry_after" (a 403 or 429 with Retry-After, GitHub's secondary
// limits), "other" (any other 429).
func (m *Recorder) UpstreamRateLimited(service, scope string) {
	if m == nil || m.set == nil {
		return
	}
	switch scope {
	case "user", "global", "shared", "exhausted", "retry_after":
	default:
		scope = otherLabel
	}
	m.set.upstreamLimited.WithLabelValues(m.set.service(service).label, scope).Inc()
}

func boundedReason(r string) string {
	switch r {
	case BudgetBucket, BudgetResource, BudgetGlobal, BudgetShared, BudgetRetryAfter, BudgetSecondary,
		BudgetSerial, BudgetConcurrency, BudgetBan, BudgetUnauthorized, BudgetQueue, BudgetUnavailable:
		return r
	}
	return otherLabel
}

// AuthFailure records a 401 for a scope ("proxy", "management").
func (m *Recorder) AuthFailure(scope string) {
	if m == nil || m.set == nil {
		return
	}
	m.set.authFailures.get(scope).Inc()
}

// AuthThrottled records a request refused with 429 because its client
// address presented too many wrong keys, by scope.
func (m *Recorder) AuthThrottled(scope string) {
	if m == nil || m.set == nil {
		return
	}
	m.set.authThrottled.get(scope).Inc()
}

// Shed records a request refused with 503 for a pressure type.
func (m *Recorder) Shed(pressureType string) {
	if m == nil || m.set == nil {
		return
	}
	m.set.shed.get(pressureType).Inc()
}

// SetPressure publishes the monitor's latest readings.
func (m *Recorder) SetPressure(heapBytes, rssBytes uint64, schedLatency time.Duration, cpu float64, goroutines, inFlight int64) {
	if m == nil || m.set == nil {
		return
	}
	s := m.set
	s.heap.Set(float64(heapBytes))
	s.rss.Set(float64(rssBytes))
	s.sched.Set(schedLatency.Seconds())
	s.cpu.Set(cpu)
	s.goroutines.Set(float64(goroutines))
	s.inFlight.Set(float64(inFlight))
}

// SetRedisFallback publishes whether rate limits fell back to memory.
func (m *Recorder) SetRedisFallback(fallback bool) {
	if m == nil || m.set == nil {
		return
	}
	v := 0.0
	if fallback {
		v = 1
	}
	m.set.redisFallback.Set(v)
}

// pool holds the collectors shared by every loaded config, under poolKey.
var pool = caddy.NewUsagePool()

const poolKey = "metrics"

// Acquire registers the shared collectors and extra (collectors of one
// config, such as gauges read at scrape time) in this config's registry
// (the one behind the admin endpoint's /metrics and the `metrics`
// directive) and returns a recorder that holds the collectors until
// Release (the module's Cleanup).
//
// Caddy gives every config load a fresh registry. The collectors are
// shared by every config alive (pool, as Caddy's reverse_proxy shares its
// upstream gauge), so a config reload does not reset the counters and
// registering them again in the new registry never collides. On error
// nothing is held.
func Acquire(ctx caddy.Context, extra ...prometheus.Collector) (*Recorder, error) {
	v, _, err := pool.LoadOrNew(poolKey, func() (caddy.Destructor, error) { return newMetricSet(), nil })
	if err != nil { // newMetricSet cannot fail
		return nil, err
	}
	var reg prometheus.Registerer
	if r := ctx.GetMetricsRegistry(); r != nil {
		reg = r
	}
	m := &Recorder{set: v.(*metricSet)}
	if err := m.Register(reg, extra...); err != nil {
		_, _ = pool.Delete(poolKey)
		return nil, err
	}
	m.pooled = true
	return m, nil
}

// Release gives a recorder of Acquire back; the last release of all
// loaded configs drops the collectors. Calling it again does nothing.
func (m *Recorder) Release() {
	if m != nil && m.pooled {
		m.pooled = false
		_, _ = pool.Delete(poolKey)
	}
}

// Held is how many recorders of Acquire hold the shared collectors now
// (one per loaded config that has metrics; 0 when none).
func Held() int {
	n, _ := pool.References(poolKey)
	return n
}

// Destruct lets a metricSet live in a caddy.UsagePool; it holds nothing
// to close.
func (*metricSet) Destruct() error { return nil }

// New returns a recorder with collectors of its own, registered nowhere
// (tests and benchmarks; see Register).
func New() *Recorder { return &Recorder{set: newMetricSet()} }

// Register registers m's collectors and extra in reg (nil: nowhere).
// Registering a collector that reg already holds is not an error.
func (m *Recorder) Register(reg prometheus.Registerer, extra ...prometheus.Collector) error {
	if reg == nil {
		return nil
	}
	for _, c := range append(m.set.collectors(), extra...) {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) && are.ExistingCollector == c {
				continue
			}
			return err
		}
	}
	return nil
}

// metricSet holds the collectors and the per-label children cached for the
// hot path (WithLabelValues hashes and allocates; a cached child is one
// atomic add).
type metricSet struct {
	requests        *prometheus.CounterVec
	duration        *prometheus.HistogramVec
	upstreamDur     *prometheus.HistogramVec
	upstreamErrs    *prometheus.CounterVec
	rateLimited     *prometheus.CounterVec
	budgetHeld      *prometheus.CounterVec
	budgetRefused   *prometheus.CounterVec
	budgetBanTrips  *prometheus.CounterVec
	budgetWait      *prometheus.HistogramVec
	upstreamLimited *prometheus.CounterVec
	authFailures    *labelCache
	authThrottled   *labelCache
	shed            *labelCache
	heap            prometheus.Gauge
	rss             prometheus.Gauge
	sched           prometheus.Gauge
	cpu             prometheus.Gauge
	goroutines      prometheus.Gauge
	inFlight        prometheus.Gauge
	redisFallback   prometheus.Gauge

	services     sync.Map // service key -> *serviceMetrics
	serviceMu    sync.Mutex
	serviceCount int
}

// Duration buckets in seconds: from a fast local upstream to the longest
// sensible upstream timeout.
var durationBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

func newMetricSet() *metricSet {
	const ns = "byteproxy"
	gauge := func(sub, name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help})
	}
	s := &metricSet{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "requests_total",
			Help: "Proxied requests by service and the status code sent to the client.",
		}, []string{"service", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: ns, Name: "request_duration_seconds", Buckets: durationBuckets,
			Help: "Time to answer a proxied request, by service.",
		}, []string{"service"}),
		upstreamDur: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: ns, Name: "upstream_duration_seconds", Buckets: durationBuckets,
			Help: "Time the upstream took to send its response headers, by service.",
		}, []string{"service"}),
		upstreamErrs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "upstream_errors_total",
			Help: "Failed upstream exchanges by service and kind (dial, timeout, reset, other).",
		}, []string{"service", "kind"}),
		rateLimited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "rate_limited_total",
			Help: "Requests refused with 429 by service and limit kind (service, client).",
		}, []string{"service", "kind"}),
		budgetHeld: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: "budget", Name: "held_total",
			Help: "Requests the upstream budget held until their budget reset, then sent, by service.",
		}, []string{"service"}),
		budgetRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: "budget", Name: "refused_total",
			Help: "Requests the upstream budget answered itself instead of sending them, by service and reason (bucket, resource, global, shared, retry_after, secondary, serial, concurrency, ban, unauthorized, queue, unavailable).",
		}, []string{"service", "reason"}),
		budgetBanTrips: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: "budget", Name: "ban_trips_total",
			Help: "Times the ban guard paused a service's credential after too many invalid responses.",
		}, []string{"service"}),
		budgetWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: "budget", Name: "wait_seconds", Buckets: durationBuckets,
			Help: "Time requests were held by the upstream budget, sent or refused afterwards, by service.",
		}, []string{"service"}),
		upstreamLimited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "upstream_rate_limited_total",
			Help: "Upstream answers that refused a request for rate limiting, by service and scope (user, global, shared, exhausted, retry_after, other).",
		}, []string{"service", "scope"}),
		authFailures: newLabelCache(prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "auth_failures_total",
			Help: "Requests refused with 401 by scope (proxy, management).",
		}, []string{"scope"})),
		authThrottled: newLabelCache(prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "auth_throttled_total",
			Help: "Requests refused with 429 by scope (proxy, management) because their client address presented too many wrong keys.",
		}, []string{"scope"})),
		shed: newLabelCache(prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "shed_requests_total",
			Help: "Requests refused with 503 under pressure, by pressure type.",
		}, []string{"type"})),
		heap:          gauge("pressure", "heap_bytes", "Heap in use at the last pressure reading."),
		rss:           gauge("pressure", "rss_bytes", "Resident set size at the last pressure reading."),
		sched:         gauge("pressure", "sched_latency_seconds", "Go scheduler latency at the last pressure reading."),
		cpu:           gauge("pressure", "cpu_ratio", "Process CPU use as a fraction of GOMAXPROCS at the last pressure reading."),
		goroutines:    gauge("pressure", "goroutines", "Goroutines at the last pressure reading."),
		inFlight:      gauge("pressure", "in_flight_requests", "Requests in flight at the last pressure reading."),
		redisFallback: gauge("redis", "fallback", "1 while rate limits fell back to in-memory counters because Redis is unreachable, else 0."),
	}
	return s
}

func (s *metricSet) collectors() []prometheus.Collector {
	return []prometheus.Collector{
		s.requests, s.duration, s.upstreamDur, s.upstreamErrs, s.rateLimited,
		s.budgetHeld, s.budgetRefused, s.budgetBanTrips, s.budgetWait, s.upstreamLimited,
		s.authFailures.vec, s.authThrottled.vec, s.shed.vec,
		s.heap, s.rss, s.sched, s.cpu, s.goroutines, s.inFlight, s.redisFallback,
	}
}

// serviceMetrics are one service's pre-curried children.
type serviceMetrics struct {
	set      *metricSet
	label    string
	duration prometheus.Observer
	upstream prometheus.Observer

	errDial, errTimeout, errReset, errOther prometheus.Counter
	limitService, limitClient, limitOther   prometheus.Counter
	held, banTrips                          prometheus.Counter
	wait                                    prometheus.Observer

	// codes[status-100] for status 100..599, codes[500] for any other
	// value; filled on first use so only codes seen become series
	// (BenchmarkMetricsProxyRequest: median 291 ns/op, 0 allocs with;
	// 535 ns/op, 1 alloc with WithLabelValues per request).
	codes [501]atomic.Pointer[prometheus.Counter]
}

// service returns the cached children of a service label, creating them on
// first use; past MaxServiceLabels distinct keys, every new key shares
// "other".
func (s *metricSet) service(key string) *serviceMetrics {
	if v, ok := s.services.Load(key); ok {
		return v.(*serviceMetrics)
	}
	s.serviceMu.Lock()
	defer s.serviceMu.Unlock()
	if v, ok := s.services.Load(key); ok {
		return v.(*serviceMetrics)
	}
	label := key
	if s.serviceCount >= MaxServiceLabels || key == "" {
		label = otherLabel
		if v, ok := s.services.Load(otherLabel); ok {
			return v.(*serviceMetrics) // do not store key: the map stays bounded
		}
	}
	sm := s.newServiceMetrics(label)
	s.services.Store(label, sm)
	s.serviceCount++
	return sm
}

func (s *metricSet) newServiceMetrics(label string) *serviceMetrics {
	errs := s.upstreamErrs.MustCurryWith(prometheus.Labels{"service": label})
	lim := s.rateLimited.MustCurryWith(prometheus.Labels{"service": label})
	return &serviceMetrics{
		set:          s,
		label:        label,
		duration:     s.duration.WithLabelValues(label),
		upstream:     s.upstreamDur.WithLabelValues(label),
		errDial:      errs.WithLabelValues(UpstreamErrDial),
		errTimeout:   errs.WithLabelValues(UpstreamErrTimeout),
		errReset:     errs.WithLabelValues(UpstreamErrReset),
		errOther:     errs.WithLabelValues(UpstreamErrOther),
		limitService: lim.WithLabelValues(LimitService),
		limitClient:  lim.WithLabelValues(LimitClient),
		limitOther:   lim.WithLabelValues(otherLabel),
		held:         s.budgetHeld.WithLabelValues(label),
		banTrips:     s.budgetBanTrips.WithLabelValues(label),
		wait:         s.budgetWait.WithLabelValues(label),
	}
}

// code returns the request counter of one status code.
func (sm *serviceMetrics) code(status int) prometheus.Counter {
	i, code := status-100, ""
	if status < 100 || status > 599 {
		i, code = 500, otherLabel
	}
	slot := &sm.codes[i]
	if c := slot.Load(); c != nil {
		return *c
	}
	if code == "" {
		code = strconv.Itoa(status)
	}
	c := sm.set.requests.WithLabelValues(sm.label, code)
	slot.Store(&c) // racing stores hold the same child
	return c
}

// labelCache caches the children of a one-label counter, bounded to
// maxSmallLabels distinct values.
type labelCache struct {
	vec   *prometheus.CounterVec
	mu    sync.Mutex
	m     sync.Map // label -> prometheus.Counter
	count int
}

func newLabelCache(vec *prometheus.CounterVec) *labelCache { return &labelCache{vec: vec} }

func (l *labelCache) get(v string) prometheus.Counter {
	if c, ok := l.m.Load(v); ok {
		return c.(prometheus.Counter)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if c, ok := l.m.Load(v); ok {
		return c.(prometheus.Counter)
	}
	if l.count >= maxSmallLabels || v == "" {
		return l.vec.WithLabelValues(otherLabel)
	}
	c := l.vec.WithLabelValues(v)
	l.m.Store(v, c)
	l.count++
	return c
}
