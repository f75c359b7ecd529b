package route_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/byteproxy/byteproxy"
)

// The cost of each module on the hot path (README, Performance): every
// byteproxy_* handler provisioned by Caddy from one config (a proxy key
// required, a client and a service rate limit, one service at a local
// upstream, pressure thresholds a loaded machine does not reach so that
// its figure is the check and not shedding), then called alone on an
// authenticated GET to the service, the next handler doing nothing. "pipeline" is http.handlers.byteproxy,
// the whole gateway, and "caddy_reverse_proxy" Caddy's own handler to the
// same upstream, for comparison. Each request is prepared as Caddy's
// server prepares it (caddyhttp.PrepareRequest), outside the timer.
//
//	go test -run '^$' -bench 'BenchmarkModules|BenchmarkRoute' -benchmem -count 5 -benchtime 0.5s ./modules/route/
func BenchmarkModules(b *testing.B) {
	const key = "pk-LIVE-7f3a9c2e1b5d4e6f8a0b1c2d3e4f5a6b"
	body := []byte(`{"id":1,"name":"small response","ok":true}`)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	}))
	b.Cleanup(up.Close)
	loadBenchConfig(b, fmt.Sprintf(`{
	admin off
	auto_https off
	persist_config off
	log default {
		level ERROR
	}
	storage file_system %s
	byteproxy {
		auth proxy {
			key %s
			required true
		}
		client_rate_limit 100000000 1m
		pressure {
			max_sched_latency 1h
			max_cpu 1
		}
		service bench {
			base_url %s/
			rate_limit 100000000 1m
		}
	}
}

http://127.0.0.1:0 {
	byteproxy
}
`, b.TempDir(), key, up.URL))
	b.Cleanup(func() { _ = caddy.Stop() })

	ctx := caddy.ActiveContext()
	httpApp, err := ctx.App("http")
	if err != nil {
		b.Fatal(err)
	}
	var srv *caddyhttp.Server // the site's, as its requests carry it
	for _, s := range httpApp.(*caddyhttp.App).Servers {
		srv = s
	}
	load := func(id, cfg string) caddyhttp.MiddlewareHandler {
		m, err := ctx.LoadModuleByID("http.handlers."+id, json.RawMessage(cfg))
		if err != nil {
			b.Fatal(err)
		}
		return m.(caddyhttp.MiddlewareHandler)
	}
	for _, c := range []struct {
		name string
		h    caddyhttp.MiddlewareHandler
		// forward: the handler answers with the upstream's 200 itself;
		// otherwise it calls next.
		forward bool
	}{
		{"auth", load("byteproxy_auth", `{"scope":"proxy"}`), false},
		{"cors", load("byteproxy_cors", `{}`), false},
		{"pressure", load("byteproxy_pressure", `{}`), false},
		{"ratelimit", load("byteproxy_ratelimit", `{}`), false},
		{"services", load("byteproxy_services", `{}`), true},
		{"pipeline", load("byteproxy", `{}`), true},
		{"caddy_reverse_proxy", load("reverse_proxy", `{"upstreams":[{"dial":"`+up.Listener.Addr().String()+`"}],"rewrite":{"uri":"/users/1?x=1"}}`), true},
	} {
		b.Run(c.name, func(b *testing.B) {
			var nexts int
			next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { nexts++; return nil })
			w := &discardWriter{h: make(http.Header, 8)}
			// Requests are prepared in batches outside the timer, so that
			// the figures are the handler's alone.
			batch := make([]*http.Request, 0, 256)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if len(batch) == 0 {
					b.StopTimer()
					for range cap(batch) {
						r, _ := http.NewRequest(http.MethodGet, "http://127.0.0.1/proxy/bench/users/1?x=1", nil)
						r.RemoteAddr = "127.0.0.1:40000"
						r.Header["X-Api-Key"] = []string{key}
						batch = append(batch, caddyhttp.PrepareRequest(r, caddy.NewReplacer(), w, srv))
					}
					b.StartTimer()
				}
				r := batch[len(batch)-1]
				batch = batch[:len(batch)-1]
				clear(w.h)
				w.status = 0
				if err := c.h.ServeHTTP(w, r, next); err != nil {
					b.Fatal(err)
				}
				if c.forward && w.status != http.StatusOK {
					b.Fatalf("status %d", w.status)
				}
			}
			if !c.forward && nexts != b.N {
				b.Fatalf("next called %d times in %d requests", nexts, b.N)
			}
		})
	}
}

func loadBenchConfig(b *testing.B, caddyfile string) {
	raw, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		b.Fatal(err)
	}
	if err := caddy.Load(raw, true); err != nil {
		b.Fatal(err)
	}
}

// discardWriter is a reusable ResponseWriter that drops the body.
type discardWriter struct {
	h      http.Header
	status int
}

func (w *discardWriter) Header() http.Header { return w.h }
func (w *discardWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
}
func (w *discardWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return len(p), nil
}
