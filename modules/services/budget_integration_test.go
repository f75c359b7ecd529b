package services

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/byteproxy/byteproxy/internal/testutil"
	discordsim "github.com/byteproxy/byteproxy/internal/upstreamsim/discord"
)

// Upstream budgets through the real gateway (issue 14): the built binary
// in front of the Discord and GitHub simulators of internal/upstreamsim.

const simBotToken = "sim-bot-token"

func startDiscordSim(t *testing.T, mod func(*discordsim.Config)) *discordsim.Server {
	t.Helper()
	cfg := discordsim.Config{Tokens: []string{simBotToken}}
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

// discordGateway is a gateway with the discord preset pointed at sim.
// limits is the upstream_limits line or block. The simulator's windows are
// Discord's scaled down ten times (500ms instead of 5s), so the reset slack
// is too: 10ms instead of the default 50ms.
const discordGateway = `{
	grace_period 200ms
	byteproxy {
		service discord {
			base_url {{SIM}}/api/
			auth bot {env.BP_SIM_BOT_TOKEN}
			{{LIMITS}}
		}
	}
}

:{{PORT}} {
	byteproxy
}
`

func discordCaddyfile(sim string, limits string) string {
	return strings.NewReplacer("{{SIM}}", sim, "{{LIMITS}}", limits).Replace(discordGateway)
}

func startBudgetGateway(t *testing.T, caddyfile string) *testutil.Instance {
	t.Helper()
	return testutil.Start(t, caddyfile, testutil.Options{Env: []string{"BP_SIM_BOT_TOKEN=" + simBotToken, "BP_SIM_GH_TOKEN=" + simGitHubToken}})
}

// consumerClient sends from its own loopback address (127.0.0.n), which is
// the consumer the gateway sees for a request without an API key.
func consumerClient(n int) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(n))}, Timeout: 5 * time.Second}
	return &http.Client{
		Transport: &http.Transport{DialContext: d.DialContext, MaxIdleConnsPerHost: 64, DisableCompression: true},
		Timeout:   30 * time.Second,
	}
}

// reply is what a client saw.
type reply struct {
	status int
	header http.Header
	body   []byte
	err    error
	done   time.Time
}

func (r reply) retryAfter() time.Duration {
	var v struct {
		RetryAfter float64 `json:"retry_after"`
	}
	_ = json.Unmarshal(r.body, &v)
	return time.Duration(v.RetryAfter * float64(time.Second))
}

func (r reply) id() string {
	var v struct {
		ID string `json:"id"`
	}
	_ = json.Unmarshal(r.body, &v)
	return v.ID
}

func send(ctx context.Context, c *http.Client, method, url string, headers ...string) reply {
	var body io.Reader
	if method == "POST" || method == "PATCH" {
		body = strings.NewReader(`{"content":"hi"}`)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		return reply{err: err}
	}
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		return reply{err: err, done: time.Now()}
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	return reply{status: resp.StatusCode, header: resp.Header, body: b, err: err, done: time.Now()}
}

var simChannels = []string{"100000000000000001", "100000000000000002", "100000000000000003", "100000000000000004"}

// runDiscordBots is issue 14's run through the gateway: 8 bots (8 client
// addresses, so 8 consumers) share the gateway's one bot token; each sends
// 50 messages over 4 channels and reacts to every 10th of its messages.
// Like discord.js, a bot queues its requests per route bucket and sends
// each queue one at a time: one queue per channel. With retry, a bot that
// gets a 429 waits its retry_after and sends again; without, it gives the
// message up. It returns the 429s the bots saw.
func runDiscordBots(t *testing.T, gw *testutil.Instance, retry bool) (limited int64) {
	return runDiscordBotsOn(t, []*testutil.Instance{gw}, retry)
}

