package ratelimit

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/byteproxy/byteproxy/internal/fleet"
	"github.com/byteproxy/byteproxy/internal/testutil/redistest"
)

func newTestStore(t *testing.T, url string) (*redisStore, *observer.ObservedLogs) {
	return newTestStoreWith(t, url, defaultRedisTimings)
}

func newTestStoreWith(t *testing.T, url string, timings redisTimings) (*redisStore, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zapcore.InfoLevel)
	if timings.instance == "" {
		timings.instance = uniqueName("instance") // several stores in one test process are several instances
	}
	s, err := newRedisStore(url, zap.New(core), timings)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Destruct() })
	return s, logs
}

func TestRedisServiceWindowExact(t *testing.T) {
	s, _ := newTestStore(t, redistest.URL(t))
	key := redisServiceKey(uniqueName("svc"), 100, time.Minute)
	var ok, refused atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 300)
	for range 300 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			rep, err := s.decide(ctx, "", 0, 0, key, 100, time.Minute)
			switch {
			case err != nil:
				errs <- err
			case rep.verdict == 0:
				ok.Add(1)
			case rep.verdict == 2:
				refused.Add(1)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if ok.Load() != 100 || refused.Load() != 200 {
		t.Fatalf("admitted %d, refused %d; want exactly 100 and 200", ok.Load(), refused.Load())
	}
	count, ttl, err := s.peek(context.Background(), key)
	if err != nil || count != 100 || ttl <= 50*time.Second || ttl > time.Minute {
		t.Fatalf("peek: count %d ttl %v err %v; want 100 counted (refusals not counted), ttl under 1m", count, ttl, err)
	}
}

