package services

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	"go.uber.org/zap"

	"github.com/byteproxy/byteproxy/internal/budget"
	discordsim "github.com/byteproxy/byteproxy/internal/upstreamsim/discord"
	"github.com/byteproxy/byteproxy/modules/gateway"
)

// benchUpstream answers every request with a small JSON body, as a typical
// API call would.
func benchUpstream(b *testing.B) *httptest.Server {
	body := []byte(`{"id":1,"name":"small response","ok":true}`)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	}))
	srv.Config.ErrorLog = nil
	b.Cleanup(srv.Close)
	return srv
}

func benchService(b *testing.B, base string) *gateway.Service {
	return testService(b, gateway.ServiceConfig{
		BaseURL:  base + "/api/",
		Versions: map[string]string{"v10": base + "/api/v10/"},
		Headers:  map[string]string{"User-Agent": "ByteProxy-bench", "Accept": "application/json"},
		Auth:     &gateway.ServiceAuth{Type: "bot", Token: "bench-token"},
	})
}

// BenchmarkRewrite is the work the proxy adds to building the outgoing
// request: target URL, query, header rules and credential.
func BenchmarkRewrite(b *testing.B) {
	f := newForwarder(benchService(b, "http://127.0.0.1:1"), nil, zap.NewNop(), true)
	in, _ := http.NewRequest("GET", "http://gw/proxy/svc/v10/channels/123/messages?limit=50&before=99", nil)
	in.Header.Set("User-Agent", "client")
	in.Header.Set("Accept-Encoding", "gzip")
	out := in.Clone(in.Context())
	pr := &httputil.ProxyRequest{In: in, Out: out}
	b.ReportAllocs()
	for b.Loop() {
		f.rewrite(pr)
	}
}

var checkReq, _ = http.NewRequest("GET", "http://gw/proxy/svc/v10/channels/123/messages.json", nil)

// BenchmarkCheck is the per-request check before forwarding (GitHub
// hint, path rules, token).
func BenchmarkCheck(b *testing.B) {
	f := newForwarder(benchService(b, "http://127.0.0.1:1"), nil, zap.NewNop(), true)
	b.ReportAllocs()
	for b.Loop() {
		if s, _ := f.check(checkReq, "/v10/channels/123/messages.json"); s != 0 {
			b.Fatal(s)
		}
	}
}

// discardWriter is a reusable ResponseWriter that drops the body.
type discardWriter struct {
	h      http.Header
	status int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) WriteHeader(code int)        { w.status = code }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }

// BenchmarkForward is the handler's whole per-request path (check,
// rewrite, ReverseProxy over the service's Transport, response headers)
// against an in-process upstream on loopback. ns/op and allocs/op include
// the upstream server's own work.
func BenchmarkForward(b *testing.B) {
	up := benchUpstream(b)
	f := newForwarder(benchService(b, up.URL), nil, zap.NewNop(), true)
	b.ReportAllocs()
	b.SetParallelism(8)
	b.RunParallel(func(pb *testing.PB) {
		w := &discardWriter{h: make(http.Header, 8)}
		for pb.Next() {
			r, _ := http.NewRequest("GET", "http://gw/proxy/svc/v10/users/@me?with_counts=true", nil)
			clear(w.h)
			w.status = 0
			if s, _ := f.check(r, "/v10/users/@me"); s != 0 {
				b.Fatal(s)
			}
			f.ServeHTTP(w, r)
			if w.status != http.StatusOK {
				b.Fatalf("status %d", w.status)
			}
		}
	})
}

