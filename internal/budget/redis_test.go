package budget

import (
	"context"
	"testing"
	"time"
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
		s := testRedisStore(t, url, prefix, mod)
		c.stores = append(c.stores, s)
		c.engines = append(c.engines, New(cfg(), s))
	}
	return c
}

// stats sums the engines' counters of upstream 429s and refusals.
func (c *cluster) stats() (upstream429s, refused int64) {
	for _, e := range c.engines {
		st := e.Stats()
		for _, n := range st.Upstream429s {
			upstream429s += n
		}
		refused += st.Refused
	}
	return
}

// TestRedisDiscordBotsShareOneToken is issue 14's run through three
// gateways on one Redis: the bots are spread over them, and Discord sees
// no 429, as through one gateway.
func TestRedisDiscordBotsShareOneToken(t *testing.T) {
	url := testRedisURL(t)
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
	_ = context.Background
}
