package gateway

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/byteproxy/byteproxy/internal/metrics"
)

// Metrics returns the app's metrics recorder (never nil).
func (a *App) Metrics() *metrics.Recorder {
	if a.metrics == nil {
		return new(metrics.Recorder)
	}
	return a.metrics
}

// newMetrics takes the shared metric collectors for this config, with the
// gauges that read app's registry at scrape time; released in Cleanup.
func newMetrics(ctx caddy.Context, app *App) *metrics.Recorder {
	m, err := metrics.Acquire(ctx, appCollectors(app)...)
	if err != nil {
		// A metrics failure must not stop the gateway.
		app.logger.Error("registering metrics", zap.Error(err))
		return new(metrics.Recorder)
	}
	return m
}

// appCollectors are the collectors that read one app at scrape time.
func appCollectors(app *App) []prometheus.Collector {
	return []prometheus.Collector{serviceGauge(app, "config"), serviceGauge(app, "runtime"), budgetWaiting{app}}
}

// serviceGauge counts the app's services of one source at scrape time.
func serviceGauge(app *App, source string) prometheus.Collector {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace:   "byteproxy",
		Name:        "services",
		Help:        "Services in the registry, by source (config or runtime).",
		ConstLabels: prometheus.Labels{"source": source},
	}, func() float64 {
		p := app.services.Load()
		if p == nil {
			return 0
		}
		n := 0
		for _, s := range *p {
			if s.Source == source {
				n++
			}
		}
		return float64(n)
	})
}

// budgetWaiting reports, at scrape time, the requests each service's
// upstream budget holds now.
type budgetWaiting struct{ app *App }

var budgetWaitingDesc = prometheus.NewDesc("byteproxy_budget_waiting",
	"Requests the upstream budget holds now, by service.", []string{"service"}, nil)

func (budgetWaiting) Describe(ch chan<- *prometheus.Desc) { ch <- budgetWaitingDesc }

func (c budgetWaiting) Collect(ch chan<- prometheus.Metric) {
	p := c.app.services.Load()
	if p == nil {
		return
	}
	n := 0
	for _, key := range SortedKeys(*p) {
		b := (*p)[key].Budget()
		if b == nil {
			continue
		}
		if n++; n > metrics.MaxServiceLabels {
			return
		}
		ch <- prometheus.MustNewConstMetric(budgetWaitingDesc, prometheus.GaugeValue, float64(b.Engine.Waiting(b.Credential)), key)
	}
}
