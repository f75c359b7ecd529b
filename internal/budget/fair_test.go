package budget

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	discordsim "github.com/byteproxy/byteproxy/internal/upstreamsim/discord"
)

// lockedDiscord returns a forwarder whose credential is under a global
// lock of about two seconds (Discord answered a global 429 with
// Retry-After: 2), so that every request waits while a test queues them
// up, even on a loaded machine: the order in which waiting requests are
// let through is then the fair queue's alone. The channel's bucket is 5
// per 100ms.
func lockedDiscord(t *testing.T, cfg Config) (*Engine, *forwarder) {
	sim := startDiscord(t, func(c *discordsim.Config) {
		c.Buckets = discordsim.FastBuckets()
		c.Buckets[discordsim.HashChannel] = discordsim.Bucket{Limit: 5, Window: 100 * time.Millisecond}
		c.GlobalLimit = 1000
	})
	e := New(cfg, testStore(t))
	f := discordForwarder(e, sim, botToken)
	sim.ForceGlobal(botToken, 1500*time.Millisecond)
	if r := f.do(context.Background(), "setup", "GET", "/api/v10/users/@me", -1); r.status != 429 || r.header.Get("Retry-After") != "2" {
		t.Fatalf("setup: %d, Retry-After %q", r.status, r.header.Get("Retry-After"))
	}
	return e, f
}

// queueUp starts n requests of a consumer and waits until the engine
// holds want requests in all.
func queueUp(t *testing.T, e *Engine, f *forwarder, wg *sync.WaitGroup, who string, n, want int) {
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if r := f.do(context.Background(), who, "GET", "/api/v10/channels/"+channels[0], -1); r.status != 200 {
				t.Errorf("%s: %d %+v %v", who, r.status, r.refusal, r.err)
			}
		}()
	}
	within(t, 5*time.Second, "requests queued", func() bool { return e.Waiting(f.cred) == want })
}

// TestFairShare: a consumer sending ten times more than two others gets
// no more than its third while they wait, though it queued first.
func TestFairShare(t *testing.T) {
	cfg := testDiscordConfig()
	cfg.MaxWait = 20 * time.Second
	e, f := lockedDiscord(t, cfg)
	// The order is the queue's own, recorded as it grants: the order in
	// which the granted goroutines then run is the scheduler's (on a loaded
	// machine a batch of five could reach a hook after the next batch).
	// Grants made before the light consumers queued (the lock ended early
	// on a slow machine) were fair too, with nobody else waiting: only the
	// grants after all sixty were waiting count.
	var mu sync.Mutex
	var order []string
	var allQueued atomic.Bool
	e.queueGranted = func(who string) {
		if allQueued.Load() {
			mu.Lock()
			order = append(order, who)
			mu.Unlock()
		}
	}
	var wg sync.WaitGroup
	queueUp(t, e, f, &wg, "heavy", 50, 50)
	queueUp(t, e, f, &wg, "light-1", 5, 55)
	queueUp(t, e, f, &wg, "light-2", 5, 60)
	allQueued.Store(true)
	wg.Wait()
	if lights := countOf(order, "light-1") + countOf(order, "light-2"); lights != 10 {
		t.Fatalf("%d light grants after all were queued, want all 10: %v", lights, order)
	}

	last := 0
	for i, who := range order {
		if who != "heavy" {
			last = i
		}
	}
	heavy := 0
	for _, who := range order[:last+1] {
		if who == "heavy" {
			heavy++
		}
	}
	t.Logf("by the last grant of the light consumers (%d grants), heavy had %d", last+1, heavy)
	if heavy > (last+1)/3+1 {
		t.Fatalf("heavy got %d of the first %d grants, more than its third: %v", heavy, last+1, order[:last+1])
	}
}

func countOf(order []string, who string) int {
	n := 0
	for _, w := range order {
		if w == who {
			n++
		}
	}
	return n
}

