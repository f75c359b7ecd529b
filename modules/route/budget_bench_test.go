package route_test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	discordsim "github.com/byteproxy/byteproxy/internal/upstreamsim/discord"
)

// BenchmarkBudgetSim is cmd/byteproxy-bench -upstream-sim discord -budgets
// without the load generator's processes: the whole gateway
// (http.handlers.byteproxy, provisioned by Caddy from the bench's
// Caddyfile) in front of the Discord simulator (real X-RateLimit-*
// headers, 1s windows, limits that never bind) on GET
// /v10/channels/{id}/messages, for the discord preset with its upstream
// budget off ("off") and on with the bench's global_limit 100000 100ms
// ("on"). The difference is the budget's cost per request (issue 14:
// within 5%); -cpuprofile of each, compared with go tool pprof
// -diff_base, says where it goes.
//
//	go test -run '^$' -bench BenchmarkBudgetSim -benchmem -count 5 ./modules/route/
func BenchmarkBudgetSim(b *testing.B) {
	sim := startBudgetSim(b, 0)
	ctx := caddy.ActiveContext()
	httpApp, err := ctx.App("http")
	if err != nil {
		b.Fatal(err)
	}
	var srv *caddyhttp.Server
	for _, s := range httpApp.(*caddyhttp.App).Servers {
		srv = s
	}
	m, err := ctx.LoadModuleByID("http.handlers.byteproxy", []byte(`{}`))
	if err != nil {
		b.Fatal(err)
	}
	h := m.(caddyhttp.MiddlewareHandler)
	next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })
	for _, name := range []string{"off", "on"} {
		b.Run(name, func(b *testing.B) {
			url := "http://127.0.0.1/proxy/" + name + "/v10/channels/100000000000000001/messages"
			w := &discardWriter{h: make(http.Header, 16)}
			serve := func(r *http.Request) {
				clear(w.h)
				w.status = 0
				if err := h.ServeHTTP(w, r, next); err != nil {
					b.Fatal(err)
				}
				if w.status != http.StatusOK {
					b.Fatalf("status %d", w.status)
				}
			}
			prepare := func() *http.Request {
				r, _ := http.NewRequest(http.MethodGet, url, nil)
				r.RemoteAddr = "127.0.0.1:40000"
				return caddyhttp.PrepareRequest(r, caddy.NewReplacer(), w, srv)
			}
			// The first answer teaches the budget the route's bucket, as
			// the load bench's warmup does.
			serve(prepare())
			batch := make([]*http.Request, 0, 256)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if len(batch) == 0 {
					b.StopTimer()
					for range cap(batch) {
						batch = append(batch, prepare())
					}
					b.StartTimer()
				}
				r := batch[len(batch)-1]
				batch = batch[:len(batch)-1]
				serve(r)
			}
		})
	}
	if n := sim.Stats().Upstream429s(); n != 0 {
		b.Fatalf("the simulator answered %d 429s", n)
	}
}

// BenchmarkBudgetSimServer is BenchmarkBudgetSim through Caddy's server
// on loopback with 16 concurrent clients per core, as the load bench
// drives it: ns/op and the profile include the client and Caddy's server,
// and show what concurrency adds (locks shared by the requests of one
// credential).
func BenchmarkBudgetSimServer(b *testing.B) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	sim := startBudgetSim(b, port)
	for _, name := range []string{"off", "on"} {
		b.Run(name, func(b *testing.B) {
			url := fmt.Sprintf("http://127.0.0.1:%d/proxy/%s/v10/channels/100000000000000001/messages", port, name)
			tr := &http.Transport{MaxIdleConnsPerHost: 256, DisableCompression: true}
			defer tr.CloseIdleConnections()
			cl := &http.Client{Transport: tr, Timeout: 10 * time.Second}
			get := func() error {
				resp, err := cl.Get(url)
				if err != nil {
					return err
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					return fmt.Errorf("status %d", resp.StatusCode)
				}
				return nil
			}
			if err := get(); err != nil { // teaches the route's bucket
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			b.SetParallelism(16)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := get(); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
	if n := sim.Stats().Upstream429s(); n != 0 {
		b.Fatalf("the simulator answered %d 429s", n)
	}
}

// startBudgetSim runs the simulator and Caddy with the two services
// (the site on port, 0: any).
func startBudgetSim(b *testing.B, port int) *discordsim.Server {
	const token = "bench-sim-token"
	buckets := discordsim.FastBuckets()
	for h, bk := range buckets {
		bk.Limit, bk.Window = 1000000, time.Second
		buckets[h] = bk
	}
	sim, err := discordsim.NewHandler(discordsim.Config{
		Tokens: []string{token}, GlobalLimit: 100000, GlobalWindow: 100 * time.Millisecond,
		Buckets: buckets, Body: `{"id":1,"name":"small response","ok":true}`, NoArrivals: true, BanThreshold: 1 << 30,
	})
	if err != nil {
		b.Fatal(err)
	}
	up := httptest.NewServer(sim)
	b.Cleanup(up.Close)
	loadBenchConfig(b, fmt.Sprintf(`{
	admin off
	auto_https off
	persist_config off
	log default {
		level ERROR
	}
	storage file_system %[1]s
	byteproxy {
		auth proxy {
			required false
		}
		service off discord {
			base_url %[2]s/api/
			auth bot %[3]s
			rate_limit 100000000 1m
			upstream_limits off
		}
		service on discord {
			base_url %[2]s/api/
			auth bot %[3]s
			rate_limit 100000000 1m
			upstream_limits {
				global_limit 100000 100ms
			}
		}
	}
}

http://127.0.0.1:%[4]d {
	byteproxy
}
`, b.TempDir(), up.URL, token, port))
	b.Cleanup(func() { _ = caddy.Stop() })
	return sim
}
