package budget

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/byteproxy/byteproxy/internal/fleet"
	"github.com/byteproxy/byteproxy/internal/testutil/redistest"
	discordsim "github.com/byteproxy/byteproxy/internal/upstreamsim/discord"
	githubsim "github.com/byteproxy/byteproxy/internal/upstreamsim/github"
)

// cluster is n engines of one service, each over its own RedisStore on
// one Redis: n gateways.
type cluster struct {
	engines []*Engine
	stores  []*RedisStore
}

func newCluster(t *testing.T, n int, url string, cfg func() Config, mod func(*RedisOptions)) *cluster {
	t.Helper()
	prefix := testPrefix()
	c := &cluster{}
	for range n {
		s := testPatientStore(t, url, prefix, mod)
		c.stores = append(c.stores, s)
		c.engines = append(c.engines, New(cfg(), s))
	}
	return c
}

// TestRedisDiscordBotsShareOneToken is issue 14's run through three
// gateways on one Redis: the bots are spread over them, and Discord sees
// no 429, as through one gateway.
func TestRedisDiscordBotsShareOneToken(t *testing.T) {
	url := redistest.URL(t)
	sim := startDiscord(t, nil)
	c := newCluster(t, 3, url, testDiscordConfig, nil)
	var gws []*forwarder
	for _, e := range c.engines {
		gws = append(gws, discordForwarder(e, sim, botToken))
	}
	start := time.Now()
	refused := runBots(t, gws, true)
	elapsed := time.Since(start)
	ratio := checkBotsRun(t, sim, elapsed, refused)
	for i, e := range c.engines {
		t.Logf("gateway %d: %+v", i, e.Stats())
	}
	// Three gateways poll for what the others settle (pollEvery) where one
	// gateway is woken at once; the bound is loose, the ratio reported.
	if bound := 2 * ratioBound(); ratio > bound {
		t.Errorf("took %.2fx the minimum, want at most %.2fx", ratio, bound)
	}
	for i, s := range c.stores {
		if st := s.Stats(); !st.Up || st.Local != 0 || st.Instances < 3 {
			t.Errorf("store %d: %+v; want up, no local decision, 3 instances", i, st)
		}
	}
}

// TestClusterWithoutRedisGets429s: the same three gateways, each with its
// own memory, send Discord more than it allows: what the Redis store
// shares is what keeps the run above clean.
func TestClusterWithoutRedisGets429s(t *testing.T) {
	sim := startDiscord(t, nil)
	var gws []*forwarder
	for range 3 {
		gws = append(gws, discordForwarder(New(testDiscordConfig(), NewMemStore()), sim, botToken))
	}
	runBots(t, gws, true)
	st := sim.Stats()
	t.Logf("three gateways without a shared store: %d 429s %v", st.Upstream429s(), st.TooMany)
	if st.Upstream429s() == 0 {
		t.Fatal("three unshared gateways got no 429: the cluster test cannot fail")
	}
}