// TestFairShareWeights: a consumer of weight 2 gets twice the share.
func TestFairShareWeights(t *testing.T) {
	cfg := testDiscordConfig()
	cfg.MaxWait = 20 * time.Second
	cfg.Weights = map[string]float64{"gold": 2}
	e, f := lockedDiscord(t, cfg)
	var mu sync.Mutex
	counts := map[string]int{}
	var atGold map[string]int
	e.queueGranted = func(who string) {
		mu.Lock()
		defer mu.Unlock()
		counts[who]++
		if who == "gold" && counts["gold"] == 10 {
			atGold = map[string]int{"heavy": counts["heavy"], "plain": counts["plain"]}
		}
	}
	var wg sync.WaitGroup
	queueUp(t, e, f, &wg, "heavy", 40, 40)
	queueUp(t, e, f, &wg, "gold", 10, 50)
	queueUp(t, e, f, &wg, "plain", 10, 60)
	wg.Wait()
	t.Logf("when gold had its 10th grant: %v", atGold)
	if atGold["heavy"] > 6 || atGold["plain"] > 6 {
		t.Fatalf("when gold (weight 2) had 10 grants the others had %v; want about 5 each", atGold)
	}
}

// TestQueueBounded: a full queue refuses the newcomer of the consumer
// that fills it, and makes room for another consumer by refusing the
// newest request of the one with the most queued.
func TestQueueBounded(t *testing.T) {
	cfg := testDiscordConfig()
	cfg.MaxQueue = 10
	e, f := lockedDiscord(t, cfg)
	var full atomic.Int64
	var wg sync.WaitGroup
	send := func(who string) {
		defer wg.Done()
		r := f.do(context.Background(), who, "GET", "/api/v10/channels/"+channels[0], -1)
		switch {
		case r.refusal != nil && r.refusal.QueueFull:
			full.Add(1)
		case r.status != 200:
			t.Errorf("%s: %d %+v", who, r.status, r.refusal)
		}
	}
	for range 12 {
		wg.Add(1)
		go send("flood")
	}
	within(t, 5*time.Second, "10 queued and 2 refused", func() bool { return e.Waiting(f.cred) == 10 && full.Load() == 2 })
	wg.Add(1)
	go send("other")
	within(t, 5*time.Second, "a flood request dropped for the other", func() bool { return full.Load() == 3 })
	if n := e.Waiting(f.cred); n != 10 {
		t.Fatalf("%d waiting, want 10", n)
	}
	wg.Wait()
	if st := e.Stats(); st.QueueFull != 3 {
		t.Fatalf("stats %+v", st)
	}
}

// TestHoldOrRefuse: a request is held when its budget frees within the
// wait budget (the smaller of max_wait and Prefer: wait), else refused at
// once with the time it frees, exact to the millisecond.
func TestHoldOrRefuse(t *testing.T) {
	sim := startDiscord(t, nil)
	cfg := testDiscordConfig()
	cfg.MaxWait = 2 * time.Second
	e := New(cfg, testStore(t))
	f := discordForwarder(e, sim, botToken)
	ctx := context.Background()
	path := "/api/v10/channels/" + channels[2]
	for i := range 5 {
		if r := f.do(ctx, "c", "GET", path, -1); r.status != 200 {
			t.Fatalf("request %d: %d", i, r.status)
		}
	}
	r := f.do(ctx, "c", "GET", path, 0)
	if r.refusal == nil || r.refusal.Scope != ScopeBucket || r.refusal.Name != discordsim.HashChannel || r.refusal.Limit != 5 || r.refusal.Waited != 0 {
		t.Fatalf("Prefer: wait=0: %d %+v", r.status, r.refusal)
	}
	if ra := r.refusal.RetryAfter; ra <= 0 || ra > 510*time.Millisecond || ra%time.Millisecond != 0 {
		t.Fatalf("retry after %v", ra)
	}
	if held := f.do(ctx, "c", "GET", path, -1); held.status != 200 || held.ticket.Waited <= 0 {
		t.Fatalf("held: %d waited %v %+v", held.status, held.ticket.Waited, held.refusal)
	}
	if n := sim.Stats().Upstream429s(); n != 0 {
		t.Fatalf("%d 429s", n)
	}

	short := cfg
	short.MaxWait = 10 * time.Millisecond
	e2 := New(short, testStore(t))
	f2 := discordForwarder(e2, startDiscord(t, nil), botToken)
	for range 5 {
		f2.do(ctx, "c", "GET", path, -1)
	}
	if r := f2.do(ctx, "c", "GET", path, 5*time.Second); r.refusal == nil || r.refusal.Waited != 0 {
		t.Fatalf("max_wait 10ms, Prefer: wait=5: %d %+v; want refused at once (the smaller wins)", r.status, r.refusal)
	}
}

