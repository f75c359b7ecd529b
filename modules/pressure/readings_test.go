package pressure

import (
	"math"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/byteproxy/byteproxy/modules/gateway"
)

func mustResolve(t testing.TB, c *gateway.PressureConfig) *settings {
	t.Helper()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	return resolve(c)
}

func TestEvaluate(t *testing.T) {
	t.Parallel()
	s := mustResolve(t, &gateway.PressureConfig{
		MaxHeap: 100, MaxRSS: 200, MaxSchedLatency: caddy.Duration(10 * time.Millisecond), MaxCPU: 0.5,
	})
	calm := reading{heap: 100, rss: 200, sched: 10 * time.Millisecond, cpu: 0.5, healthy: true, healthCode: 200}
	tests := []struct {
		name  string
		edit  func(*reading)
		typ   string
		value float64
		limit float64
	}{
		{"at every limit is calm", func(*reading) {}, "", 0, 0},
		{"heap", func(r *reading) { r.heap = 101 }, TypeHeap, 101, 100},
		{"rss", func(r *reading) { r.rss = 201 }, TypeRSS, 201, 200},
		{"rss not measured", func(r *reading) { r.rss = 0 }, "", 0, 0},
		{"scheduler latency in ms", func(r *reading) { r.sched = 15 * time.Millisecond }, TypeSched, 15, 10},
		{"cpu", func(r *reading) { r.cpu = 0.75 }, TypeCPU, 0.75, 0.5},
		{"health check down", func(r *reading) { r.healthy, r.healthCode = false, 0 }, TypeHealthCheck, 0, 0},
		{"health check 500", func(r *reading) { r.healthy, r.healthCode = false, 500 }, TypeHealthCheck, 500, 0},
		{"heap wins over cpu", func(r *reading) { r.heap, r.cpu = 101, 0.9 }, TypeHeap, 101, 100},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := calm
			tc.edit(&r)
			e := evaluate(r, s)
			if tc.typ == "" {
				if e != nil {
					t.Fatalf("want calm, got %+v", e)
				}
				return
			}
			if e == nil || e.Type != tc.typ || e.Value != tc.value || e.Limit != tc.limit {
				t.Fatalf("want %s %v/%v, got %+v", tc.typ, tc.value, tc.limit, e)
			}
			if msg := e.message(s.retryAfter); !strings.Contains(msg, "Retry in 10 seconds") {
				t.Errorf("message %q lacks the retry hint", msg)
			}
		})
	}
	t.Run("disabled never sheds", func(t *testing.T) {
		off := mustResolve(t, &gateway.PressureConfig{Disabled: true, MaxHeap: 1})
		if e := evaluate(reading{heap: 1 << 40, cpu: 100, healthy: false}, off); e != nil {
			t.Fatalf("disabled: got %+v", e)
		}
	})
}

func TestResolve(t *testing.T) {
	t.Parallel()
	s := mustResolve(t, nil)
	if s.maxHeap != 512<<20 || s.maxRSS != 1<<30 || s.maxSched != 250*time.Millisecond ||
		s.maxCPU != 0.98 || s.interval != time.Second || s.retryAfter != 10 || s.retryAfterHdr != "10" ||
		s.maxInFlight != 4096 || s.healthInterval != 10*time.Second || s.disabled {
		t.Fatalf("defaults: %+v", s)
	}
	if s := mustResolve(t, &gateway.PressureConfig{RetryAfter: caddy.Duration(1500 * time.Millisecond)}); s.retryAfterHdr != "2" {
		t.Errorf("retry_after 1.5s: Retry-After %q, want 2 (rounded up)", s.retryAfterHdr)
	}
}

func TestP99(t *testing.T) {
	t.Parallel()
	h := &metrics.Float64Histogram{
		Buckets: []float64{math.Inf(-1), 0, 0.001, 0.010, 0.100, math.Inf(1)},
		Counts:  []uint64{0, 0, 0, 0, 0},
	}
	prev := []uint64{0, 50, 10, 0, 0}
	cur := func(c ...uint64) *metrics.Float64Histogram { h.Counts = c; return h }

	if got := p99(prev, cur(0, 50, 10, 0, 0)); got != 0 {
		t.Errorf("no new samples: %v", got)
	}
	// 99 new fast samples and 1 slow one: p99 is the fast bucket's bound.
	if got := p99(prev, cur(0, 50, 109, 1, 0)); got != 10*time.Millisecond {
		t.Errorf("99 fast + 1 slow: %v, want 10ms", got)
	}
	// 2 slow of 100: p99 falls in the slow bucket.
	if got := p99(prev, cur(0, 50, 108, 2, 0)); got != 100*time.Millisecond {
		t.Errorf("98 fast + 2 slow: %v, want 100ms", got)
	}
	// The unbounded last bucket reports its lower bound.
	if got := p99(prev, cur(0, 50, 10, 0, 5)); got != 100*time.Millisecond {
		t.Errorf("+Inf bucket: %v, want 100ms", got)
	}
}

