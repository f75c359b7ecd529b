package auth

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/byteproxy/byteproxy/modules/gateway"
)

var benchKeys = []string{proxyKey, proxyKey2, mgmtKey}

// BenchmarkCheck measures the key check alone: reading the credentials of
// a request and comparing them with every key of the scope.
func BenchmarkCheck(b *testing.B) {
	for _, n := range []int{1, 3} {
		for _, tc := range []struct {
			name, key string
		}{
			{"match", benchKeys[n-1]}, // the last key: every key is compared anyway
			{"mismatch", proxyKey[:len(proxyKey)-1] + "X"},
		} {
			b.Run(tc.name+"/keys="+string(rune('0'+n)), func(b *testing.B) {
				h := newHandler(gateway.ScopeProxy, gateway.Scope{Keys: benchKeys[:n], Required: true}, true)
				r := httptest.NewRequest(http.MethodGet, "/proxy/svc/x?a=1", nil)
				r.Header.Set("Authorization", "Bearer "+tc.key)
				want := -1
				if tc.name == "match" {
					want = n - 1
				}
				b.ReportAllocs()
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if got := h.check(readCredentials(r, h.queryKey)); got != want {
							b.Fatalf("check = %d, want %d", got, want)
						}
					}
				})
			})
		}
	}
}

// BenchmarkServeHTTP measures the whole handler on an authenticated request
// (check, request variable, stripping), the next handler doing nothing.
func BenchmarkServeHTTP(b *testing.B) {
	for _, n := range []int{1, 3} {
		b.Run("keys="+string(rune('0'+n)), func(b *testing.B) {
			h := &Handler{Scope: gateway.ScopeProxy}
			h.setup(&gateway.Scope{Keys: benchKeys[:n], Required: true}, true, zap.NewNop(), nil)
			next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				w := httptest.NewRecorder()
				vals := []string{benchKeys[n-1]}
				r := &http.Request{Method: http.MethodGet, URL: benchURL, Header: http.Header{}}
				r = r.WithContext(context.WithValue(context.Background(), caddyhttp.VarsCtxKey, map[string]any{}))
				for pb.Next() {
					// The handler removes the key: put it back each time.
					r.Header["X-Api-Key"] = vals
					if err := h.ServeHTTP(w, r, next); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}

var benchURL = mustURL("/proxy/svc/x?a=1")

func mustURL(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}
