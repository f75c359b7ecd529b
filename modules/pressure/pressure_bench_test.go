package pressure

import (
	"net/http"
	"testing"

	"go.uber.org/zap"

	"github.com/byteproxy/byteproxy/modules/gateway"
)

// benchWriter is a ResponseWriter that keeps nothing, so a benchmark
// measures the handler, not the recorder.
type benchWriter struct{ h http.Header }

func (w *benchWriter) Header() http.Header         { return w.h }
func (w *benchWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *benchWriter) WriteHeader(int)             {}

// benchHandler measures ServeHTTP on the hot path: one atomic snapshot
// load, plus the in-flight counter when max_in_flight is set. The monitor
// samples in the background meanwhile (every 10ms here, 1s by default).
func benchHandler(b *testing.B, c gateway.PressureConfig) {
	mon, err := Open()
	if err != nil {
		b.Fatal(err)
	}
	defer mon.Close()
	l := mon.acquire(testSettings(b, c))
	defer mon.release(l)
	h := &Handler{app: new(gateway.App), mon: mon, logger: zap.NewNop()}
	next := nextFunc(func(http.ResponseWriter, *http.Request) error { return nil })
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		r, _ := http.NewRequest("GET", "http://gw/proxy/svc/x", nil)
		w := &benchWriter{h: http.Header{}}
		for pb.Next() {
			if err := h.ServeHTTP(w, r, next); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkPressureCheck(b *testing.B) {
	b.Run("calm", func(b *testing.B) { benchHandler(b, gateway.PressureConfig{}) })
	b.Run("calm_max_in_flight", func(b *testing.B) { benchHandler(b, gateway.PressureConfig{MaxInFlight: 1 << 20}) })
	b.Run("shedding", func(b *testing.B) { benchHandler(b, gateway.PressureConfig{MaxHeap: 1}) })
}

// BenchmarkSample is the cost of one sample, paid once per interval by
// the monitor, never by a request.
func BenchmarkSample(b *testing.B) {
	sm := newSampler()
	b.ReportAllocs()
	for b.Loop() {
		sm.take()
	}
}
