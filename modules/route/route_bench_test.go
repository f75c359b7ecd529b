package route

import (
	"net/http"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// BenchmarkRoute is the byteproxy handler's own work on a proxy request:
// the recover guard, the route by path and the compiled chain, every
// byteproxy_* handler in it doing nothing but call next (services, the
// last, answers nothing).
func BenchmarkRoute(b *testing.B) {
	pass := mwFunc(func(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
		return next.ServeHTTP(w, r)
	})
	mods := map[string]caddyhttp.MiddlewareHandler{}
	for _, name := range []string{"cors", "pressure", "ratelimit", "services", "manage", "auth_proxy", "auth_management"} {
		mods[name] = pass
	}
	var served int
	mods["services"] = mwFunc(func(http.ResponseWriter, *http.Request, caddyhttp.Handler) error { served++; return nil })
	h := &Handler{logger: zap.NewNop()}
	h.compile(mods)
	r, _ := http.NewRequest(http.MethodGet, "http://gw/proxy/bench/users/1?x=1", nil)
	var w http.ResponseWriter
	b.ReportAllocs()
	for b.Loop() {
		if err := h.ServeHTTP(w, r, nil); err != nil {
			b.Fatal(err)
		}
	}
	if served != b.N {
		b.Fatalf("%d of %d requests reached services", served, b.N)
	}
}
