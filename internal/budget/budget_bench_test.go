package budget

import (
	"context"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/byteproxy/byteproxy/internal/testutil/redistest"
)

// The cost of a decision when nothing is limited: a generic service that
// described no limits, and a Discord route whose bucket is learned and
// has room (global limit off: it binds at 50 per second, which a
// benchmark loop would hit). Reserve alone is the decision the forwarder
// waits on before sending; Reserve+Done is the whole per-request cost.

func benchEngine(b *testing.B, cfg Config, path string, h http.Header) (*Engine, Request) {
	return benchEngineOn(b, NewMemStore(), cfg, path, h)
}

func benchEngineOn(b *testing.B, store Store, cfg Config, path string, h http.Header) (*Engine, Request) {
	e := New(cfg, store)
	req := Request{Credential: "cred-bench", Method: "GET", Path: path, Consumer: "key-1"}
	// Teach the engine the route (a probe and its answer).
	t, err := e.Reserve(context.Background(), req)
	if err != nil {
		b.Fatal(err)
	}
	e.Done(&t, 200, h)
	return e, req
}

func discordRoomHeader() http.Header {
	h := http.Header{}
	h.Set("X-RateLimit-Bucket", "abcd")
	h.Set("X-RateLimit-Limit", "1000000000")
	h.Set("X-RateLimit-Remaining", "999999999")
	reset := time.Now().Add(time.Hour)
	h.Set("X-RateLimit-Reset", strconv.FormatFloat(float64(reset.UnixMilli())/1000, 'f', 3, 64))
	h.Set("X-RateLimit-Reset-After", "3600.000")
	return h
}

func benchCases(b *testing.B) map[string]struct {
	cfg  Config
	path string
	h    http.Header
} {
	discord := DiscordConfig()
	discord.GlobalLimit = 0
	// cmd/byteproxy-bench -budgets -upstream-sim discord: the global limit
	// on, as there, but ten times higher (1,000,000 per 100ms) so that a
	// benchmark loop cannot reach it.
	global := DiscordConfig()
	global.GlobalLimit, global.GlobalWindow = 1000000, 100*time.Millisecond
	return map[string]struct {
		cfg  Config
		path string
		h    http.Header
	}{
		"generic":        {GenericConfig(), "/v1/items", http.Header{}},
		"discord":        {discord, "/api/v10/channels/123456789012345678/messages", discordRoomHeader()},
		"discord-global": {global, "/api/v10/channels/123456789012345678/messages", discordRoomHeader()},
	}
}

// BenchmarkReserveCancel is the decision and its release, without a
// response to read.
func BenchmarkReserveCancel(b *testing.B) {
	for name, c := range benchCases(b) {
		b.Run(name, func(b *testing.B) {
			e, req := benchEngine(b, c.cfg, c.path, c.h)
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				t, err := e.Reserve(ctx, req)
				if err != nil {
					b.Fatal(err)
				}
				e.Cancel(&t)
			}
		})
	}
}

func BenchmarkReserveDone(b *testing.B) {
	for name, c := range benchCases(b) {
		b.Run(name, func(b *testing.B) {
			e, req := benchEngine(b, c.cfg, c.path, c.h)
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				t, err := e.Reserve(ctx, req)
				if err != nil {
					b.Fatal(err)
				}
				e.Done(&t, 200, c.h)
			}
		})
	}
}

func BenchmarkReserveDoneParallel(b *testing.B) {
	for name, c := range benchCases(b) {
		b.Run(name, func(b *testing.B) {
			e, req := benchEngine(b, c.cfg, c.path, c.h)
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					t, err := e.Reserve(ctx, req)
					if err != nil {
						b.Fatal(err)
					}
					e.Done(&t, 200, c.h)
				}
			})
		})
	}
}

// The same decisions on the cluster store: one round trip to Redis (one
// Lua script) for Reserve and one for Done or Cancel, next to the
// in-memory ones above. Needs BYTEPROXY_TEST_REDIS (loopback Redis).

func BenchmarkRedisReserveCancel(b *testing.B) {
	benchRedis(b, func(e *Engine, t *Ticket, _ http.Header) { e.Cancel(t) })
}

func BenchmarkRedisReserveDone(b *testing.B) {
	benchRedis(b, func(e *Engine, t *Ticket, h http.Header) { e.Done(t, 200, h) })
}

func benchRedis(b *testing.B, settle func(*Engine, *Ticket, http.Header)) {
	url := redistest.BenchURL(b)
	for name, c := range benchCases(b) {
		b.Run(name, func(b *testing.B) {
			s := testPatientStore(b, url, testPrefix(), nil)
			e, req := benchEngineOn(b, s, c.cfg, c.path, c.h)
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				t, err := e.Reserve(ctx, req)
				if err != nil {
					b.Fatal(err)
				}
				settle(e, &t, c.h)
			}
			b.StopTimer()
			if st := s.Stats(); !st.Up || st.Local != 0 {
				b.Fatalf("decided in memory: %+v", st)
			}
		})
	}
}

// TestDecisionAllocatesNothing guards the benchmarks' claim in the normal
// test run: no allocation per decision when nothing is limited.
func TestDecisionAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	discord := DiscordConfig()
	discord.GlobalLimit = 0
	// cmd/byteproxy-bench -budgets -upstream-sim discord: the global limit
	// on, as there, but ten times higher (1,000,000 per 100ms) so that a
	// benchmark loop cannot reach it.
	global := DiscordConfig()
	global.GlobalLimit, global.GlobalWindow = 1000000, 100*time.Millisecond
	for name, c := range map[string]struct {
		cfg  Config
		path string
		h    http.Header
	}{
		"generic":        {GenericConfig(), "/v1/items", http.Header{}},
		"discord":        {discord, "/api/v10/channels/123456789012345678/messages", discordRoomHeader()},
		"discord-global": {global, "/api/v10/channels/123456789012345678/messages", discordRoomHeader()},
	} {
		e := New(c.cfg, NewMemStore())
		req := Request{Credential: "cred", Method: "GET", Path: c.path, Consumer: "k"}
		ctx := context.Background()
		tk, _ := e.Reserve(ctx, req)
		e.Done(&tk, 200, c.h)
		allocs := testing.AllocsPerRun(200, func() {
			tk, err := e.Reserve(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			e.Done(&tk, 200, c.h)
		})
		if allocs != 0 {
			t.Errorf("%s: %.1f allocations per Reserve+Done", name, allocs)
		}
	}
}