// TestRedisGitHubDrainCoreBudget: three consumers, each through its own
// gateway, drain a core budget of 100: exactly 100 requests reach GitHub,
// the other 50 are refused by whichever gateway they reached, with
// GitHub's reset.
func TestRedisGitHubDrainCoreBudget(t *testing.T) {
	url := redistest.URL(t)
	sim := startGitHub(t, func(c *githubsim.Config) {
		c.Resources = map[string]githubsim.Resource{"core": {Limit: 100, Window: time.Hour}}
	})
	c := newCluster(t, 3, url, GitHubConfig, nil)
	var mu sync.Mutex
	var refusals []*Refusal
	var ok atomic.Int64
	var wg sync.WaitGroup
	for i, who := range []string{"alice", "bob", "carol"} {
		f := githubForwarder(c.engines[i], sim)
		for range 5 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 10 {
					r := f.do(context.Background(), who, "GET", "/repos/octo/app/issues/1", -1)
					switch {
					case r.refusal != nil:
						mu.Lock()
						refusals = append(refusals, r.refusal)
						mu.Unlock()
					case r.status == 200:
						ok.Add(1)
					default:
						t.Errorf("%s: status %d %v", who, r.status, r.err)
					}
				}
			}()
		}
	}
	wg.Wait()
	st := sim.Stats()
	if st.Counted["core"] != 100 || ok.Load() != 100 || st.PrimaryLimited != 0 {
		t.Fatalf("GitHub counted %d, %d succeeded, %d refused by GitHub; want exactly 100 sent and none refused there",
			st.Counted["core"], ok.Load(), st.PrimaryLimited)
	}
	if len(refusals) != 50 {
		t.Fatalf("%d refused locally, want 50", len(refusals))
	}
	reset := time.Unix(sim.Reset(ghToken, "core"), 0)
	for _, r := range refusals {
		if r.Scope != ScopeBucket || r.Name != "core" || r.Limit != 100 || r.Reset.Before(reset) || r.Reset.After(reset.Add(1500*time.Millisecond)) {
			t.Fatalf("refusal %+v; GitHub resets at %v", r, reset)
		}
	}
	for i, e := range c.engines {
		t.Logf("gateway %d: %+v", i, e.Stats())
	}
}

// TestRedisGitHubMutationsSpaced: mutations sent through three gateways
// go one at a time and spaced, cluster-wide.
func TestRedisGitHubMutationsSpaced(t *testing.T) {
	url := redistest.URL(t)
	sim := startGitHub(t, func(c *githubsim.Config) {
		c.MutationGap = 150 * time.Millisecond
		c.SecondaryRetryAfter = time.Second
		c.Latency = 5 * time.Millisecond
	})
	c := newCluster(t, 3, url, func() Config {
		cfg := GitHubConfig()
		cfg.MutationSpacing = 150 * time.Millisecond
		return cfg
	}, nil)
	var wg sync.WaitGroup
	for i, who := range []string{"alice", "bob", "carol"} {
		f := githubForwarder(c.engines[i], sim)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 4 {
				f.do(context.Background(), who, "POST", "/repos/octo/app/issues", -1)
			}
		}()
	}
	wg.Wait()
	st := sim.Stats()
	if st.ByStatus[201] != 12 || st.SecondaryTripped != 0 || st.MinMutationGap < 150*time.Millisecond || st.MaxConcurrent > 1 {
		t.Fatalf("created %d, secondary limit tripped %d times, least gap %v, %d at once", st.ByStatus[201], st.SecondaryTripped, st.MinMutationGap, st.MaxConcurrent)
	}
	t.Logf("least gap between mutations at GitHub: %v", st.MinMutationGap)
}

// TestRedisGitHubSecondaryLimitLocksCluster: a secondary limit answered to
// one gateway locks the credential on every gateway.
func TestRedisGitHubSecondaryLimitLocksCluster(t *testing.T) {
	url := redistest.URL(t)
	sim := startGitHub(t, nil)
	c := newCluster(t, 2, url, GitHubConfig, nil)
	a, b := githubForwarder(c.engines[0], sim), githubForwarder(c.engines[1], sim)
	ctx := context.Background()
	sim.ForceSecondary(ghToken, 2*time.Second)
	if r := a.do(ctx, "a", "GET", "/repos/octo/app", -1); r.status != 403 {
		t.Fatalf("first request: %d", r.status)
	}
	before := sim.Stats().Received
	r := b.do(ctx, "b", "GET", "/repos/octo/app", 0)
	if r.refusal == nil || r.refusal.Scope != ScopeLocked || r.refusal.RetryAfter <= time.Second || r.refusal.RetryAfter > 2300*time.Millisecond {
		t.Fatalf("the other gateway during the secondary limit: %d %+v", r.status, r.refusal)
	}
	if n := sim.Stats().Received - before; n != 0 {
		t.Fatalf("GitHub received %d requests during the lock", n)
	}
}

