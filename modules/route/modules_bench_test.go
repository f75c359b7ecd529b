package route_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

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
// cpu-ns/op is the process's CPU time per request (reportCPU), the
// figure to compare on a busy machine for the forwarding cases (the
// clock's granularity drowns the sub-microsecond handlers).
//
//	go test -run '^$' -bench 'BenchmarkModules|BenchmarkRoute' -benchmem -count 5 -benchtime 0.5s ./modules/route/
func BenchmarkModules(b *testing.B) {
	up := benchUpstream(b)
	loadBenchConfig(b, benchCaddyfile(b.TempDir(), "", benchKey, true, up.URL, `pressure {
			max_sched_latency 1h
			max_cpu 1
		}`))
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
			serveBatched(b, w, func() *http.Request {
				r := benchRequest(benchKey)
				return caddyhttp.PrepareRequest(r, caddy.NewReplacer(), w, srv)
			}, func(r *http.Request) {
				if err := c.h.ServeHTTP(w, r, next); err != nil {
					b.Fatal(err)
				}
				if c.forward && w.status != http.StatusOK {
					b.Fatalf("status %d", w.status)
				}
			})
			if !c.forward && nexts != b.N {
				b.Fatalf("next called %d times in %d requests", nexts, b.N)
			}
		})
	}
}

// benchKey is the benchmarks' proxy key.
const benchKey = "pk-LIVE-7f3a9c2e1b5d4e6f8a0b1c2d3e4f5a6b"

// benchUpstream answers every request with a small JSON body.
func benchUpstream(b *testing.B) *httptest.Server {
	body := []byte(`{"id":1,"name":"small response","ok":true}`)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	}))
	b.Cleanup(up.Close)
	return up
}

// benchCaddyfile is the benchmarks' config: one service, bench, at upURL,
// with storage in dir, global options global, the proxy key key required
// (none required when ""), a client and a service rate limit that never
// binds if limits, and extra lines in the byteproxy block.
func benchCaddyfile(dir, global, key string, limits bool, upURL, extra string) string {
	auth, clientLimit, serviceLimit := "required false", "", ""
	if key != "" {
		auth = "key " + key + "\n\t\t\trequired true"
	}
	if limits {
		clientLimit, serviceLimit = "client_rate_limit 100000000 1m", "rate_limit 100000000 1m"
	}
	return fmt.Sprintf(`{
	admin off
	auto_https off
	persist_config off
	%s
	log default {
		level ERROR
	}
	storage file_system %s
	byteproxy {
		auth proxy {
			%s
		}
		%s
		%s
		service bench {
			base_url %s/
			%s
		}
	}
}

http://127.0.0.1:0 {
	byteproxy
}
`, global, dir, auth, clientLimit, extra, upURL, serviceLimit)
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

// benchRequest is the benchmarks' request, with the proxy key if not "".
func benchRequest(key string) *http.Request {
	r, _ := http.NewRequest(http.MethodGet, "http://127.0.0.1/proxy/bench/users/1?x=1", nil)
	r.RemoteAddr = "127.0.0.1:40000"
	if key != "" {
		r.Header["X-Api-Key"] = []string{key}
	}
	return r
}

// serveBatched calls serve b.N times on requests from prepare, made in
// batches outside the timer so that the figures are serve's alone, with
// w's header and status cleared before each; it reports cpu-ns/op.
func serveBatched(b *testing.B, w *discardWriter, prepare func() *http.Request, serve func(*http.Request)) {
	batch := make([]*http.Request, 0, 256)
	var prep time.Duration // CPU spent preparing requests
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := processCPU()
	for i := 0; i < b.N; i++ {
		if len(batch) == 0 {
			b.StopTimer()
			p0 := processCPU()
			for range cap(batch) {
				batch = append(batch, prepare())
			}
			prep += processCPU() - p0
			b.StartTimer()
		}
		r := batch[len(batch)-1]
		batch = batch[:len(batch)-1]
		clear(w.h)
		w.status = 0
		serve(r)
	}
	reportCPU(b, processCPU()-cpu0-prep)
}

// reportCPU reports cpu, the process's CPU time in the timed loop, per
// operation as cpu-ns/op: unlike ns/op it leaves out time spent waiting
// for a core, so runs on a loaded machine can be compared. It includes
// the in-process upstream's work and the garbage collector's.
func reportCPU(b *testing.B, cpu time.Duration) {
	if cpu > 0 {
		b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
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
