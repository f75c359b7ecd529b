package services

import (
	"context"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/byteproxy/byteproxy/internal/testutil"
	discordsim "github.com/byteproxy/byteproxy/internal/upstreamsim/discord"
)

// waitFor polls the gateway until cond holds (state observable only by
// polling, as the number of held requests), at most d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func waiting(t *testing.T, gw *testutil.Instance) float64 {
	return metric(t, gw, "byteproxy_budget_waiting", "service", "discord")
}

// burst sends n messages to channel at once from client c and returns the
// replies.
func burst(gw *testutil.Instance, c *http.Client, n int, channel string, out chan<- reply, wg *sync.WaitGroup) {
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out <- send(context.Background(), c, "POST", discordURL(gw, "/channels/"+channel+"/messages"))
		}()
	}
}

// fairRun queues heavy's requests first, then each of light's, all for one
// bucket (5 per 500ms), and returns the replies by consumer in the order
// they completed.
func fairRun(t *testing.T, limits string, heavy int, light map[int]int) map[int][]reply {
	sim := startDiscordSim(t, nil)
	gw := startBudgetGateway(t, discordCaddyfile(sim.URL, limits))
	channel := simChannels[2]
	type tagged struct {
		who int
		r   reply
	}
	all := make(chan tagged, 1024)
	var wg sync.WaitGroup
	start := func(who, n int) {
		out := make(chan reply, n)
		var inner sync.WaitGroup
		burst(gw, consumerClient(who), n, channel, out, &inner)
		wg.Add(1)
		go func() {
			defer wg.Done()
			inner.Wait()
			close(out)
			for r := range out {
				all <- tagged{who, r}
			}
		}()
	}
	start(40, heavy)
	// The heavy consumer's requests are held (5 went through at once).
	waitFor(t, 10*time.Second, "the heavy consumer's requests are held", func() bool { return waiting(t, gw) >= float64(heavy-5) })
	for who, n := range light {
		start(who, n)
	}
	wg.Wait()
	close(all)
	by := map[int][]reply{}
	for tr := range all {
		by[tr.who] = append(by[tr.who], tr.r)
	}
	for who := range by {
		sort.Slice(by[who], func(i, j int) bool { return by[who][i].done.Before(by[who][j].done) })
	}
	if st := sim.Stats(); st.Upstream429s() != 0 {
		t.Errorf("Discord answered %d 429s", st.Upstream429s())
	}
	return by
}

// before counts rs's 200s that completed before t.
func before(rs []reply, t time.Time) int {
	n := 0
	for _, r := range rs {
		if r.status == 200 && r.done.Before(t) {
			n++
		}
	}
	return n
}

func lastOK(t *testing.T, who string, rs []reply) time.Time {
	t.Helper()
	var last time.Time
	for _, r := range rs {
		if r.status != 200 {
			t.Fatalf("%s got %d %s, want every request through", who, r.status, r.body)
		}
		if r.done.After(last) {
			last = r.done
		}
	}
	return last
}

// TestBudgetFairShare: a consumer that queues ten times more than two
// others gets no more than its share while they wait: with fair queueing
// the others' requests are served in turn with its own, not after all of
// them (first come, first served would send the heavy consumer's 45 held
// requests first).
func TestBudgetFairShare(t *testing.T) {
	by := fairRun(t, "upstream_limits {\n\t\t\t\treset_slack 10ms\n\t\t\t\tmax_wait 15s\n\t\t\t}", 50, map[int]int{41: 5, 42: 5})
	end := lastOK(t, "127.0.0.41", by[41])
	if e := lastOK(t, "127.0.0.42", by[42]); e.After(end) {
		end = e
	}
	heavy := before(by[40], end)
	t.Logf("the heavy consumer had %d of its 50 requests through when both light ones were done", heavy)
	// 5 sent before anything waited, then one in three while all three
	// wait: 5 of the heavy one's for the light ones' 10; a window's worth
	// (5) of slack for the order the answers arrive in.
	if heavy > 15 {
		t.Errorf("the heavy consumer got %d requests through before the light ones' 10: more than its share", heavy)
	}
}

// TestBudgetWeights: a consumer with weight 3 gets three times the share
// of one with weight 1 while both wait.
func TestBudgetWeights(t *testing.T) {
	by := fairRun(t, "upstream_limits {\n\t\t\t\treset_slack 10ms\n\t\t\t\tmax_wait 15s\n\t\t\t\tweight 127.0.0.43 3\n\t\t\t}", 30, map[int]int{43: 15})
	end := lastOK(t, "127.0.0.43", by[43])
	heavy := before(by[40], end)
	t.Logf("the weight-1 consumer had %d of its 30 requests through when the weight-3 one's 15 were done", heavy)
	// 5 before anything waited, then one for each three of the weighted
	// one's (5 for its 15); equal weights would give 15 + 5.
	if heavy > 13 {
		t.Errorf("the weight-1 consumer got %d requests through during the weight-3 one's 15: weights ignored", heavy)
	}
}