// TestRedisBanGuardCountsAcrossGateways: invalid responses seen by three
// gateways add up to one count; at the threshold every gateway stops, and
// the trip is reported once.
func TestRedisBanGuardCountsAcrossGateways(t *testing.T) {
	url := redistest.URL(t)
	cfg := func() Config {
		c := testDiscordConfig()
		c.BanThreshold = 5
		c.BanWindow = 3 * time.Second
		return c
	}
	run := func(t *testing.T, engines []*Engine) (*discordsim.Server, []*forwarder) {
		sim := startDiscord(t, nil)
		sim.Forbid("666666666666666666")
		var fs []*forwarder
		for _, e := range engines {
			fs = append(fs, discordForwarder(e, sim, botToken))
		}
		for i := range 5 { // 2 + 2 + 1 invalid responses
			if r := fs[i%len(fs)].do(context.Background(), "c", "GET", "/api/v10/channels/666666666666666666", -1); r.status != 403 {
				t.Fatalf("request %d: %d %+v", i, r.status, r.refusal)
			}
		}
		return sim, fs
	}
	t.Run("redis", func(t *testing.T) {
		c := newCluster(t, 3, url, cfg, nil)
		sim, fs := run(t, c.engines)
		for i, f := range fs {
			r := f.do(context.Background(), "c", "GET", "/api/v10/channels/"+channels[0], -1)
			if r.refusal == nil || r.refusal.Scope != ScopeBanGuard || r.status != http.StatusServiceUnavailable {
				t.Fatalf("gateway %d past the threshold: %d %+v", i, r.status, r.refusal)
			}
			if ra := r.refusal.RetryAfter; ra <= 0 || ra > 3*time.Second+100*time.Millisecond {
				t.Fatalf("gateway %d: retry after %v", i, ra)
			}
		}
		if n := sim.Stats().Received; n != 5 {
			t.Fatalf("Discord received %d requests, want the 5 below the threshold", n)
		}
		var trips int64
		for _, e := range c.engines {
			trips += e.Stats().BanTrips
		}
		if trips != 1 {
			t.Fatalf("%d trips reported, want 1", trips)
		}
	})
	t.Run("memory", func(t *testing.T) {
		// Each gateway alone counts 1 or 2: the test above can fail.
		var engines []*Engine
		for range 3 {
			engines = append(engines, New(cfg(), NewMemStore()))
		}
		_, fs := run(t, engines)
		if r := fs[0].do(context.Background(), "c", "GET", "/api/v10/channels/"+channels[0], -1); r.status != 200 {
			t.Fatalf("unshared gateways stopped at %d %+v", r.status, r.refusal)
		}
	})
}

// TestRedisLeaseLapses: a reservation that is never settled (its gateway
// died) holds until its lease lapses, then the bucket is free again; a
// probe of an unknown route does not block it for good.
func TestRedisLeaseLapses(t *testing.T) {
	url := redistest.URL(t)
	prefix := testPrefix()
	lease := func(o *RedisOptions) { o.Lease = 2 * time.Second; o.callerClock = true }
	dead, live := testPatientStore(t, url, prefix, lease), testPatientStore(t, url, prefix, lease)
	now := time.Unix(5000, 0)
	rules := &Rules{GlobalLimit: 2, GlobalWindow: time.Second, MaxInFlight: 1}
	p := Plan{Cred: "c", Route: "POST /channels/{id}/messages", Major: "1", Global: true, Rules: rules}
	if g := take(t, dead, p, now); !g.OK || !g.Probe || g.Lease <= 0 {
		t.Fatalf("the dying gateway's probe: %+v", g)
	}
	if g := take(t, live, p, now.Add(1999*time.Millisecond)); g.OK {
		t.Fatalf("while the lease holds: %+v", g)
	}
	g := take(t, live, p, now.Add(2*time.Second))
	if !g.OK {
		t.Fatalf("after the lease lapsed: %+v", g)
	}
	settle(t, live, p, g, answer("msgs", 5, 4, 7500, 2500*time.Millisecond), now.Add(2100*time.Millisecond))
	if b := snapshot(t, live, "c", p.Route, "1"); b.Name != "msgs" || b.Used != 1 || b.Limit != 5 {
		t.Fatalf("bucket after the live gateway's answer: %+v", b)
	}
}