// TestSamplerMeasures checks the real measurements: heap, RSS and
// goroutines are read, CPU rises under a busy loop, and scheduler latency
// rises when more goroutines want to run than there are Ps.
func TestSamplerMeasures(t *testing.T) {
	sm := newSampler()
	time.Sleep(2 * minInterval) // the CPU window needs some width
	r := sm.take()
	if r.heap == 0 || r.goroutines == 0 {
		t.Fatalf("heap %d, goroutines %d: want both > 0", r.heap, r.goroutines)
	}
	if runtime.GOOS == "linux" && r.rss < r.heap/2 {
		t.Errorf("rss %d is implausible next to heap %d", r.rss, r.heap)
	}

	// Busy rounds until a reading shows the CPU use (on a machine busy
	// with other work a round may get little of it), at most 5 s.
	busy := func() {
		var wg sync.WaitGroup
		stop := time.Now().Add(150 * time.Millisecond)
		for range 4 * runtime.GOMAXPROCS(0) {
			wg.Go(func() {
				for time.Now().Before(stop) {
					runtime.Gosched() // runnable again: the scheduler samples latency
				}
			})
		}
		wg.Wait()
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		busy()
		r = sm.take()
		if r.cpu > 0.1 && r.sched > 0 || time.Now().After(deadline) {
			break
		}
	}
	if r.cpu <= 0.1 {
		t.Errorf("cpu %.3f after busy loops on every P: want > 0.1", r.cpu)
	}
	if r.sched <= 0 {
		t.Errorf("scheduler latency %v with %d busy goroutines: want > 0", r.sched, 4*runtime.GOMAXPROCS(0))
	}
}

// sink keeps allocations from being optimized away.
var sink [][]byte

// allocate puts n bytes on the heap in 1 MiB pieces and returns them.
func allocate(n int) [][]byte {
	var pieces [][]byte
	for range n >> 20 {
		p := make([]byte, 1<<20)
		p[0] = 1
		pieces = append(pieces, p)
	}
	sink = pieces
	sink = nil
	return pieces
}

// TestTakeCollected (issue 15.1): a memory reading over its limit is
// taken again after a collection, so garbage alone never counts as
// pressure; live memory over the limit still does; nothing is collected
// while the readings are under their limits or with `pressure off`.
func TestTakeCollected(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(-1)) // no collections but ours
	runtime.GC()
	sm := newSampler()
	base := sm.take().heap
	s := mustResolve(t, &gateway.PressureConfig{MaxHeap: int64(base) + 32<<20, MaxRSS: 1 << 50})

	allocate(64 << 20) // garbage at once
	if r := sm.take(); r.heap <= s.maxHeap {
		t.Fatalf("64 MiB of garbage is not in the heap reading: %d <= max_heap %d", r.heap, s.maxHeap)
	}
	if r := sm.takeCollected(s); r.heap > s.maxHeap || sm.collections != 1 {
		t.Fatalf("garbage over max_heap: heap %d after %d collections, want <= %d after 1", r.heap, sm.collections, s.maxHeap)
	}

	t.Run("calm: no collection", func(t *testing.T) {
		allocate(8 << 20)
		calm := mustResolve(t, &gateway.PressureConfig{MaxHeap: 1 << 50, MaxRSS: 1 << 50})
		if sm.takeCollected(calm); sm.collections != 1 {
			t.Errorf("collected %d times while calm", sm.collections-1)
		}
	})
	t.Run("pressure off: no collection", func(t *testing.T) {
		off := mustResolve(t, &gateway.PressureConfig{Disabled: true, MaxHeap: 1})
		if sm.takeCollected(off); sm.collections != 1 {
			t.Errorf("collected %d times with pressure off", sm.collections-1)
		}
	})
	t.Run("live memory still counts", func(t *testing.T) {
		live := allocate(64 << 20)
		r := sm.takeCollected(s)
		runtime.KeepAlive(live)
		if r.heap <= s.maxHeap || sm.collections != 2 {
			t.Errorf("64 MiB live: heap %d after %d collections, want > %d after 2", r.heap, sm.collections, s.maxHeap)
		}
	})
	if runtime.GOOS == "linux" {
		t.Run("rss", func(t *testing.T) {
			allocate(64 << 20)
			rssLimit := mustResolve(t, &gateway.PressureConfig{MaxHeap: 1 << 50, MaxRSS: 1})
			n := sm.collections
			if r := sm.takeCollected(rssLimit); sm.collections != n+1 || r.heap > s.maxHeap {
				t.Errorf("over max_rss: %d collections, heap %d; want 1 collection and the garbage gone", sm.collections-n, r.heap)
			}
		})
	}
}

// TestMaxInFlightDefault: max_in_flight 0 is derived from max_heap; -1 is
// no limit (issue 15.2).
func TestMaxInFlightDefault(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		c    gateway.PressureConfig
		want int64
	}{
		{gateway.PressureConfig{}, 4096}, // 512 MiB / 128 KiB
		{gateway.PressureConfig{MaxHeap: 64 << 20}, 512},
		{gateway.PressureConfig{MaxHeap: 1}, 1},
		{gateway.PressureConfig{MaxInFlight: 7}, 7},
		{gateway.PressureConfig{MaxInFlight: -1}, 0},
	} {
		if s := mustResolve(t, &tc.c); s.maxInFlight != tc.want {
			t.Errorf("%+v: max_in_flight %d, want %d", tc.c, s.maxInFlight, tc.want)
		}
	}
	if s := mustResolve(t, &gateway.PressureConfig{MaxHeap: 1 << 30, MaxRSS: 256 << 20}); s.reservable != 32<<20 {
		t.Errorf("reservable %d, want an eighth of the smaller memory limit (32 MiB)", s.reservable)
	}
}
