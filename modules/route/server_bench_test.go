package route_test

import (
	"net/http"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// BenchmarkServer is a whole request through Caddy's server (its request
// preparation, the site's route, the byteproxy handler, the loopback round
// trip to an in-process upstream) in the load bench's three gateway
// configurations (cmd/byteproxy-bench): "bare" is the services path (no
// key required, no limits), "pipeline" adds a required proxy key and a
// client and a service rate limit, "pipeline_caddy_metrics" adds Caddy's
// `metrics` global option, which the bench's full pipeline has on. The
// differences say what the pipeline costs and which part of it is Caddy's.
//
//	go test -run '^$' -bench BenchmarkServer -benchmem -count 5 ./modules/route/
func BenchmarkServer(b *testing.B) {
	up := benchUpstream(b)
	b.Cleanup(func() { _ = caddy.Stop() })
	for _, c := range []struct {
		name, global, key string
		limits            bool
	}{
		{name: "bare"},
		{name: "pipeline", key: benchKey, limits: true},
		{name: "pipeline_caddy_metrics", global: "metrics", key: benchKey, limits: true},
	} {
		b.Run(c.name, func(b *testing.B) {
			loadBenchConfig(b, benchCaddyfile(b.TempDir(), c.global, c.key, c.limits, up.URL, ""))
			httpApp, err := caddy.ActiveContext().App("http")
			if err != nil {
				b.Fatal(err)
			}
			var srv *caddyhttp.Server
			for _, s := range httpApp.(*caddyhttp.App).Servers {
				srv = s
			}
			w := &discardWriter{h: make(http.Header, 8)}
			serveBatched(b, w, func() *http.Request { return benchRequest(c.key) }, func(r *http.Request) {
				srv.ServeHTTP(w, r)
				if w.status != http.StatusOK {
					b.Fatalf("status %d", w.status)
				}
			})
		})
	}
}