// TestRedisKeysExpire: every key the store writes is namespaced and
// expires: nothing grows without bound.
func TestRedisKeysExpire(t *testing.T) {
	url := redistest.URL(t)
	prefix := testPrefix()
	sim := startDiscord(t, nil)
	gh := startGitHub(t, func(c *githubsim.Config) {
		c.Resources = map[string]githubsim.Resource{"core": {Limit: 100, Window: 30 * time.Second}}
	})
	idle := 3 * time.Second
	s := testPatientStore(t, url, prefix, nil)
	dcfg, gcfg := testDiscordConfig(), GitHubConfig()
	dcfg.IdleAfter, gcfg.IdleAfter = idle, idle
	gcfg.MutationSpacing = 10 * time.Millisecond
	dcfg.BanThreshold, dcfg.BanWindow = 10, 20*time.Second
	d, g := discordForwarder(New(dcfg, s), sim, botToken), githubForwarder(New(gcfg, s), gh)
	sim.Forbid("666666666666666666")
	ctx := context.Background()
	for i := range 6 {
		d.do(ctx, "a", "POST", "/api/v10/channels/"+channels[i%4]+"/messages", -1)
		d.do(ctx, "a", "GET", "/api/v10/channels/666666666666666666", -1)
		g.do(ctx, "a", "GET", "/repos/octo/app", -1)
		g.do(ctx, "a", "POST", "/repos/octo/app/issues", -1)
	}
	client := redis.NewClient(mustParseURL(t, url))
	defer client.Close()
	keys, err := client.Keys(ctx, prefix+"*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) < 10 {
		t.Fatalf("only %d keys: %q", len(keys), keys)
	}
	// The longest a key lasts: the idle time, or the lease (2m), or a
	// window or lock it holds (30s here), or the ban window, plus a second.
	longest := DefaultLease + 2*time.Second
	for _, k := range keys {
		ttl, err := client.PTTL(ctx, k).Result()
		if err != nil {
			t.Fatal(err)
		}
		if ttl <= 0 || ttl > longest {
			t.Errorf("key %q: ttl %v, want within (0, %v]", strings.ReplaceAll(k, "\x00", "|"), ttl, longest)
		}
	}
	t.Logf("%d keys, all expiring: %q", len(keys), strings.ReplaceAll(strings.Join(keys, " "), "\x00", "|"))
}

// TestRedisClockIsRedis: decisions use the Redis server's clock, not the
// instance's: a gateway whose clock runs an hour ahead does not think a
// window other gateways see open has ended, and gets its end in its own
// clock.
func TestRedisClockIsRedis(t *testing.T) {
	url := redistest.URL(t)
	prefix := testPrefix()
	a, b := testPatientStore(t, url, prefix, nil), testPatientStore(t, url, prefix, nil)
	rules := &Rules{}
	p := Plan{Cred: "c", Route: "core", Direct: true, Rules: rules}
	now := time.Now()
	g := take(t, a, p, now)
	settle(t, a, p, g, answer("core", 1, 0, now.Add(2*time.Second).UnixMilli(), 2*time.Second), now)
	ahead := time.Now().Add(time.Hour)
	d := take(t, b, p, ahead)
	if d.OK {
		t.Fatal("a gateway an hour ahead sent in a window that has not ended")
	}
	if wait := time.Until(d.Until); wait <= time.Second || wait > 2500*time.Millisecond {
		t.Fatalf("refused until %v from now, want the window's end in about 2s", wait)
	}
}

