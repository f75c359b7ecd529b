package pressure

import (
	"context"
	"math"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/byteproxy/byteproxy/internal/metrics"
	"github.com/byteproxy/byteproxy/modules/gateway"
)

// Defaults of the pressure settings (DESIGN §2).
const (
	defaultMaxHeap        = 512 << 20
	defaultMaxRSS         = 1 << 30
	defaultMaxSched       = 250 * time.Millisecond
	defaultMaxCPU         = 0.98
	defaultInterval       = time.Second
	defaultRetryAfter     = 10 * time.Second
	defaultHealthInterval = 10 * time.Second
	maxHealthTimeout      = 3 * time.Second
	minInterval           = 10 * time.Millisecond

	// inFlightEstimate is what one proxied request in flight holds, at
	// most, in the usual case: goroutine stacks, the server's and the
	// upstream connection's buffers, a 32 KiB copy buffer, headers. The
	// default max_in_flight is max_heap / inFlightEstimate (4096 at the
	// default 512 MiB).
	inFlightEstimate = 128 << 10
)

// settings are the resolved pressure settings of one config.
type settings struct {
	disabled       bool
	maxHeap        uint64
	maxRSS         uint64
	maxSched       time.Duration
	maxCPU         float64
	maxInFlight    int64 // 0: no limit
	reservable     int64 // bytes requests may hold at once (Reserve)
	interval       time.Duration
	retryAfter     int    // seconds
	retryAfterHdr  string // the Retry-After value
	healthURL      string
	healthInterval time.Duration

	metrics *metrics.Recorder
	logger  *zap.Logger
}

// resolve applies the defaults to a (possibly nil) config that the app's
// Validate passed.
func resolve(c *gateway.PressureConfig) *settings {
	if c == nil {
		c = new(gateway.PressureConfig)
	}
	s := &settings{
		disabled:       c.Disabled,
		maxHeap:        orDefault(c.MaxHeap, defaultMaxHeap),
		maxRSS:         orDefault(c.MaxRSS, defaultMaxRSS),
		maxSched:       time.Duration(c.MaxSchedLatency),
		maxCPU:         c.MaxCPU,
		maxInFlight:    c.MaxInFlight,
		interval:       time.Duration(c.Interval),
		healthURL:      c.HealthCheckURL,
		healthInterval: time.Duration(c.HealthCheckInterval),
	}
	switch s.maxInFlight {
	case 0:
		s.maxInFlight = max(1, int64(s.maxHeap/inFlightEstimate))
	case -1:
		s.maxInFlight = 0
	}
	s.reservable = int64(min(s.maxHeap, s.maxRSS) / reservableShare)
	if s.maxSched == 0 {
		s.maxSched = defaultMaxSched
	}
	if s.maxCPU == 0 {
		s.maxCPU = defaultMaxCPU
	}
	if s.interval == 0 {
		s.interval = defaultInterval
	}
	s.interval = max(s.interval, minInterval)
	ra := time.Duration(c.RetryAfter)
	if ra == 0 {
		ra = defaultRetryAfter
	}
	s.retryAfter = max(1, int(math.Ceil(ra.Seconds())))
	s.retryAfterHdr = strconv.Itoa(s.retryAfter)
	if s.healthInterval == 0 {
		s.healthInterval = defaultHealthInterval
	}
	s.healthInterval = max(s.healthInterval, minInterval)
	return s
}

func orDefault(v, def int64) uint64 {
	if v == 0 {
		return uint64(def)
	}
	return uint64(v)
}

// snapshot is what the hot path reads: the latest reading, judged against
// the newest settings. It is immutable once published.
type snapshot struct {
	reading
	s        *settings
	exceeded *Threshold // nil: no sampled threshold is exceeded
	message  string     // for the 503 body when exceeded
}

// Monitor is the process's load monitor: one sampler, the requests in
// flight, the memory reserved. It lives in monitors (a caddy.UsagePool)
// while a config uses it, so a reload (new config provisioned, then the
// old one cleaned up) keeps it and never starts a second one. Every
// provisioned handler holds a lease on it; the sampling goroutine runs
// while a lease exists, and the newest live lease's settings apply.
type Monitor struct {
	mu     sync.Mutex
	leases []*lease // oldest first
	stop   chan struct{}
	done   chan struct{}
	wake   chan struct{} // settings changed

	cfg      atomic.Pointer[settings] // the newest live lease's settings
	snap     atomic.Pointer[snapshot]
	inFlight atomic.Int64
	reserved atomic.Int64 // bytes requests hold now (Reserve)
}

// monitors holds the process's Monitor under monitorKey while a config
// uses it.
var monitors = caddy.NewUsagePool()

const monitorKey = "monitor"

// Open returns the process's monitor, creating it for its first user.
// Each Open is paired with a Close, in the user's Cleanup.
func Open() (*Monitor, error) {
	v, _, err := monitors.LoadOrNew(monitorKey, func() (caddy.Destructor, error) {
		return &Monitor{wake: make(chan struct{}, 1)}, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*Monitor), nil
}

// Close gives back what Open returned.
func (m *Monitor) Close() { _, _ = monitors.Delete(monitorKey) }

// Destruct stops the sampler if a lease was never released; the last
// release stops it already.
func (m *Monitor) Destruct() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.stopLocked()
	return nil
}

// lease is one handler's claim on the monitor.
type lease struct{ s *settings }