// BenchmarkForwardBudget is BenchmarkForward through an upstream budget
// that limits nothing: a service whose upstream describes no limits
// (generic), and a Discord route whose bucket is learned and has room (the
// global limit off). Compare with BenchmarkForward: the budget's
// decision allocates nothing; the discord case writes the consumer's share
// in RateLimit (a string and its slice).
func BenchmarkForwardBudget(b *testing.B) {
	for _, c := range []struct {
		name string
		cfg  budget.Config
		h    http.Header
	}{
		{"off", budget.Config{}, benchDiscordHeaders()}, // the discord case's upstream, no budget
		{"generic", budget.GenericConfig(), nil},
		// The global limit off: at 50 per second it binds a benchmark loop
		// (as in internal/budget's benchmarks).
		{"discord", func() budget.Config { c := budget.DiscordConfig(); c.GlobalLimit = 0; return c }(), benchDiscordHeaders()},
	} {
		b.Run(c.name, func(b *testing.B) {
			h := c.h
			body := []byte(`{"id":1,"name":"small response","ok":true}`)
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				for k, v := range h {
					w.Header()[k] = v
				}
				w.Header().Set("Content-Type", "application/json")
				_, _ = w.Write(body)
			}))
			b.Cleanup(up.Close)
			f := newForwarder(benchService(b, up.URL), nil, zap.NewNop(), true)
			if c.name != "off" {
				f.budget = &gateway.Budget{Engine: budget.New(c.cfg, budget.NewMemStore()), Credential: "cred-bench", Kind: c.cfg.Kind, MaxWait: c.cfg.MaxWait}
			}
			b.ReportAllocs()
			b.SetParallelism(8)
			b.RunParallel(func(pb *testing.PB) {
				w := &discardWriter{h: make(http.Header, 8)}
				for pb.Next() {
					r, _ := http.NewRequest("GET", "http://gw/proxy/svc/v10/channels/123456789012345678/messages", nil)
					clear(w.h)
					w.status = 0
					f.ServeHTTP(w, r)
					if w.status != http.StatusOK {
						b.Fatalf("status %d", w.status)
					}
				}
			})
		})
	}
}

// benchDiscordHeaders describe a bucket no benchmark exhausts.
func benchDiscordHeaders() http.Header {
	h := http.Header{}
	h.Set("X-RateLimit-Bucket", "abcd")
	h.Set("X-RateLimit-Limit", "1000000000")
	h.Set("X-RateLimit-Remaining", "999999999")
	h.Set("X-RateLimit-Reset", strconv.FormatFloat(float64(time.Now().Add(time.Hour).UnixMilli())/1000, 'f', 3, 64))
	h.Set("X-RateLimit-Reset-After", "3600.000")
	return h
}

// startBenchCaddy runs Caddy in this process with two servers in front of
// the same upstream: byteproxy_services and Caddy's own reverse_proxy.
func startBenchCaddy(b *testing.B) (gw, rp string) {
	up := benchUpstream(b)
	host := strings.TrimPrefix(up.URL, "http://")
	gwPort, rpPort := freePort(b), freePort(b)
	cfg := map[string]any{
		"admin":   map[string]any{"disabled": true},
		"logging": map[string]any{"logs": map[string]any{"default": map[string]any{"level": "ERROR"}}},
		"storage": map[string]any{"module": "file_system", "root": b.TempDir()},
		"apps": map[string]any{
			"byteproxy": map[string]any{"services": map[string]any{
				"bench": map[string]any{"base_url": up.URL + "/api/", "headers": map[string]string{"User-Agent": "bench"},
					"auth": map[string]string{"type": "bearer", "token": "bench-token"}},
				// The same with an upstream budget that limits nothing.
				"budget": map[string]any{"base_url": up.URL + "/api/", "headers": map[string]string{"User-Agent": "bench"},
					"auth": map[string]string{"type": "bearer", "token": "bench-token"}, "upstream_limits": map[string]any{}},
			}},
			"http": map[string]any{"servers": map[string]any{
				"gw": map[string]any{
					"listen":          []string{fmt.Sprintf("127.0.0.1:%d", gwPort)},
					"routes":          []any{map[string]any{"handle": []any{map[string]any{"handler": "byteproxy_services"}}}},
					"automatic_https": map[string]any{"disable": true},
				},
				"rp": map[string]any{
					"listen": []string{fmt.Sprintf("127.0.0.1:%d", rpPort)},
					"routes": []any{map[string]any{"handle": []any{map[string]any{
						"handler": "reverse_proxy", "upstreams": []any{map[string]string{"dial": host}},
						"rewrite": map[string]string{"uri": "/api{http.request.uri}"},
					}}}},
					"automatic_https": map[string]any{"disable": true},
				},
			}},
		},
	}
	raw, _ := json.Marshal(cfg)
	if err := caddy.Load(raw, true); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = caddy.Stop() })
	return fmt.Sprintf("http://127.0.0.1:%d", gwPort), fmt.Sprintf("http://127.0.0.1:%d", rpPort)
}