func mustParseURL(t *testing.T, url string) *redis.Options {
	t.Helper()
	o, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	return o
}

// fastTimings make the stores notice an outage's end quickly in tests.
func fastTimings(o *RedisOptions) {
	o.timings = fleet.Timings{Probe: 50 * time.Millisecond, Announce: 200 * time.Millisecond, TTL: 2 * time.Second}
}

// TestRedisOutage is issue 14's bot run through three gateways while
// their Redis is killed after a third of the run (the gateways decide in
// memory, each with a third of every limit) and started again, empty,
// after two thirds (they carry back what they saw and go on through it),
// or left down. No request fails because of Redis (every message and
// reaction is delivered, none refused); Discord's 429s are counted by
// route and logged.
func TestRedisOutage(t *testing.T) {
	for _, restart := range []bool{true, false} {
		name := "restarted"
		if !restart {
			name = "stays down"
		}
		t.Run(name, func(t *testing.T) { testRedisOutage(t, restart) })
	}
}

func testRedisOutage(t *testing.T, restart bool) {
	port := redistest.FreePort(t)
	srv := redistest.Start(t, port)
	sim := startDiscord(t, nil)
	c := newCluster(t, 3, srv.URL, testDiscordConfig, fastTimings)
	var grants atomic.Int64
	killed, restarted := make(chan struct{}), make(chan struct{})
	onGrant := func(string) {
		switch grants.Add(1) {
		case 150:
			go func() { srv.Kill(); close(killed) }()
		case 300:
			if restart {
				go func() {
					<-killed
					srv = redistest.Start(t, port)
					close(restarted)
				}()
			}
		}
	}
	var mu sync.Mutex
	tooMany := map[string]int{} // Discord's 429s by route
	onAnswer := func(method, path string, status int) {
		if status == http.StatusTooManyRequests {
			mu.Lock()
			defer mu.Unlock()
			if strings.Contains(path, "/reactions/") {
				tooMany["reactions"]++
			} else {
				tooMany[method+" messages"]++
			}
		}
	}
	var gws []*forwarder
	for _, e := range c.engines {
		f := discordForwarder(e, sim, botToken)
		f.onGrant, f.onAnswer = onGrant, onAnswer
		gws = append(gws, f)
	}
	start := time.Now()
	refused := runBots(t, gws, true)
	elapsed := time.Since(start)
	<-killed
	st := sim.Stats()
	var local int64
	for i, s := range c.stores {
		local += s.Stats().Local
		t.Logf("gateway %d: %+v %+v", i, c.engines[i].Stats(), s.Stats())
	}
	t.Logf("440 requests in %v with redis killed after 150 grants%s: Discord answered %d 429s %v %v, the gateways refused %d (retried), %d local decisions",
		elapsed.Round(time.Millisecond), map[bool]string{true: " and restarted after 300", false: ""}[restart],
		st.Upstream429s(), st.TooMany, tooMany, refused, local)
	if st.ByStatus[200] != 400 || st.ByStatus[204] != 40 {
		t.Errorf("sent %d messages and %d reactions, want 400 and 40 (%v)", st.ByStatus[200], st.ByStatus[204], st.ByStatus)
	}
	if local == 0 {
		t.Error("no decision was made in memory: the outage was not seen")
	}
	// During the outage each gateway keeps at least one request per window
	// of every bucket, so that nothing stalls: a bucket whose limit is
	// below the number of gateways (reactions: 1 per 250ms) may then get
	// two requests in one window. Every other limit holds: the global
	// limit and the message buckets see no 429.
	for route, n := range tooMany {
		if route != "reactions" {
			t.Errorf("Discord answered %d 429s for %s during the outage", n, route)
		}
	}
	if st.TooMany["global"] != 0 {
		t.Errorf("Discord answered %d global 429s", st.TooMany["global"])
	}
	// How often gateways meet on the reaction bucket depends on how many
	// reactions fall in the outage (the slower the host, the more): it is
	// logged above, not bounded.
	if !restart {
		return
	}
	<-restarted
	within(t, 5*time.Second, "every store back on Redis", func() bool {
		for _, s := range c.stores {
			if !s.Stats().Up {
				return false
			}
		}
		return true
	})
}

