package metrics

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// freshMetrics returns a recorder with its own collectors in a new registry,
// so tests do not see each other's counts.
func freshMetrics(t *testing.T) (*Recorder, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	m := New()
	if err := m.Register(reg); err != nil {
		t.Fatal(err)
	}
	return m, reg
}

func TestMetricsCounts(t *testing.T) {
	m, reg := freshMetrics(t)
	for range 3 {
		m.ProxyRequest("fake", 200, 20*time.Millisecond, 10*time.Millisecond)
	}
	m.ProxyRequest("fake", 502, time.Millisecond, 0)
	m.ProxyRequest("github", 404, time.Millisecond, time.Millisecond)
	m.UpstreamError("fake", UpstreamErrDial)
	m.UpstreamError("fake", UpstreamErrTimeout)
	m.UpstreamError("fake", "weird")
	m.RateLimited("fake", LimitService)
	m.RateLimited("fake", LimitClient)
	m.RateLimited("fake", LimitClient)
	m.AuthFailure("proxy")
	m.AuthFailure("management")
	m.AuthFailure("management")
	m.Shed("heapUsed")
	m.SetPressure(1<<20, 2<<20, 5*time.Millisecond, 0.5, 42, 7)
	m.SetRedisFallback(true)

	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"byteproxy_requests_total", []string{"service", "fake", "code", "200"}, 3},
		{"byteproxy_requests_total", []string{"service", "fake", "code", "502"}, 1},
		{"byteproxy_requests_total", []string{"service", "github", "code", "404"}, 1},
		{"byteproxy_upstream_errors_total", []string{"service", "fake", "kind", "dial"}, 1},
		{"byteproxy_upstream_errors_total", []string{"service", "fake", "kind", "timeout"}, 1},
		{"byteproxy_upstream_errors_total", []string{"service", "fake", "kind", "reset"}, 0},
		{"byteproxy_upstream_errors_total", []string{"service", "fake", "kind", "other"}, 1},
		{"byteproxy_rate_limited_total", []string{"service", "fake", "kind", "service"}, 1},
		{"byteproxy_rate_limited_total", []string{"service", "fake", "kind", "client"}, 2},
		{"byteproxy_auth_failures_total", []string{"scope", "proxy"}, 1},
		{"byteproxy_auth_failures_total", []string{"scope", "management"}, 2},
		{"byteproxy_shed_requests_total", []string{"type", "heapUsed"}, 1},
		{"byteproxy_pressure_heap_bytes", nil, 1 << 20},
		{"byteproxy_pressure_rss_bytes", nil, 2 << 20},
		{"byteproxy_pressure_sched_latency_seconds", nil, 0.005},
		{"byteproxy_pressure_cpu_ratio", nil, 0.5},
		{"byteproxy_pressure_goroutines", nil, 42},
		{"byteproxy_pressure_in_flight_requests", nil, 7},
		{"byteproxy_redis_fallback", nil, 1},
	} {
		if got, ok := gathered(t, reg, c.name, c.labels...); !ok || got != c.want {
			t.Errorf("%s%v = %v (found %v), want %v", c.name, c.labels, got, ok, c.want)
		}
	}
	// Histograms: 4 observations for fake's total, 3 for its upstream (the
	// 502 never reached it).
	if n, _ := gathered(t, reg, "byteproxy_request_duration_seconds", "service", "fake"); n != 4 {
		t.Errorf("request duration count = %v, want 4", n)
	}
	if n, _ := gathered(t, reg, "byteproxy_upstream_duration_seconds", "service", "fake"); n != 3 {
		t.Errorf("upstream duration count = %v, want 3", n)
	}
}

// gathered returns the value of the series name{labels...} (pairs of label
// name and value; a histogram gives its sample count) and whether it exists.
func gathered(t *testing.T, reg prometheus.Gatherer, name string, labels ...string) (float64, bool) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, mm := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range mm.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for i := 0; i+1 < len(labels); i += 2 {
				if have[labels[i]] != labels[i+1] {
					continue series
				}
			}
			switch {
			case mm.GetCounter() != nil:
				return mm.GetCounter().GetValue(), true
			case mm.GetGauge() != nil:
				return mm.GetGauge().GetValue(), true
			case mm.GetHistogram() != nil:
				return float64(mm.GetHistogram().GetSampleCount()), true
			}
		}
	}
	return 0, false
}

// seriesCount is the number of series of a metric.
func seriesCount(t *testing.T, reg prometheus.Gatherer, name string) int {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return len(mf.GetMetric())
		}
	}
	return 0
}