func freePort(b *testing.B) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// BenchmarkGateway compares small GETs through a whole Caddy server
// (in this process, over loopback): byteproxy_services versus Caddy's
// reverse_proxy to the same upstream (and byteproxy_services with an
// upstream budget that limits nothing). ns/op includes the client, Caddy and
// the upstream; the difference between the two is the proxies'.
func BenchmarkGateway(b *testing.B) {
	gw, rp := startBenchCaddy(b)
	for _, c := range []struct{ name, url string }{
		{"byteproxy_services", gw + "/proxy/bench/users/1?x=1"},
		{"byteproxy_services_budget", gw + "/proxy/budget/users/1?x=1"},
		{"caddy_reverse_proxy", rp + "/users/1?x=1"},
	} {
		b.Run(c.name, func(b *testing.B) {
			tr := &http.Transport{MaxIdleConnsPerHost: 256, DisableCompression: true}
			defer tr.CloseIdleConnections()
			cl := &http.Client{Transport: tr, Timeout: 10 * time.Second}
			b.ReportAllocs()
			b.SetParallelism(16)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					resp, err := cl.Get(c.url)
					if err != nil {
						b.Fatal(err)
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						b.Fatalf("status %d", resp.StatusCode)
					}
				}
			})
		})
	}
}

// BenchmarkForwardBudgetSim is cmd/byteproxy-bench's -upstream-sim discord
// -budgets comparison in one process: the forwarder against the Discord
// simulator (real X-RateLimit-* headers, 1s windows that roll over, limits
// that never bind) on GET /v10/channels/{id}/messages, with the budget off
// and on (the Discord engine with the bench's global_limit 100000 100ms).
// The difference between the two is the budget's whole cost per request;
// compare CPU profiles with go tool pprof -diff_base.
func BenchmarkForwardBudgetSim(b *testing.B) {
	for _, name := range []string{"off", "on"} {
		b.Run(name, func(b *testing.B) {
			sim, err := discordsim.NewHandler(benchSimConfig("bench-token"))
			if err != nil {
				b.Fatal(err)
			}
			up := httptest.NewServer(sim)
			up.Config.ErrorLog = nil
			b.Cleanup(up.Close)
			f := newForwarder(benchService(b, up.URL), nil, zap.NewNop(), true)
			var e *budget.Engine
			if name == "on" {
				cfg := budget.DiscordConfig()
				cfg.GlobalLimit, cfg.GlobalWindow = 100000, 100*time.Millisecond
				e = budget.New(cfg, budget.NewMemStore())
				f.budget = &gateway.Budget{Engine: e, Credential: "cred-bench", Kind: cfg.Kind, MaxWait: cfg.MaxWait}
			}
			const path = "http://gw/proxy/svc/v10/channels/100000000000000001/messages"
			// The first answer teaches the engine the route's bucket (until
			// then one request at a time), as the bench's warmup does.
			w := &discardWriter{h: make(http.Header, 8)}
			r, _ := http.NewRequest("GET", path, nil)
			if f.ServeHTTP(w, r); w.status != http.StatusOK {
				b.Fatalf("status %d", w.status)
			}
			b.ReportAllocs()
			b.ResetTimer()
			b.SetParallelism(8)
			b.RunParallel(func(pb *testing.PB) {
				w := &discardWriter{h: make(http.Header, 8)}
				for pb.Next() {
					r, _ := http.NewRequest("GET", path, nil)
					clear(w.h)
					w.status = 0
					f.ServeHTTP(w, r)
					if w.status != http.StatusOK {
						b.Fatalf("status %d", w.status)
					}
				}
			})
			b.StopTimer()
			if st := sim.Stats(); st.Upstream429s() != 0 {
				b.Fatalf("the simulator answered %d 429s", st.Upstream429s())
			}
			if e != nil {
				if st := e.Stats(); st.Held != 0 || st.Refused != 0 {
					b.Fatalf("the budget held %d and refused %d requests: a limit bound", st.Held, st.Refused)
				}
			}
		})
	}
}

// benchSimConfig is cmd/byteproxy-bench's simulator (simConfig): Discord's
// routes with limits that never bind.
func benchSimConfig(token string) discordsim.Config {
	buckets := discordsim.FastBuckets()
	for h, bk := range buckets {
		bk.Limit, bk.Window = 1000000, time.Second
		buckets[h] = bk
	}
	return discordsim.Config{
		Tokens: []string{token}, GlobalLimit: 100000, GlobalWindow: 100 * time.Millisecond,
		Buckets: buckets, Body: `{"id":1,"name":"small response","ok":true}`, NoArrivals: true, BanThreshold: 1 << 30,
	}
}