// upDown waits until every store is up (or down).
func upDown(t *testing.T, up bool, stores ...*RedisStore) {
	t.Helper()
	within(t, 10*time.Second, "stores up or down", func() bool {
		for _, s := range stores {
			if s.Stats().Up != up {
				return false
			}
		}
		return true
	})
}

// TestRedisOutageQuiet: when Redis is lost, a gateway does not know what
// the others have in flight; windows ending soon are taken as spent and
// global requests wait a global window, so the others' requests and its
// own cannot add up past a limit.
func TestRedisOutageQuiet(t *testing.T) {
	srv := redistest.Start(t, redistest.FreePort(t))
	prefix := testPrefix()
	a, b := testRedisStore(t, srv.URL, prefix, fastTimings), testRedisStore(t, srv.URL, prefix, fastTimings)
	within(t, 5*time.Second, "two instances announced", func() bool {
		return a.Stats().Instances == 2 && b.Stats().Instances == 2
	})
	rules := &Rules{GlobalLimit: 10, GlobalWindow: time.Second}
	p := Plan{Cred: "c", Route: "res", Direct: true, Rules: rules}
	now := time.Now()
	g := take(t, b, p, now)
	// b learns the window: 5 per 3s, 1 used.
	settle(t, b, p, g, answer("res", 5, 4, now.Add(3*time.Second).UnixMilli(), 3*time.Second), now)
	for i := range 4 { // a sends the 4 left; they are on their way
		if g := take(t, a, p, time.Now()); !g.OK {
			t.Fatalf("a's request %d: %+v", i, g)
		}
	}
	srv.Kill()
	d := take(t, b, p, time.Now())
	if b.Stats().Up {
		t.Fatal("the store did not notice the outage")
	}
	if d.OK {
		t.Fatal("b sent a 6th request in a window of 5 (its half of the window looked unused)")
	}
	if wait := time.Until(d.Until); d.Scope != ScopeBucket || wait <= 2*time.Second || wait > 3100*time.Millisecond {
		t.Fatalf("refused %+v, %v from now; want the window's end in about 3s", d, wait)
	}
	gp := Plan{Cred: "c", Global: true, Rules: rules}
	if d := take(t, b, gp, time.Now()); d.OK || d.Scope != ScopeGlobal || time.Until(d.Until) > time.Second {
		t.Fatalf("a global request at the start of the outage: %+v", d)
	}
}

// TestRedisCarryBack: Redis restarts empty during an outage. The answers
// the gateway saw meanwhile and the reservation its fallback still has
// out are carried back, so another gateway reading the new Redis neither
// probes a route already known nor spends a reservation twice; and no
// lease is left behind.
func TestRedisCarryBack(t *testing.T) {
	port := redistest.FreePort(t)
	srv := redistest.Start(t, port)
	prefix := testPrefix()
	a := testRedisStore(t, srv.URL, prefix, fastTimings)
	rules := &Rules{}
	p := Plan{Cred: "c", Route: "GET /r", Major: "1", Rules: rules}
	now := time.Now()
	g1 := take(t, a, p, now)
	if !g1.OK || !g1.Probe || g1.Lease <= 0 {
		t.Fatalf("probe: %+v", g1)
	}
	srv.Kill()
	// The answer comes during the outage: 2 per 30s, 1 used.
	window := time.Now().Add(30 * time.Second)
	settle(t, a, p, g1, answer("h", 2, 1, window.UnixMilli(), 30*time.Second), time.Now())
	if a.Stats().Up {
		t.Fatal("the store did not notice the outage")
	}
	g2 := take(t, a, p, time.Now())
	if !g2.OK || g2.Lease >= 0 {
		t.Fatalf("the fallback's grant: %+v", g2)
	}
	srv = redistest.Start(t, port)
	upDown(t, true, a)
	b := testRedisStore(t, srv.URL, prefix, fastTimings)
	if d := take(t, b, p, time.Now()); d.OK || d.Scope != ScopeBucket || time.Until(d.Until) < 25*time.Second {
		t.Fatalf("another gateway after the restart: %+v; want refused until the window ends (1 used, 1 out of 2)", d)
	}
	settle(t, a, p, g2, answer("h", 2, 0, window.UnixMilli(), 30*time.Second), time.Now())
	snap := snapshot(t, b, "c", p.Route, "1")
	if snap.Name != "h" || snap.Limit != 2 || snap.Used != 2 || snap.InFlight != 0 {
		t.Fatalf("bucket in redis after the outage: %+v", snap)
	}
}

