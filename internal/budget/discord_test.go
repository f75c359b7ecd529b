package budget

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	discordsim "github.com/byteproxy/byteproxy/internal/upstreamsim/discord"
)

const botToken = "test-bot-token"

func startDiscord(t *testing.T, mod func(*discordsim.Config)) *discordsim.Server {
	t.Helper()
	cfg := discordsim.Config{Tokens: []string{botToken}}
	if mod != nil {
		mod(&cfg)
	}
	s, err := discordsim.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// testDiscordConfig is Discord's preset with the slack the simulator
// needs (on loopback responses come back within a millisecond).
func testDiscordConfig() Config {
	c := DiscordConfig()
	c.ResetSlack = 10 * time.Millisecond
	c.GlobalSlack = 10 * time.Millisecond
	return c
}

func discordForwarder(e *Engine, sim *discordsim.Server, token string) *forwarder {
	return newForwarder(e, sim.URL, CredentialID("discord.com", token), "Bot "+token)
}

// lowerBound is the least time from the first to the last of n requests
// that a limit of limit per window lets through.
func lowerBound(n, limit int, window time.Duration) time.Duration {
	if n <= 0 {
		return 0
	}
	return time.Duration((n-1)/limit) * window
}

// ratioBound is how far above the limits' minimum a run may take: 10%,
// relaxed under the race detector (which slows every request down).
func ratioBound() float64 {
	if raceEnabled {
		return 1.5
	}
	return 1.10
}

var channels = []string{"100000000000000001", "100000000000000002", "100000000000000003", "100000000000000004"}

// runBots is issue 14's run: 8 bots share one bot token; each sends 50
// messages over 4 channels and reacts to every 10th of its messages (the
// 1st, 11th, ...: a reaction never trails the last window). Like
// discord.js, a bot queues its requests per route bucket and sends each
// queue one request at a time: one queue per channel here. With retry, a
// bot refused by the gateway waits the retry-after it was given and sends
// again, and so it does after a 429 from Discord; without, it gives the
// message up. Bot b goes through gateway
// gws[b % len(gws)].
func runBots(t *testing.T, gws []*forwarder, retry bool) (refused int64) {
	var wg sync.WaitGroup
	var n atomic.Int64
	send := func(f *forwarder, bot, method, path string) result {
		for range 100 {
			r := f.do(context.Background(), bot, method, path, -1)
			if r.err != nil {
				t.Errorf("%s %s: %v", method, path, r.err)
				return r
			}
			if r.status == http.StatusTooManyRequests && r.refusal == nil && retry {
				// Discord refused it: like discord.js, wait and send again
				// (the simulator has counted the 429).
				secs, _ := strconv.Atoi(r.header.Get("Retry-After"))
				time.Sleep(time.Duration(max(secs, 1)) * time.Second)
				continue
			}
			if r.refusal == nil || !retry {
				if r.refusal != nil {
					n.Add(1)
				}
				return r
			}
			n.Add(1)
			time.Sleep(r.refusal.RetryAfter)
		}
		t.Errorf("%s %s: refused 100 times", method, path)
		return result{}
	}
	for b := range 8 {
		for c, ch := range channels {
			wg.Add(1)
			go func() {
				defer wg.Done()
				f := gws[b%len(gws)]
				bot := "bot-" + strconv.Itoa(b)
				for i := range 50 {
					if (b+i)%len(channels) != c {
						continue
					}
					r := send(f, bot, "POST", "/api/v10/channels/"+ch+"/messages")
					if id := r.id(); i%10 == 0 && id != "" {
						send(f, bot, "PUT", "/api/v10/channels/"+ch+"/messages/"+id+"/reactions/%F0%9F%91%8D/@me")
					}
				}
			}()
		}
	}
	wg.Wait()
	return n.Load()
}

// checkBotsRun checks what Discord saw of runBots with retries: every
// message and reaction, no 429, no invalid request, no refusal. It
// returns the run's time over the least the simulator's limits allow.
func checkBotsRun(t *testing.T, sim *discordsim.Server, elapsed time.Duration, refused int64) float64 {
	t.Helper()
	st := sim.Stats()
	if n := st.Upstream429s(); n != 0 {
		t.Errorf("Discord answered %d 429s (%v); want none", n, st.TooMany)
	}
	if st.ByStatus[200] != 400 || st.ByStatus[204] != 40 {
		t.Errorf("sent %d messages and %d reactions, want 400 and 40 (%v)", st.ByStatus[200], st.ByStatus[204], st.ByStatus)
	}
	if refused != 0 {
		t.Errorf("%d requests refused by the gateway; the waits fit in max_wait", refused)
	}
	if n := sim.Invalid(10 * time.Minute); n != 0 {
		t.Errorf("%d invalid requests", n)
	}
	b := discordsim.FastBuckets()
	minimum := max(
		lowerBound(100, b[discordsim.HashMessages].Limit, b[discordsim.HashMessages].Window), // per channel
		lowerBound(10, b[discordsim.HashReactions].Limit, b[discordsim.HashReactions].Window),
		lowerBound(440, 50, time.Second), // global
	)
	ratio := float64(elapsed) / float64(minimum)
	t.Logf("440 requests in %v; the limits allow %v at best: ratio %.3f", elapsed.Round(time.Millisecond), minimum, ratio)
	return ratio
}

// TestDiscordBotsShareOneToken is the promise: eight bots sharing one
// token through the budget get no 429 from Discord, and take no longer
// than the limits make necessary (within 10%). The same run without the
// budget gets 429s.
func TestDiscordBotsShareOneToken(t *testing.T) {
	t.Run("budget", func(t *testing.T) {
		sim := startDiscord(t, nil)
		e := New(testDiscordConfig(), testStore(t))
		f := discordForwarder(e, sim, botToken)
		start := time.Now()
		refused := runBots(t, []*forwarder{f}, true)
		elapsed := time.Since(start)

		ratio := checkBotsRun(t, sim, elapsed, refused)
		t.Logf("engine %+v", e.Stats())
		if ratio > ratioBound() {
			t.Errorf("took %.2fx the minimum, want at most %.2fx", ratio, ratioBound())
		}
	})
	t.Run("without budget", func(t *testing.T) {
		sim := startDiscord(t, nil)
		runBots(t, []*forwarder{discordForwarder(nil, sim, botToken)}, false)
		st := sim.Stats()
		t.Logf("without the budget: %d 429s %v", st.Upstream429s(), st.TooMany)
		if st.Upstream429s() == 0 {
			t.Fatal("the same run without the budget got no 429: the test cannot fail")
		}
	})
}

// TestDiscordSharedBucketHash: creating and editing a message share one
// bucket hash on Discord; the engine learns it and spends both from one
// budget (two budgets would send twice the limit).
func TestDiscordSharedBucketHash(t *testing.T) {
	sim := startDiscord(t, nil)
	store := testStore(t)
	e := New(testDiscordConfig(), store)
	f := discordForwarder(e, sim, botToken)
	ch := channels[0]
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 8 {
				path, method := "/api/v10/channels/"+ch+"/messages", "POST"
				if (g+i)%2 == 1 {
					path, method = "/api/v10/channels/"+ch+"/messages/"+strconv.Itoa(1000+i), "PATCH"
				}
				if r := f.do(context.Background(), "c", method, path, -1); r.status != 200 {
					t.Errorf("%s %s: %d %v %v", method, path, r.status, r.refusal, r.err)
				}
			}
		}()
	}
	wg.Wait()
	if n := sim.Stats().Upstream429s(); n != 0 {
		t.Fatalf("%d 429s", n)
	}
	cred := CredentialID("discord.com", botToken)
	for _, route := range []string{"POST /channels/{id}/messages", "PATCH /channels/{id}/messages/{id}"} {
		if b := snapshot(t, store, cred, route, ch); b.Name != discordsim.HashMessages {
			t.Errorf("%s spends from %+v, want %s", route, b, discordsim.HashMessages)
		}
	}
}

