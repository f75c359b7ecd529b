package ratelimit

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/byteproxy/byteproxy/internal/metrics"
	"github.com/byteproxy/byteproxy/internal/testutil/redistest"
	"github.com/byteproxy/byteproxy/modules/gateway"
)

// benchHandler is a Handler with one service limit and, if clientMax > 0,
// a client limit, without Redis.
func benchHandler(b *testing.B, clientMax int) (*Handler, *serviceLimit) {
	rl := gateway.RateLimit{MaxRequests: 1 << 62, Window: caddy.Duration(time.Hour)}
	sl := &serviceLimit{limit: rl, win: newWindow(rl.MaxRequests, time.Hour)}
	h := &Handler{}
	h.windows.Store(&map[string]*serviceLimit{"svc": sl})
	if clientMax > 0 {
		h.clientMax, h.clientWindow = clientMax, time.Nanosecond // refills at once: always admitted
		h.clients = newBucketStore(clientMax, time.Nanosecond)
	}
	return h, sl
}

// The in-memory service decision of a request: find the service's window
// (lock-free map) and count the request in it.
func BenchmarkServiceDecisionMemory(b *testing.B) {
	h, _ := benchHandler(b, 0)
	r := httptest.NewRequest(http.MethodGet, "/proxy/svc/x", nil)
	limit := &gateway.RateLimit{MaxRequests: 1 << 62, Window: caddy.Duration(time.Hour)}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			now := time.Now()
			v := h.decide(r, now, h.serviceLimitFor("svc", limit))
			if v.refused != "" {
				b.Fatal("refused")
			}
		}
	})
}

// The same decision with a client limit too: the consumer's token bucket
// (one of 1024 consumers) checked first.
func BenchmarkClientAndServiceDecisionMemory(b *testing.B) {
	h, sl := benchHandler(b, 1<<30)
	reqs := make([]*http.Request, 1024)
	for i := range reqs {
		r := httptest.NewRequest(http.MethodGet, "/proxy/svc/x", nil)
		ctx := context.WithValue(r.Context(), caddyhttp.VarsCtxKey, map[string]any{gateway.VarClient: "key-" + strconv.Itoa(i)})
		reqs[i] = r.WithContext(ctx)
	}
	var seq atomic.Uint64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := seq.Add(1) * 7919
		for pb.Next() {
			i++
			if v := h.decide(reqs[i%1024], time.Now(), sl); v.refused != "" {
				b.Fatal("refused")
			}
		}
	})
}

// The client bucket alone.
func BenchmarkClientBucket(b *testing.B) {
	s := newBucketStore(1<<30, time.Nanosecond)
	keys := make([]clientKey, 1024)
	for i := range keys {
		keys[i] = clientKey{kindIP, "10.0." + strconv.Itoa(i>>8) + "." + strconv.Itoa(i&255)}
	}
	var seq atomic.Uint64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := seq.Add(1) * 7919
		for pb.Next() {
			i++
			if !s.admit(time.Now(), keys[i%1024], 1, nil).ok {
				b.Fatal("refused")
			}
		}
	})
}

// The fixed window alone, all goroutines on one service.
func BenchmarkWindowTake(b *testing.B) {
	w := newWindow(1<<62, time.Hour)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			w.take(time.Now(), 1)
		}
	})
}

// Writing the RateLimit and RateLimit-Policy headers of an admitted
// request (service and client limit).
func BenchmarkHeaders(b *testing.B) {
	now := time.Now()
	h := &Handler{clientPolicy: policyMember(metrics.LimitClient, 600, time.Minute)}
	v := verdict{
		service:   &serviceLimit{limit: gateway.RateLimit{MaxRequests: 100, Window: caddy.Duration(time.Minute)}, policy: `"service";q=100;w=60, ` + h.clientPolicy},
		window:    windowState{ok: true, remaining: 42, end: now.Add(time.Minute)},
		hasClient: true,
		bucket:    bucketState{ok: true, remaining: 599, full: time.Second},
	}
	hdr := http.Header{}
	b.ReportAllocs()
	for b.Loop() {
		h.setHeaders(hdr, &v, now)
	}
}

// One decision in Redis (service window, and service window plus client
// bucket): one round trip to a local redis-server.
func BenchmarkRedisDecision(b *testing.B) {
	url := redistest.BenchURL(b)
	s, err := newRedisStore(url, nopLogger(), defaultRedisTimings)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Destruct()
	svc := redisServiceKey(uniqueName("bench"), 1<<50, time.Hour)
	prefix := redisClientPrefix(1<<30, time.Hour)
	ctx := context.Background()
	b.Run("service", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if rep, err := s.decide(ctx, "", 0, 0, svc, 1<<50, time.Hour); err != nil || rep.verdict != 0 {
					b.Fatal(rep, err)
				}
			}
		})
	})
	b.Run("client+service", func(b *testing.B) {
		var seq atomic.Uint64
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := seq.Add(1) * 7919
			for pb.Next() {
				i++
				ck := prefix + "k:bench" + strconv.FormatUint(i%1024, 10)
				if rep, err := s.decide(ctx, ck, 1<<30, time.Hour, svc, 1<<50, time.Hour); err != nil || rep.verdict != 0 {
					b.Fatal(rep, err)
				}
			}
		})
	})
}