// TestBudgetClientLeavesWhileHeld: a client that disconnects while its
// request is held frees its place in the queue (max_queue 1 here), and the
// request is never sent.
func TestBudgetClientLeavesWhileHeld(t *testing.T) {
	sim := startDiscordSim(t, func(c *discordsim.Config) {
		c.Buckets = discordsim.FastBuckets()
		c.Buckets[discordsim.HashMessages] = discordsim.Bucket{Limit: 5, Window: 2 * time.Second}
	})
	gw := startBudgetGateway(t, discordCaddyfile(sim.URL, "upstream_limits {\n\t\t\t\treset_slack 10ms\n\t\t\t\tmax_queue 1\n\t\t\t}"))
	c := consumerClient(50)
	spendBucket(t, c, gw, simChannels[3])

	ctx, cancel := context.WithCancel(context.Background())
	left := make(chan reply, 1)
	go func() { left <- send(ctx, c, "POST", discordURL(gw, "/channels/"+simChannels[3]+"/messages")) }()
	waitFor(t, 5*time.Second, "the request is held", func() bool { return waiting(t, gw) == 1 })
	cancel()
	if r := <-left; r.err == nil {
		t.Fatalf("the abandoned request was answered: %d", r.status)
	}
	waitFor(t, 5*time.Second, "the abandoned request leaves the queue", func() bool { return waiting(t, gw) == 0 })

	r := send(context.Background(), consumerClient(51), "POST", discordURL(gw, "/channels/"+simChannels[3]+"/messages"))
	if r.status != 200 {
		t.Fatalf("the next request: %d %s; the queue's one place should have been free", r.status, r.body)
	}
	if st := sim.Stats(); st.Received != 6 || st.Upstream429s() != 0 {
		t.Errorf("Discord received %d requests (%d 429s, %v), want 6: the abandoned one is never sent", st.Received, st.Upstream429s(), st.ByStatus)
	}
}

// TestBudgetSurvivesReload: a reload in the middle keeps the budget's
// state: a bucket Discord said is spent stays spent, whether the reload
// leaves the service as it was or changes its upstream_limits. A fresh
// state would send the request to learn the bucket, and get Discord's 429.
func TestBudgetSurvivesReload(t *testing.T) {
	sim := startDiscordSim(t, func(c *discordsim.Config) {
		c.Buckets = discordsim.FastBuckets()
		c.Buckets[discordsim.HashMessages] = discordsim.Bucket{Limit: 5, Window: 20 * time.Second}
	})
	cf := discordCaddyfile(sim.URL, "upstream_limits {\n\t\t\t\treset_slack 10ms\n\t\t\t}")
	gw := startBudgetGateway(t, cf)
	c := consumerClient(52)
	spendBucket(t, c, gw, simChannels[0])
	refusedLocally := func(step string) {
		t.Helper()
		before := sim.Stats().Received
		r := send(context.Background(), c, "POST", discordURL(gw, "/channels/"+simChannels[0]+"/messages"), "Prefer", "wait=0")
		if r.status != 429 || sim.Stats().Received != before {
			t.Fatalf("%s: %d %s; want the gateway's 429 without sending", step, r.status, r.body)
		}
	}
	refusedLocally("before the reload")
	gw.Reload(strings.Replace(cf, "byteproxy {", "byteproxy {\n\t\tservice other {\n\t\t\tbase_url http://127.0.0.1:9/\n\t\t}", 1))
	refusedLocally("after a reload that kept the service")
	gw.Reload(strings.Replace(cf, "reset_slack 10ms", "reset_slack 10ms\n\t\t\t\tmax_wait 4s", 1))
	refusedLocally("after a reload that changed its upstream_limits")
	if st := sim.Stats(); st.Upstream429s() != 0 {
		t.Errorf("Discord answered %d 429s", st.Upstream429s())
	}
}

// TestBudgetReloadReleasesHeld: a request held by an engine that a reload
// retires (its settings changed) is answered 503 with a retry_after when
// the old configuration is cleaned up, not left hanging until max_wait.
func TestBudgetReloadReleasesHeld(t *testing.T) {
	sim := startDiscordSim(t, func(c *discordsim.Config) {
		c.Buckets = discordsim.FastBuckets()
		c.Buckets[discordsim.HashMessages] = discordsim.Bucket{Limit: 5, Window: 20 * time.Second}
	})
	cf := discordCaddyfile(sim.URL, "upstream_limits {\n\t\t\t\tmax_wait 30s\n\t\t\t}")
	gw := startBudgetGateway(t, cf)
	c := consumerClient(53)
	spendBucket(t, c, gw, simChannels[1])
	held := make(chan reply, 1)
	go func() {
		held <- send(context.Background(), c, "POST", discordURL(gw, "/channels/"+simChannels[1]+"/messages"))
	}()
	waitFor(t, 5*time.Second, "the request is held", func() bool { return waiting(t, gw) == 1 })
	reloaded := time.Now()
	gw.Reload(strings.Replace(cf, "max_wait 30s", "max_wait 29s", 1))
	select {
	case r := <-held:
		if r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" || r.retryAfter() <= 0 {
			t.Fatalf("the held request: %d Retry-After %q %s; want 503 with a retry_after", r.status, r.header.Get("Retry-After"), r.body)
		}
		t.Logf("answered %v after the reload: %s", time.Since(reloaded).Round(time.Millisecond), r.body)
	case <-time.After(15 * time.Second):
		t.Fatal("the held request was not answered within 15s of the reload (max_wait is 30s)")
	}
	if st := sim.Stats(); st.Received != 5 {
		t.Errorf("Discord received %d requests, want 5", st.Received)
	}
}