// TestDiscordGlobalLimit: when the global limit binds (many channels), no
// 429 either, and the run is as fast as 50 per second allows.
func TestDiscordGlobalLimit(t *testing.T) {
	sim := startDiscord(t, nil)
	e := New(testDiscordConfig(), testStore(t))
	f := discordForwarder(e, sim, botToken)
	start := time.Now()
	var wg sync.WaitGroup
	for g := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 10 {
				path := fmt.Sprintf("/api/v10/channels/2000000000000000%02d", (g*2+i%2)%40)
				if r := f.do(context.Background(), "c", "GET", path, -1); r.status != 200 {
					t.Errorf("GET %s: %d %v %v", path, r.status, r.refusal, r.err)
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	st := sim.Stats()
	if n := st.Upstream429s(); n != 0 {
		t.Fatalf("%d 429s %v", n, st.TooMany)
	}
	if peak := sim.MaxArrivals(time.Second); peak > 50 {
		t.Fatalf("%d requests arrived within a second", peak)
	}
	minimum := lowerBound(200, 50, time.Second)
	ratio := float64(elapsed) / float64(minimum)
	t.Logf("200 requests in %v; the global limit allows %v at best: ratio %.3f", elapsed.Round(time.Millisecond), minimum, ratio)
	if ratio > ratioBound() {
		t.Errorf("took %.2fx the minimum, want at most %.2fx", ratio, ratioBound())
	}
}

// TestDiscordUnknownRouteOneInFlight: before the first answer tells the
// bucket, a route sends one request at a time; a burst on a fresh route
// with a limit of 1 gets no 429.
func TestDiscordUnknownRouteOneInFlight(t *testing.T) {
	sim := startDiscord(t, nil)
	e := New(testDiscordConfig(), testStore(t))
	f := discordForwarder(e, sim, botToken)
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			path := "/api/v10/channels/" + channels[1] + "/messages/" + strconv.Itoa(500+i) + "/reactions/%F0%9F%91%8D/@me"
			if r := f.do(context.Background(), "c", "PUT", path, -1); r.status != 204 {
				t.Errorf("PUT: %d %v %v", r.status, r.refusal, r.err)
			}
		}()
	}
	wg.Wait()
	if st := sim.Stats(); st.Upstream429s() != 0 || st.ByStatus[204] != 6 {
		t.Fatalf("%v", st.ByStatus)
	}
}