// TestRedisPauseCarriesBack: Redis stops answering for a while but keeps
// its state (CLIENT PAUSE: a network partition, a failover): a request
// granted before and answered during the pause has its reservation
// released on return, instead of holding its route for a whole lease.
func TestRedisPauseCarriesBack(t *testing.T) {
	url := redistest.URL(t)
	prefix := testPrefix()
	a := testRedisStore(t, url, prefix, fastTimings)
	b := testRedisStore(t, url, prefix, fastTimings)
	rules := &Rules{}
	p := Plan{Cred: "c", Route: "GET /p", Major: "1", Rules: rules}
	g := take(t, a, p, time.Now())
	if !g.OK || !g.Probe {
		t.Fatalf("probe: %+v", g)
	}
	admin := redis.NewClient(mustParseURL(t, url))
	defer admin.Close()
	if err := admin.Do(context.Background(), "CLIENT", "PAUSE", 1500, "ALL").Err(); err != nil {
		t.Fatal(err)
	}
	settle(t, a, p, g, answer("ph", 5, 4, time.Now().Add(time.Minute).UnixMilli(), time.Minute), time.Now())
	if a.Stats().Up {
		t.Fatal("the store did not notice the pause")
	}
	upDown(t, true, a, b)
	d := take(t, b, p, time.Now())
	if !d.OK || d.Probe || d.Bucket != "ph" {
		t.Fatalf("after the pause: %+v; want a grant from the learned bucket", d)
	}
	if snap := snapshot(t, b, "c", p.Route, "1"); snap.Used != 1 || snap.InFlight != 1 {
		t.Fatalf("bucket after the pause: %+v", snap)
	}
}

// TestRedisInstancesCounted: stores announce their process in the rate
// limiter's set of instances; two stores of one process count once, a
// store of another process adds one, and a closed store leaves at once.
func TestRedisInstancesCounted(t *testing.T) {
	srv := redistest.Start(t, redistest.FreePort(t))
	same := func(o *RedisOptions) { fastTimings(o); o.InstanceID = fleet.InstanceID() }
	a := testRedisStore(t, srv.URL, testPrefix(), same)
	b := testRedisStore(t, srv.URL, testPrefix(), same)
	other := testRedisStore(t, srv.URL, testPrefix(), fastTimings)
	within(t, 5*time.Second, "two instances counted", func() bool {
		return a.Stats().Instances == 2 && b.Stats().Instances == 2 && other.Stats().Instances == 2
	})
	client := redis.NewClient(mustParseURL(t, srv.URL))
	defer client.Close()
	if ids, err := client.ZRange(context.Background(), fleet.InstancesKey, 0, -1).Result(); err != nil || len(ids) != 2 {
		t.Fatalf("%s holds %q (%v)", fleet.InstancesKey, ids, err)
	}
	_ = other.Close()
	within(t, 5*time.Second, "one instance left", func() bool { return a.Stats().Instances == 1 })
}