// runDiscordBotsOn is runDiscordBots with the bots spread over gateways.
func runDiscordBotsOn(t *testing.T, gws []*testutil.Instance, retry bool) (limited int64) {
	var wg sync.WaitGroup
	var n atomic.Int64
	do := func(gw *testutil.Instance, c *http.Client, method, path string) reply {
		for range 100 {
			r := send(context.Background(), c, method, gw.URL("/proxy/discord/v10"+path))
			if r.err != nil {
				t.Errorf("%s %s: %v", method, path, r.err)
				return r
			}
			if r.status != http.StatusTooManyRequests {
				return r
			}
			n.Add(1)
			if !retry {
				return r
			}
			time.Sleep(r.retryAfter())
		}
		t.Errorf("%s %s: 429 a hundred times", method, path)
		return reply{}
	}
	for b := range 8 {
		c := consumerClient(10 + b)
		gw := gws[b%len(gws)]
		for ch, channel := range simChannels {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 50 {
					if (b+i)%len(simChannels) != ch {
						continue
					}
					r := do(gw, c, "POST", "/channels/"+channel+"/messages")
					if id := r.id(); i%10 == 0 && id != "" {
						do(gw, c, "PUT", "/channels/"+channel+"/messages/"+id+"/reactions/%F0%9F%91%8D/@me")
					}
				}
			}()
		}
	}
	wg.Wait()
	return n.Load()
}

// lowerBound is the least time from the first to the last of n requests
// that a limit of limit per window lets through.
func lowerBound(n, limit int, window time.Duration) time.Duration {
	return time.Duration((n-1)/limit) * window
}

// TestBudgetDiscordBots is the promise through one gateway: eight bots
// sharing the gateway's bot token get no 429 from Discord, take no longer
// than the simulator's limits make necessary (within 10%), and are never
// refused by the gateway (every wait fits in max_wait). The same run with
// upstream_limits off gets Discord's 429s, so the test can fail.
func TestBudgetDiscordBots(t *testing.T) {
	t.Run("budget", func(t *testing.T) {
		sim := startDiscordSim(t, nil)
		gw := startBudgetGateway(t, discordCaddyfile(sim.URL, "upstream_limits {\n\t\t\t\treset_slack 10ms\n\t\t\t}"))
		start := time.Now()
		limited := runDiscordBots(t, gw, true)
		elapsed := time.Since(start)

		st := sim.Stats()
		if n := st.Upstream429s(); n != 0 {
			t.Errorf("Discord answered %d 429s (%v); want none", n, st.TooMany)
		}
		if st.ByStatus[200] != 400 || st.ByStatus[204] != 40 {
			t.Errorf("Discord got %d messages and %d reactions, want 400 and 40 (%v)", st.ByStatus[200], st.ByStatus[204], st.ByStatus)
		}
		if limited != 0 {
			t.Errorf("the gateway answered %d requests with 429; every wait fits in max_wait", limited)
		}
		if n := sim.Invalid(10 * time.Minute); n != 0 {
			t.Errorf("%d invalid requests reached Discord", n)
		}
		b := discordsim.FastBuckets()
		minimum := max(
			lowerBound(100, b[discordsim.HashMessages].Limit, b[discordsim.HashMessages].Window), // per channel
			lowerBound(10, b[discordsim.HashReactions].Limit, b[discordsim.HashReactions].Window),
			lowerBound(440, 50, time.Second), // global
		)
		ratio := float64(elapsed) / float64(minimum)
		t.Logf("440 requests through the gateway in %v; the simulator's limits allow %v at best: ratio %.3f", elapsed.Round(time.Millisecond), minimum, ratio)
		bound := 1.10
		if raceEnabled {
			bound = 1.5
		}
		if ratio > bound {
			t.Errorf("took %.2fx the minimum, want at most %.2fx", ratio, bound)
		}
		if held := metric(t, gw, "byteproxy_budget_held_total", "service", "discord"); held == 0 {
			t.Error("byteproxy_budget_held_total is 0; requests were held")
		}
		if n := metric(t, gw, "byteproxy_upstream_rate_limited_total"); n != 0 {
			t.Errorf("byteproxy_upstream_rate_limited_total is %v, want 0", n)
		}
	})
	t.Run("off", func(t *testing.T) {
		sim := startDiscordSim(t, nil)
		gw := startBudgetGateway(t, discordCaddyfile(sim.URL, "upstream_limits off"))
		runDiscordBots(t, gw, false)
		st := sim.Stats()
		t.Logf("upstream_limits off: Discord answered %d 429s %v", st.Upstream429s(), st.TooMany)
		if st.Upstream429s() == 0 {
			t.Fatal("the same run with upstream_limits off got no 429 from Discord: the test cannot fail")
		}
		if n := metric(t, gw, "byteproxy_upstream_rate_limited_total", "service", "discord", "scope", "user"); n == 0 {
			t.Error("byteproxy_upstream_rate_limited_total{scope=user} is 0 after Discord's 429s")
		}
	})
}