func TestMetricsServiceLabelBound(t *testing.T) {
	m, reg := freshMetrics(t)
	for i := range MaxServiceLabels + 50 {
		m.ProxyRequest(fmt.Sprintf("svc%d", i), 200, time.Millisecond, 0)
	}
	m.ProxyRequest("", 200, time.Millisecond, 0)
	// The first MaxServiceLabels keys (one of them "other") get a label;
	// every later key is counted under "other".
	if n := seriesCount(t, reg, "byteproxy_requests_total"); n > MaxServiceLabels+1 {
		t.Fatalf("%d request series, want at most %d", n, MaxServiceLabels+1)
	}
	if got, _ := gathered(t, reg, "byteproxy_requests_total", "service", otherLabel, "code", "200"); got != 51 {
		t.Fatalf(`requests_total{service="other"} = %v, want 51`, got)
	}
	// A later key over the bound never enters the cache either.
	if _, ok := m.set.services.Load("svc1049"); ok {
		t.Fatal("a key over the bound was cached")
	}
}

func TestMetricsOddStatusAndSmallLabelBound(t *testing.T) {
	m, reg := freshMetrics(t)
	m.ProxyRequest("fake", 0, time.Millisecond, 0)
	m.ProxyRequest("fake", 999, time.Millisecond, 0)
	if got, _ := gathered(t, reg, "byteproxy_requests_total", "service", "fake", "code", otherLabel); got != 2 {
		t.Fatalf(`code="other" = %v, want 2`, got)
	}
	for i := range maxSmallLabels + 5 {
		m.Shed(fmt.Sprintf("t%d", i))
	}
	if n := seriesCount(t, reg, "byteproxy_shed_requests_total"); n != maxSmallLabels+1 {
		t.Fatalf("%d shed series, want %d", n, maxSmallLabels+1)
	}
}

func TestMetricsZeroValueIsNoop(t *testing.T) {
	var nilM *Recorder
	for _, m := range []*Recorder{nilM, new(Recorder)} {
		m.ProxyRequest("x", 200, time.Second, time.Second)
		m.UpstreamError("x", UpstreamErrDial)
		m.RateLimited("x", LimitClient)
		m.AuthFailure("proxy")
		m.Shed("heap")
		m.SetPressure(1, 2, 3, 4, 5, 6)
		m.SetRedisFallback(true)
	}
}

// TestMetricsReRegister proves what a config reload does: the shared
// collectors go into the next config's fresh registry (and again into the
// same one) without error, and keep their counts.
func TestMetricsReRegister(t *testing.T) {
	m := New()
	extra := prometheus.NewGauge(prometheus.GaugeOpts{Name: "byteproxy_test_extra"})
	extra.Set(3)
	reg1 := prometheus.NewPedanticRegistry()
	if err := m.Register(reg1, extra); err != nil {
		t.Fatal(err)
	}
	m.AuthFailure("proxy")
	if err := m.Register(reg1); err != nil {
		t.Fatalf("registering twice in one registry: %v", err)
	}
	reg2 := prometheus.NewPedanticRegistry()
	if err := m.Register(reg2, extra); err != nil {
		t.Fatal(err)
	}
	m.AuthFailure("proxy")
	if got, ok := gathered(t, reg2, "byteproxy_auth_failures_total", "scope", "proxy"); !ok || got != 2 {
		t.Errorf("auth failures in the second registry = %v (found %v), want 2", got, ok)
	}
	if got, ok := gathered(t, reg2, "byteproxy_test_extra"); !ok || got != 3 {
		t.Errorf("extra collector = %v (found %v), want 3", got, ok)
	}
	// Another collector under a registered name is an error.
	other := prometheus.NewGauge(prometheus.GaugeOpts{Name: "byteproxy_test_extra"})
	if err := m.Register(reg2, other); err == nil {
		t.Error("a second collector of one name registered without error")
	}
}

func TestMetricsConcurrent(t *testing.T) {
	m, reg := freshMetrics(t)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 1000 {
				m.ProxyRequest(fmt.Sprintf("s%d", i%10), 200+g%3, time.Millisecond, time.Millisecond)
			}
		}()
	}
	wg.Wait()
	total := 0.0
	for i := range 10 {
		for c := range 3 {
			v, _ := gathered(t, reg, "byteproxy_requests_total", "service", fmt.Sprintf("s%d", i), "code", fmt.Sprint(200+c))
			total += v
		}
	}
	if total != 8000 {
		t.Fatalf("counted %v requests, want 8000", total)
	}
}

func BenchmarkMetricsProxyRequest(b *testing.B) {
	m := New()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.ProxyRequest("github", 200, 3*time.Millisecond, 2*time.Millisecond)
		}
	})
}