// acquire registers settings (they apply from now on) and starts the
// sampler if it is not running. The first snapshot is published before
// acquire returns, so a handler never sees an unsampled process.
func (m *Monitor) acquire(s *settings) *lease {
	m.mu.Lock()
	defer m.mu.Unlock()
	l := &lease{s: s}
	m.leases = append(m.leases, l)
	m.cfg.Store(s)
	if m.stop == nil {
		sm := newSampler()
		m.stop, m.done = make(chan struct{}), make(chan struct{})
		m.publish(sm.take(), s, nil)
		go m.run(sm, m.stop, m.done)
		return l
	}
	m.notify()
	return l
}

// release drops a lease; the last one stops the sampler and waits for it
// (and its health probe) to end, so nothing outlives the last config.
func (m *Monitor) release(l *lease) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, x := range m.leases {
		if x == l {
			m.leases = append(m.leases[:i], m.leases[i+1:]...)
			break
		}
	}
	if len(m.leases) > 0 {
		m.cfg.Store(m.leases[len(m.leases)-1].s)
		m.notify()
		return
	}
	m.stopLocked()
}

// stopLocked stops the sampler and waits for it (and its health probe) to
// end. run never takes m.mu, so waiting here cannot deadlock.
func (m *Monitor) stopLocked() {
	if m.stop != nil {
		close(m.stop)
		<-m.done
		m.stop, m.done = nil, nil
		m.snap.Store(nil)
	}
}

// notify wakes the sampler to apply the newest settings.
func (m *Monitor) notify() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// publish judges a reading and makes it the snapshot. prev is the
// previous snapshot, to log when the state changes.
func (m *Monitor) publish(r reading, s *settings, prev *snapshot) *snapshot {
	snap := &snapshot{reading: r, s: s, exceeded: evaluate(r, s)}
	if snap.exceeded != nil {
		snap.message = snap.exceeded.message(s.retryAfter)
	}
	m.snap.Store(snap)
	s.metrics.SetPressure(r.heap, r.rss, r.sched, r.cpu, r.goroutines, m.inFlight.Load())
	switch {
	case snap.exceeded != nil && (prev == nil || prev.exceeded == nil || prev.exceeded.Type != snap.exceeded.Type):
		s.logger.Warn("under pressure: shedding load",
			zap.String("type", snap.exceeded.Type),
			zap.Float64("value", snap.exceeded.Value),
			zap.Float64("limit", snap.exceeded.Limit))
	case snap.exceeded == nil && prev != nil && prev.exceeded != nil:
		s.logger.Info("pressure relieved", zap.String("was", prev.exceeded.Type))
	}
	return snap
}

// run samples every interval and probes the health check URL until stop
// is closed. It owns sm.
func (m *Monitor) run(sm *sampler, stop, done chan struct{}) {
	defer close(done)
	ctx, cancel := context.WithCancel(context.Background())
	var probes sync.WaitGroup
	defer probes.Wait()
	defer cancel()

	s := m.cfg.Load()
	last := m.snap.Load()
	tick := time.NewTicker(s.interval)
	defer tick.Stop()
	probe := newProber(s)
	results := make(chan probeResult, 1)
	health := probeResult{healthy: true}
	probing := false
	startProbe := func() {
		if probe == nil || probing {
			return
		}
		probing = true
		probes.Add(1)
		go func(p *prober) {
			defer probes.Done()
			results <- p.check(ctx)
		}(probe)
	}
	startProbe()
	var probeTick <-chan time.Time
	var probeTicker *time.Ticker
	resetProbe := func() {
		if probeTicker != nil {
			probeTicker.Stop()
			probeTicker, probeTick = nil, nil
		}
		if probe != nil {
			probeTicker = time.NewTicker(s.healthInterval)
			probeTick = probeTicker.C
		}
	}
	resetProbe()
	defer func() {
		if probeTicker != nil {
			probeTicker.Stop()
		}
	}()

	judge := func(r reading) {
		r.healthy, r.healthCode = health.healthy, health.code
		last = m.publish(r, s, last)
	}
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
			judge(sm.takeCollected(s))
		case <-probeTick:
			startProbe()
		case res := <-results:
			probing = false
			if probe == nil {
				continue
			}
			if res.url != probe.url { // a probe of the previous settings
				startProbe()
				continue
			}
			health = res
			judge(last.reading)
		case <-m.wake:
			ns := m.cfg.Load()
			if ns == nil || ns == s {
				continue
			}
			s = ns
			tick.Reset(s.interval)
			if s.healthURL != probe.urlOrEmpty() || (probe != nil && s.healthInterval != probe.interval) {
				probe = newProber(s)
				health = probeResult{healthy: true}
				resetProbe()
				startProbe()
			}
			judge(last.reading)
		}
	}
}

// prober checks a dependency's URL.
type prober struct {
	url      string
	interval time.Duration
	client   *http.Client
}

type probeResult struct {
	url     string
	healthy bool
	code    int
}

func newProber(s *settings) *prober {
	if s.healthURL == "" {
		return nil
	}
	return &prober{
		url:      s.healthURL,
		interval: s.healthInterval,
		client: &http.Client{
			Timeout: min(s.healthInterval, maxHealthTimeout),
			// No pooled connections: nothing lingers between probes or
			// after the monitor stops.
			Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil},
		},
	}
}

func (p *prober) urlOrEmpty() string {
	if p == nil {
		return ""
	}
	return p.url
}

// check answers healthy for a 2xx or 3xx answer.
func (p *prober) check(ctx context.Context) probeResult {
	res := probeResult{url: p.url}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.url, nil)
	if err != nil {
		return res
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return res
	}
	resp.Body.Close()
	res.code = resp.StatusCode
	res.healthy = resp.StatusCode >= 200 && resp.StatusCode < 400
	return res
}