// metric sums the series of a metric on the gateway's /metrics (admin
// endpoint) whose labels include the given pairs; 0 if there is none.
func metric(t *testing.T, gw *testutil.Instance, name string, labels ...string) float64 {
	t.Helper()
	resp, err := http.Get(gw.AdminURL("/metrics"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
lines:
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		series, value, ok := strings.Cut(line[len(name):], " ")
		if !ok {
			continue
		}
		if strings.HasPrefix(series, "{") {
			series, value, _ = strings.Cut(line[len(name):], "} ")
		}
		for i := 0; i+1 < len(labels); i += 2 {
			if !strings.Contains(series, labels[i]+`="`+labels[i+1]+`"`) {
				continue lines
			}
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", line, err)
		}
		sum += v
	}
	return sum
}

// checkNoSecret fails if the bot token shows in a response or the log.
func checkNoSecret(t *testing.T, what, text string) {
	t.Helper()
	for _, secret := range []string{simBotToken, simGitHubToken} {
		if strings.Contains(text, secret) {
			t.Errorf("%s holds the upstream token", what)
		}
	}
}

func discordURL(gw *testutil.Instance, path string) string {
	return gw.URL("/proxy/discord/v10" + path)
}

// spendBucket sends a channel's five messages (the bucket's limit) and
// checks they went through.
func spendBucket(t *testing.T, c *http.Client, gw *testutil.Instance, channel string) {
	t.Helper()
	for i := range 5 {
		if r := send(context.Background(), c, "POST", discordURL(gw, "/channels/"+channel+"/messages")); r.status != 200 {
			t.Fatalf("message %d: %d %s", i, r.status, r.body)
		}
	}
}

// TestBudgetPreferWaitZero: with Prefer: wait=0 a request the budget
// cannot send now is answered at once, in Discord's shape, with a
// retry_after exact to the millisecond: sent after it, the request goes
// through without a 429 from Discord. The answer says the preference was
// applied.
func TestBudgetPreferWaitZero(t *testing.T) {
	sim := startDiscordSim(t, func(c *discordsim.Config) {
		c.Buckets = discordsim.FastBuckets()
		c.Buckets[discordsim.HashMessages] = discordsim.Bucket{Limit: 5, Window: 2 * time.Second}
	})
	gw := startBudgetGateway(t, discordCaddyfile(sim.URL, "upstream_limits {\n\t\t\t\treset_slack 10ms\n\t\t\t}"))
	c := consumerClient(20)
	spendBucket(t, c, gw, simChannels[0])

	began := time.Now()
	r := send(context.Background(), c, "POST", discordURL(gw, "/channels/"+simChannels[0]+"/messages"), "Prefer", "wait=0")
	took := time.Since(began)
	if r.status != http.StatusTooManyRequests {
		t.Fatalf("status %d, want 429: %s", r.status, r.body)
	}
	if took > time.Second {
		t.Errorf("the refusal took %v; Prefer: wait=0 must not hold", took)
	}
	var body struct {
		Message    string  `json:"message"`
		RetryAfter float64 `json:"retry_after"`
		Global     *bool   `json:"global"`
		Code       *int    `json:"code"`
		Service    string  `json:"service"`
	}
	if err := json.Unmarshal(r.body, &body); err != nil || body.Global == nil || body.Code == nil || body.Service != "discord" {
		t.Fatalf("body %s: want Discord's shape with the service", r.body)
	}
	if *body.Global || r.header.Get("X-Ratelimit-Scope") != "user" || r.header.Get("X-Ratelimit-Global") != "" {
		t.Errorf("a bucket refusal: global %v, scope %q, X-RateLimit-Global %q", *body.Global, r.header.Get("X-Ratelimit-Scope"), r.header.Get("X-Ratelimit-Global"))
	}
	if r.header.Get("X-Ratelimit-Bucket") != discordsim.HashMessages || r.header.Get("X-Ratelimit-Limit") != "5" || r.header.Get("X-Ratelimit-Remaining") != "0" {
		t.Errorf("bucket headers %v", r.header)
	}
	if got := r.header.Get("Preference-Applied"); got != "wait=0" {
		t.Errorf("Preference-Applied %q, want wait=0", got)
	}
	ms := math.Round(body.RetryAfter * 1000)
	if math.Abs(body.RetryAfter*1000-ms) > 1e-6 || ms <= 0 || ms > 2100 {
		t.Errorf("retry_after %v: want whole milliseconds within the 2s window", body.RetryAfter)
	}
	if ra, _ := strconv.Atoi(r.header.Get("Retry-After")); ra < 1 || time.Duration(ra)*time.Second < time.Duration(ms)*time.Millisecond {
		t.Errorf("Retry-After %q, want retry_after rounded up to a second", r.header.Get("Retry-After"))
	}
	checkNoSecret(t, "the refusal", string(r.body)+fmt.Sprint(r.header))

	time.Sleep(time.Duration(ms) * time.Millisecond)
	if r := send(context.Background(), c, "POST", discordURL(gw, "/channels/"+simChannels[0]+"/messages"), "Prefer", "wait=0"); r.status != 200 {
		t.Fatalf("after retry_after: %d %s, want 200", r.status, r.body)
	}
	if st := sim.Stats(); st.Upstream429s() != 0 || st.Received != 6 {
		t.Errorf("Discord received %d requests and answered %d 429s; want 6 and none", st.Received, st.Upstream429s())
	}
	if n := metric(t, gw, "byteproxy_budget_refused_total", "service", "discord", "reason", "bucket"); n != 1 {
		t.Errorf("byteproxy_budget_refused_total{reason=bucket} = %v, want 1", n)
	}
}

// TestBudgetHeldThenSent: a request over the bucket is held until the
// bucket resets (within max_wait) and then sent; its response carries the
// consumer's share in the RateLimit field.
func TestBudgetHeldThenSent(t *testing.T) {
	sim := startDiscordSim(t, nil)
	gw := startBudgetGateway(t, discordCaddyfile(sim.URL, "upstream_limits {\n\t\t\t\treset_slack 10ms\n\t\t\t}"))
	c := consumerClient(21)
	spendBucket(t, c, gw, simChannels[1])
	began := time.Now()
	r := send(context.Background(), c, "POST", discordURL(gw, "/channels/"+simChannels[1]+"/messages"), "Prefer", "wait=3")
	if r.status != 200 {
		t.Fatalf("status %d %s, want 200 after a hold", r.status, r.body)
	}
	if took := time.Since(began); took < 100*time.Millisecond {
		t.Errorf("answered in %v: the bucket was spent, the request must have been held", took)
	}
	if got := r.header.Get("Preference-Applied"); got != "wait=3" {
		t.Errorf("Preference-Applied %q, want wait=3", got)
	}
	share := strings.Join(r.header.Values("Ratelimit"), ", ")
	if !strings.Contains(share, `"upstream";r=`) || !strings.Contains(share, ";pk=:MTI3LjAuMC4yMQ==:") {
		t.Errorf("RateLimit %q: want the consumer's share with its partition key (127.0.0.21)", share)
	}
	if st := sim.Stats(); st.Upstream429s() != 0 {
		t.Errorf("Discord answered %d 429s", st.Upstream429s())
	}
}
