package services

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/byteproxy/byteproxy/internal/testutil"
	"github.com/byteproxy/byteproxy/internal/testutil/short"
	discordsim "github.com/byteproxy/byteproxy/internal/upstreamsim/discord"
)

// testRedisURL is the Redis for tests: BYTEPROXY_TEST_REDIS, else a
// redis-server started for the test when one is installed. Without
// either the test is skipped, except under CI, where it fails.
func testRedisURL(t *testing.T) string {
	t.Helper()
	short.Skip(t, "needs Redis")
	if url := os.Getenv("BYTEPROXY_TEST_REDIS"); url != "" {
		return url
	}
	if _, err := exec.LookPath("redis-server"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI=true but no Redis: set BYTEPROXY_TEST_REDIS or install redis-server")
		}
		t.Skip("no Redis: set BYTEPROXY_TEST_REDIS or install redis-server")
	}
	port := testutil.FreePort(t)
	cmd := exec.Command("redis-server", "--port", fmt.Sprint(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", t.TempDir())
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 200*time.Millisecond); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("redis-server did not listen within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Sprintf("redis://127.0.0.1:%d/0", port)
}

// TestBudgetDiscordBotsCluster is issue 14's run through three gateways
// sharing one Redis (the bots spread over them): the budget is one for the
// cluster, so Discord answers no 429.
func TestBudgetDiscordBotsCluster(t *testing.T) {
	url := testRedisURL(t)
	t.Run("without redis", func(t *testing.T) {
		// Three gateways that do not share: each spends the whole budget.
		sim := startDiscordSim(t, nil)
		cf := discordCaddyfile(sim.URL, "upstream_limits {\n\t\t\t\treset_slack 10ms\n\t\t\t}")
		gws := []*testutil.Instance{startBudgetGateway(t, cf), startBudgetGateway(t, cf), startBudgetGateway(t, cf)}
		runDiscordBotsOn(t, gws, false)
		if st := sim.Stats(); st.Upstream429s() == 0 {
			t.Fatal("three gateways without a shared budget got no 429: the test cannot fail")
		}
	})
	sim := startDiscordSim(t, nil)
	cf := strings.Replace(discordCaddyfile(sim.URL, "upstream_limits {\n\t\t\t\treset_slack 10ms\n\t\t\t}"),
		"byteproxy {", "byteproxy {\n\t\tredis "+url, 1)
	var gws []*testutil.Instance
	for range 3 {
		gws = append(gws, startBudgetGateway(t, cf))
	}
	start := time.Now()
	limited := runDiscordBotsOn(t, gws, true)
	elapsed := time.Since(start)
	st := sim.Stats()
	if n := st.Upstream429s(); n != 0 {
		t.Errorf("Discord answered %d 429s (%v) to three gateways on one Redis; want none", n, st.TooMany)
	}
	if st.ByStatus[200] != 400 || st.ByStatus[204] != 40 {
		t.Errorf("Discord got %d messages and %d reactions, want 400 and 40 (%v)", st.ByStatus[200], st.ByStatus[204], st.ByStatus)
	}
	b := discordsim.FastBuckets()
	minimum := max(lowerBound(100, b[discordsim.HashMessages].Limit, b[discordsim.HashMessages].Window), lowerBound(440, 50, time.Second))
	t.Logf("three gateways: 440 requests in %v (the limits allow %v: ratio %.3f); %d answered 429 by a gateway and retried",
		elapsed.Round(time.Millisecond), minimum, float64(elapsed)/float64(minimum), limited)
	for i, gw := range gws {
		if strings.Contains(gw.Logs(), "upstream budgets are decided in memory") {
			t.Errorf("gateway %d lost Redis during the run", i)
		}
	}
}
