package cors

import (
	"net/http"
	"testing"

	"github.com/byteproxy/byteproxy/modules/gateway"
)

// benchWriter is a ResponseWriter that keeps nothing, so a benchmark
// measures the handler, not the recorder.
type benchWriter struct{ h http.Header }

func (w *benchWriter) Header() http.Header         { return w.h }
func (w *benchWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *benchWriter) WriteHeader(int)             {}

func benchCORS(b *testing.B, c *gateway.CORSConfig, method string, headers ...string) {
	h := newHandler(b, c)
	next := nextFunc(func(w http.ResponseWriter, _ *http.Request) error {
		w.WriteHeader(http.StatusOK)
		return nil
	})
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		r, _ := http.NewRequest(method, "http://gw/proxy/svc/x", nil)
		for i := 0; i+1 < len(headers); i += 2 {
			r.Header.Set(headers[i], headers[i+1])
		}
		w := &benchWriter{h: http.Header{}}
		for pb.Next() {
			clear(w.h)
			if err := h.ServeHTTP(w, r, next); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkCORS(b *testing.B) {
	list := &gateway.CORSConfig{Origins: []string{"https://a.example", "https://b.example"}}
	b.Run("any_origin/no_origin_header", func(b *testing.B) { benchCORS(b, nil, "GET") })
	b.Run("any_origin/browser", func(b *testing.B) { benchCORS(b, nil, "GET", "Origin", "https://x.example") })
	b.Run("list/allowed", func(b *testing.B) { benchCORS(b, list, "GET", "Origin", "https://b.example") })
	b.Run("list/disallowed", func(b *testing.B) { benchCORS(b, list, "GET", "Origin", "https://evil.example") })
	b.Run("list/preflight", func(b *testing.B) {
		benchCORS(b, list, "OPTIONS", "Origin", "https://a.example", "Access-Control-Request-Method", "POST")
	})
	b.Run("off", func(b *testing.B) {
		benchCORS(b, &gateway.CORSConfig{Disabled: true}, "GET", "Origin", "https://x.example")
	})
}