// TestCancelReleases: a request whose context ends while it waits leaves
// the queue, and a reservation that is not used goes back.
func TestCancelReleases(t *testing.T) {
	cfg := testDiscordConfig()
	e, f := lockedDiscord(t, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := e.Reserve(ctx, Request{Credential: f.cred, Method: "GET", Path: "/api/v10/channels/" + channels[0], Consumer: "c"})
		done <- err
	}()
	within(t, 5*time.Second, "the request queued", func() bool { return e.Waiting(f.cred) == 1 })
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Reserve returned %v, want context.Canceled", err)
	}
	if n := e.Waiting(f.cred); n != 0 {
		t.Fatalf("%d still waiting", n)
	}

	// A granted reservation given back with Cancel frees its place.
	store := testStore(t)
	e2 := New(testDiscordConfig(), store)
	f2 := discordForwarder(e2, startDiscord(t, nil), botToken)
	path := "/api/v10/channels/" + channels[3]
	if r := f2.do(context.Background(), "c", "GET", path, -1); r.status != 200 {
		t.Fatalf("%d", r.status)
	}
	tk, err := e2.Reserve(context.Background(), Request{Credential: f2.cred, Method: "GET", Path: path, Consumer: "c"})
	if err != nil {
		t.Fatal(err)
	}
	route := "GET /channels/{id}"
	if b := snapshot(t, store, f2.cred, route, channels[3]); b.InFlight != 1 {
		t.Fatalf("in flight %d", b.InFlight)
	}
	e2.Cancel(&tk)
	e2.Cancel(&tk) // twice is harmless
	if b := snapshot(t, store, f2.cred, route, channels[3]); b.InFlight != 0 || b.Used != 1 {
		t.Fatalf("after Cancel: %+v", b)
	}
}

// TestShareReported: the share a consumer is told is the bucket's room,
// split among the consumers waiting.
func TestShareReported(t *testing.T) {
	sim := startDiscord(t, nil)
	e := New(testDiscordConfig(), testStore(t))
	f := discordForwarder(e, sim, botToken)
	path := "/api/v10/channels/" + channels[0] + "/messages"
	f.do(context.Background(), "a", "POST", path, -1)
	r := f.do(context.Background(), "a", "POST", path, -1)
	s := r.ticket.Share()
	// Reset-after 500ms + slack 10ms (+1ms: a cluster store counts from
	// its reply's arrival).
	if s.Limit != 5 || s.Remaining != 3 || s.Reset <= 0 || s.Reset > 511*time.Millisecond {
		t.Fatalf("share %+v", s)
	}
	field := string(s.AppendRateLimit(nil, "upstream", "a"))
	if want := `"upstream";r=3;t=1;pk=:YQ==:`; field != want {
		t.Fatalf("RateLimit %s, want %s", field, want)
	}
}

// TestWaitersDoNotSpin: requests waiting behind another one refused by the
// same limit wake up when that limit ends, not before: a stale end of
// their own (already past) once made the queue re-run its pass
// continuously until the next window.
func TestWaitersDoNotSpin(t *testing.T) {
	sim := startDiscord(t, nil)
	e := New(testDiscordConfig(), testStore(t))
	f := discordForwarder(e, sim, botToken)
	path := "/api/v10/channels/" + channels[0]
	var wg sync.WaitGroup
	for range 15 { // three windows of 5 per 500ms
		wg.Add(1)
		go func() {
			defer wg.Done()
			if r := f.do(context.Background(), "c", "GET", path, -1); r.status != 200 {
				t.Errorf("%d %+v", r.status, r.refusal)
			}
		}()
	}
	wg.Wait()
	passes := e.lane(f.cred).passes.Load()
	t.Logf("%d dispatch passes for 15 requests over 3 windows", passes)
	if passes > 200 {
		t.Fatalf("%d dispatch passes: the queue spins", passes)
	}
}