// TestDiscordGlobal429 locks every request the global limit covers until
// Retry-After; webhooks with their token are exempt; a request that may
// wait is held and then sent.
func TestDiscordGlobal429(t *testing.T) {
	sim := startDiscord(t, nil)
	e := New(testDiscordConfig(), testStore(t))
	f := discordForwarder(e, sim, botToken)
	sim.ForceGlobal(botToken, 300*time.Millisecond)
	ctx := context.Background()
	if r := f.do(ctx, "c", "GET", "/api/v10/users/@me", -1); r.status != 429 {
		t.Fatalf("first request: %d", r.status)
	}
	before := sim.Stats().Received
	r := f.do(ctx, "c", "GET", "/api/v10/channels/"+channels[0], 0)
	if r.refusal == nil || r.refusal.Scope != ScopeGlobal || !r.refusal.Global || r.refusal.DiscordScope() != "global" {
		t.Fatalf("during the global lock: %d %+v", r.status, r.refusal)
	}
	// Retry-After is whole seconds (1): the lock ends a second after the
	// 429 plus slack, never earlier.
	if ra := r.refusal.RetryAfter; ra <= 0 || ra > time.Second+50*time.Millisecond {
		t.Fatalf("retry after %v", ra)
	}
	if w := f.do(ctx, "c", "POST", "/api/v10/webhooks/42/hook-token", 0); w.status != 200 {
		t.Fatalf("webhook with its token during the global lock: %d %+v", w.status, w.refusal)
	}
	if got := sim.Stats().Received - before; got != 1 {
		t.Fatalf("%d requests reached Discord during the lock, want only the webhook", got)
	}
	held := f.do(ctx, "c", "GET", "/api/v10/channels/"+channels[0], 2*time.Second)
	if held.status != 200 || held.ticket.Waited <= 0 {
		t.Fatalf("a request that may wait 2s: %d waited %v %+v", held.status, held.ticket.Waited, held.refusal)
	}
	if st := e.Stats(); st.Upstream429s["global"] != 1 || st.Held != 1 || st.RefusedBy["global"] != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// TestDiscordSharedScope: a 429 for a resource shared with others locks
// that bucket only and is not an invalid request.
func TestDiscordSharedScope(t *testing.T) {
	sim := startDiscord(t, func(c *discordsim.Config) {
		c.Buckets = discordsim.FastBuckets()
		c.Buckets[discordsim.HashChannel] = discordsim.Bucket{Limit: 5, Window: 500 * time.Millisecond, SharedLimit: 2, SharedWindow: 2 * time.Second}
	})
	e := New(testDiscordConfig(), testStore(t))
	f := discordForwarder(e, sim, botToken)
	ctx := context.Background()
	path := "/api/v10/channels/" + channels[0]
	for i, want := range []int{200, 200, 429} {
		if r := f.do(ctx, "c", "GET", path, 0); r.status != want {
			t.Fatalf("request %d: %d %+v, want %d", i, r.status, r.refusal, want)
		}
	}
	r := f.do(ctx, "c", "GET", path, 0)
	if r.refusal == nil || r.refusal.Scope != ScopeShared || r.refusal.DiscordScope() != "shared" || r.refusal.Global {
		t.Fatalf("after a shared 429: %d %+v", r.status, r.refusal)
	}
	if other := f.do(ctx, "c", "GET", "/api/v10/channels/"+channels[1], 0); other.status != 200 {
		t.Fatalf("another channel: %d %+v", other.status, other.refusal)
	}
	if n := sim.Invalid(time.Minute); n != 0 {
		t.Fatalf("%d invalid requests at Discord", n)
	}
	if st := e.Stats(); st.Invalid != 0 || st.Upstream429s["shared"] != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// TestDiscordUnauthorizedLocks: a 401 for the bot token locks the
// credential; Discord sees one request, not a stream of 401s.
func TestDiscordUnauthorizedLocks(t *testing.T) {
	sim := startDiscord(t, nil)
	cfg := testDiscordConfig()
	cfg.UnauthorizedLock = time.Minute
	e := New(cfg, testStore(t))
	f := discordForwarder(e, sim, "wrong-token")
	ctx := context.Background()
	if r := f.do(ctx, "c", "GET", "/api/v10/users/@me", -1); r.status != 401 {
		t.Fatalf("first request: %d", r.status)
	}
	for range 5 {
		r := f.do(ctx, "c", "GET", "/api/v10/channels/"+channels[0], -1)
		if r.refusal == nil || r.refusal.Scope != ScopeUnauthorized || r.status != 503 {
			t.Fatalf("after the 401: %d %+v", r.status, r.refusal)
		}
		if ra := r.refusal.RetryAfter; ra < 59*time.Second || ra > time.Minute+time.Second {
			t.Fatalf("retry after %v", ra)
		}
	}
	if n := sim.Stats().Received; n != 1 {
		t.Fatalf("Discord received %d requests, want 1", n)
	}
}

// TestBanGuardTrips: at the threshold of invalid responses the credential
// stops sending, answers 503 with the time the window allows again, and
// logs the trip once.
func TestBanGuardTrips(t *testing.T) {
	sim := startDiscord(t, nil)
	sim.Forbid("666666666666666666")
	cfg := testDiscordConfig()
	cfg.BanThreshold = 5
	cfg.BanWindow = 3 * time.Second
	e := New(cfg, testStore(t))
	f := discordForwarder(e, sim, botToken)
	ctx := context.Background()
	for i := range 5 {
		if r := f.do(ctx, "c", "GET", "/api/v10/channels/666666666666666666", -1); r.status != 403 {
			t.Fatalf("request %d: %d %+v", i, r.status, r.refusal)
		}
	}
	for range 3 {
		r := f.do(ctx, "c", "GET", "/api/v10/channels/"+channels[0], -1)
		if r.refusal == nil || r.refusal.Scope != ScopeBanGuard || r.status != http.StatusServiceUnavailable {
			t.Fatalf("past the threshold: %d %+v", r.status, r.refusal)
		}
		if ra := r.refusal.RetryAfter; ra <= 0 || ra > cfg.BanWindow+time.Second {
			t.Fatalf("retry after %v", ra)
		}
	}
	if n := sim.Stats().Received; n != 5 {
		t.Fatalf("Discord received %d requests, want the 5 below the threshold", n)
	}
	if st := e.Stats(); st.BanTrips != 1 || st.RefusedBy["ban_guard"] != 3 || st.Invalid != 5 {
		t.Fatalf("stats %+v", st)
	}
}