func TestRedisClientBucket(t *testing.T) {
	s, _ := newTestStore(t, redistest.URL(t))
	ctx := context.Background()
	ck := redisClientPrefix(3, 3*time.Second) + uniqueName("key:alice")
	svc := redisServiceKey(uniqueName("svc"), 100, time.Minute)
	for i := range 3 {
		rep, err := s.decide(ctx, ck, 3, 3*time.Second, svc, 100, time.Minute)
		if err != nil || rep.verdict != 0 || int(rep.tokens) != 2-i {
			t.Fatalf("request %d: %+v %v; want admitted with %d tokens left", i+1, rep, err, 2-i)
		}
	}
	rep, err := s.decide(ctx, ck, 3, 3*time.Second, svc, 100, time.Minute)
	if err != nil || rep.verdict != 1 || rep.retry <= 0 || rep.retry > time.Second {
		t.Fatalf("4th request: %+v %v; want refused by the client limit, retry within 1s", rep, err)
	}
	// The client refusal did not count against the service.
	if count, _, _ := s.peek(ctx, svc); count != 3 {
		t.Fatalf("service count %d, want 3: a client refusal must not count", count)
	}
	// A service refusal does not spend the client's token.
	full := redisServiceKey(uniqueName("full"), 1, time.Minute)
	bob := redisClientPrefix(3, 3*time.Second) + uniqueName("key:bob")
	if rep, _ := s.decide(ctx, bob, 3, 3*time.Second, full, 1, time.Minute); rep.verdict != 0 {
		t.Fatalf("first request: %+v", rep)
	}
	for range 3 {
		if rep, _ := s.decide(ctx, bob, 3, 3*time.Second, full, 1, time.Minute); rep.verdict != 2 || int(rep.tokens) != 2 {
			t.Fatalf("refused by the service: %+v, want verdict 2 and 2 tokens kept", rep)
		}
	}
	// Tokens come back: one per second here.
	deadline := time.Now().Add(5 * time.Second)
	for {
		rep, err := s.decide(ctx, ck, 3, 3*time.Second, "", 0, 0)
		if err == nil && rep.verdict == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no token after 5s: %+v %v", rep, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestRedisOutageLoggedOnceAndRecovered(t *testing.T) {
	srv := redistest.Start(t, redistest.FreePort(t))
	s, logs := newTestStore(t, srv.URL)
	var statuses []redisStatus
	var mu sync.Mutex
	s.subscribe(redisListener{status: func(st redisStatus) { mu.Lock(); statuses = append(statuses, st); mu.Unlock() }}, s.logger.Load())
	waitFor(t, "initial connection", func() bool { mu.Lock(); defer mu.Unlock(); return statuses[len(statuses)-1].Connected })

	srv.Kill()
	ctx := context.Background()
	key := redisServiceKey("outage", 10, time.Minute)
	failures := 0
	for range 20 {
		start := time.Now()
		if _, err := s.decide(ctx, "", 0, 0, key, 10, time.Minute); err != nil {
			failures++
			s.markDown(err)
		}
		if d := time.Since(start); d > time.Second {
			t.Fatalf("a decision against a dead Redis took %v", d)
		}
	}
	if failures == 0 || s.up.Load() {
		t.Fatalf("Redis killed, yet %d failures and up=%v", failures, s.up.Load())
	}
	if n := logs.FilterMessageSnippet("redis unreachable").Len(); n != 1 {
		t.Fatalf("outage logged %d times, want once", n)
	}
	mu.Lock()
	last := statuses[len(statuses)-1]
	mu.Unlock()
	if !last.Configured || last.Connected || !last.Fallback || strings.Contains(last.LastError, "redis://") {
		t.Fatalf("status during the outage: %+v", last)
	}

	redistest.Start(t, srv.Port)
	waitFor(t, "recovery", s.up.Load)
	if n := logs.FilterMessageSnippet("redis reachable again").Len(); n != 1 {
		t.Fatalf("recovery logged %d times, want once", n)
	}
	if rep, err := s.decide(ctx, "", 0, 0, key, 10, time.Minute); err != nil || rep.verdict != 0 || rep.count != 1 {
		t.Fatalf("after recovery: %+v %v", rep, err)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Instances announce themselves; one that stops announcing (a crash: it
// cannot say goodbye) drops out of the count after the ttl, one that stops
// cleanly at once.
func TestRedisInstancesAnnounceAndExpire(t *testing.T) {
	srv := redistest.Start(t, redistest.FreePort(t)) // its own: other tests' instances would count
	fast := redisTimings{Timings: fleet.Timings{Probe: 50 * time.Millisecond, Announce: 100 * time.Millisecond, TTL: 3 * time.Second}}
	a, _ := newTestStoreWith(t, srv.URL, fast)
	b, _ := newTestStoreWith(t, srv.URL, fast)
	waitFor(t, "two instances", func() bool { return a.instances.Load() == 2 && b.instances.Load() == 2 })
	a.mu.Lock()
	st := a.status
	a.mu.Unlock()
	if st.Instances != 2 {
		t.Fatalf("status %+v, want 2 instances", st)
	}

	// A crashed instance: announced once, never again.
	opt, _ := redis.ParseURL(srv.URL)
	c := redis.NewClient(opt)
	defer c.Close()
	ctx := context.Background()
	tm, err := c.Time(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.ZAdd(ctx, fleet.InstancesKey, redis.Z{Score: float64(tm.UnixMilli()), Member: "crashed"}).Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the crashed instance counted", func() bool { return a.instances.Load() == 3 })
	counted := time.Now()
	waitFor(t, "the crashed instance dropped", func() bool { return a.instances.Load() == 2 })
	if d := time.Since(counted); d < time.Second {
		t.Fatalf("the crashed instance dropped out after %v, before its ttl (3s)", d)
	}

	// A clean stop leaves at once, well before the ttl.
	_ = b.Destruct()
	stopped := time.Now()
	waitFor(t, "the stopped instance dropped", func() bool { return a.instances.Load() == 1 })
	if d := time.Since(stopped); d >= fast.TTL {
		t.Fatalf("a cleanly stopped instance was counted for %v, want it gone before the ttl", d)
	}

	// Announcing notices an outage without any request, and keeps the
	// last count for the outage.
	srv.Kill()
	waitFor(t, "the outage noticed", func() bool { return !a.up.Load() })
	if n := a.instances.Load(); n != 1 {
		t.Fatalf("instances %d during the outage, want the last seen (1)", n)
	}
}

// Carrying back after an outage: a window Redis lost is restored from what
// the instance last saw plus what it admitted; a window Redis kept gets
// the admissions added and keeps its end.
func TestRedisCarryBack(t *testing.T) {
	s, _ := newTestStore(t, redistest.URL(t))
	ctx := context.Background()
	lost := redisServiceKey(uniqueName("lost"), 30, time.Minute)
	kept := redisServiceKey(uniqueName("kept"), 30, time.Minute)
	for range 20 {
		if _, err := s.decide(ctx, "", 0, 0, kept, 30, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	// A key of another type: Redis refuses it, the others are carried.
	bad := redisServiceKey(uniqueName("bad"), 30, time.Minute)
	if err := s.client.HSet(ctx, bad, "f", "v").Err(); err != nil {
		t.Fatal(err)
	}
	got, err := s.carryBack(ctx, []windowDebt{
		{key: lost, shared: 12, count: 5, left: 40 * time.Second},
		{key: bad, shared: 1, count: 1, left: 40 * time.Second},
		{key: kept, shared: 15, count: 4, left: 20 * time.Second},
	})
	if err != nil {
		t.Fatalf("a refused window failed the whole carry: %v", err)
	}
	if got[1].ok {
		t.Fatalf("a hash key was carried: %+v", got[1])
	}
	got = []redisWindow{got[0], got[2]}
	if got[0].count != 17 || got[0].ttl <= 35*time.Second || got[0].ttl > 40*time.Second {
		t.Fatalf("lost window: %+v, want 12+5 counted, ending in 40s", got[0])
	}
	if got[1].count != 24 || got[1].ttl <= 50*time.Second {
		t.Fatalf("kept window: %+v, want 20+4 counted, keeping its end (about 60s)", got[1])
	}
	// Another instance carrying back: its admissions add up.
	got, err = s.carryBack(ctx, []windowDebt{{key: lost, shared: 13, count: 3, left: 40 * time.Second}})
	if err != nil || got[0].count != 20 {
		t.Fatalf("second carrier: %+v %v, want 17+3", got, err)
	}
	if rep, err := s.decide(ctx, "", 0, 0, lost, 30, time.Minute); err != nil || rep.count != 21 {
		t.Fatalf("a request after the carry: %+v %v, want counted as the 21st", rep, err)
	}
}
