package services

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/byteproxy/byteproxy/internal/testutil"
	discordsim "github.com/byteproxy/byteproxy/internal/upstreamsim/discord"
)

// pausedBody is the 503 of a paused credential.
type pausedBody struct {
	Error      string   `json:"error"`
	RetryAfter *float64 `json:"retry_after"`
	Service    string   `json:"service"`
}

func paused(t *testing.T, r reply) pausedBody {
	t.Helper()
	var b pausedBody
	if r.status != http.StatusServiceUnavailable || json.Unmarshal(r.body, &b) != nil || b.Error == "" || b.RetryAfter == nil || *b.RetryAfter <= 0 {
		t.Fatalf("%d %s: want 503 {error, retry_after}", r.status, r.body)
	}
	if ra, _ := strconv.Atoi(r.header.Get("Retry-After")); float64(ra) < *b.RetryAfter {
		t.Errorf("Retry-After %q below retry_after %v", r.header.Get("Retry-After"), *b.RetryAfter)
	}
	if r.header.Get("X-Ratelimit-Scope") != "" || strings.Contains(string(r.body), `"global"`) {
		t.Errorf("a 503 with Discord's rate-limit shape: %v %s", r.header, r.body)
	}
	return b
}

// TestBudgetBanGuard: invalid responses (here Discord's 403 Missing
// Access) count toward the ban guard; at its threshold the credential is
// paused and requests are answered 503 with the time until the window
// lets it go again, without being sent. The trip is logged once, without
// the token, and counted.
func TestBudgetBanGuard(t *testing.T) {
	sim := startDiscordSim(t, nil)
	sim.Forbid(simChannels[0])
	gw := startBudgetGateway(t, discordCaddyfile(sim.URL, "upstream_limits {\n\t\t\t\tban_threshold 5 10m\n\t\t\t}"))
	c := consumerClient(60)
	url := discordURL(gw, "/channels/"+simChannels[0]+"/messages")
	for i := range 5 {
		if r := send(context.Background(), c, "GET", url); r.status != 403 {
			t.Fatalf("request %d: %d %s, want Discord's 403", i, r.status, r.body)
		}
	}
	for range 3 {
		b := paused(t, send(context.Background(), c, "GET", discordURL(gw, "/channels/"+simChannels[1]+"/messages")))
		if *b.RetryAfter < 590 || *b.RetryAfter > 601 || !strings.Contains(b.Error, "paused") {
			t.Errorf("paused for %vs (%q), want until the first invalid response leaves the 10m window", *b.RetryAfter, b.Error)
		}
	}
	if st := sim.Stats(); st.Received != 5 {
		t.Errorf("Discord received %d requests, want 5: none once the guard tripped", st.Received)
	}
	if n := strings.Count(gw.Logs(), "ban guard tripped"); n != 1 {
		t.Errorf("the trip was logged %d times, want once", n)
	}
	checkNoSecret(t, "the log", gw.Logs())
	if n := metric(t, gw, "byteproxy_budget_ban_trips_total", "service", "discord"); n != 1 {
		t.Errorf("byteproxy_budget_ban_trips_total = %v, want 1", n)
	}
	if n := metric(t, gw, "byteproxy_budget_refused_total", "service", "discord", "reason", "ban"); n != 3 {
		t.Errorf("byteproxy_budget_refused_total{reason=ban} = %v, want 3", n)
	}
}

// TestBudgetUnauthorizedLock: a 401 for the gateway's token locks it
// (unauthorized_lock): the next requests are answered 503 without being
// sent, so a wrong token does not pile up invalid requests at Discord.
func TestBudgetUnauthorizedLock(t *testing.T) {
	sim := startDiscordSim(t, func(c *discordsim.Config) { c.Tokens = []string{"another-token"} })
	gw := startBudgetGateway(t, discordCaddyfile(sim.URL, "upstream_limits {\n\t\t\t\tunauthorized_lock 1m\n\t\t\t}"))
	c := consumerClient(61)
	if r := send(context.Background(), c, "GET", discordURL(gw, "/users/@me")); r.status != 401 {
		t.Fatalf("%d %s, want Discord's 401", r.status, r.body)
	}
	b := paused(t, send(context.Background(), c, "GET", discordURL(gw, "/users/@me")))
	if *b.RetryAfter < 55 || *b.RetryAfter > 61 || !strings.Contains(b.Error, "rejected the credential") {
		t.Errorf("locked for %vs (%q), want about a minute", *b.RetryAfter, b.Error)
	}
	if st := sim.Stats(); st.Received != 1 {
		t.Errorf("Discord received %d requests, want 1", st.Received)
	}
	checkNoSecret(t, "the log", gw.Logs())
}

// TestBudgetRuntimeGeneric: a service added through the management API
// with upstreamLimits reads the upstream's X-RateLimit-* (reset in seconds
// from now) and its 429 Retry-After: what the upstream says is spent is
// answered by the gateway, in the original's 429 body with Retry-After,
// without being sent.
func TestBudgetRuntimeGeneric(t *testing.T) {
	var left atomic.Int64
	left.Store(3)
	var received atomic.Int64
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	up := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		received.Add(1)
		if r.URL.Path == "/busy" {
			w.Header().Set("Retry-After", "3")
			w.WriteHeader(429)
			return
		}
		n := left.Add(-1)
		w.Header().Set("X-RateLimit-Limit", "3")
		w.Header().Set("X-RateLimit-Remaining", strconv.FormatInt(max(n, 0), 10))
		w.Header().Set("X-RateLimit-Reset", "30")
		_, _ = io.WriteString(w, `{"ok":true}`)
	})}
	go func() { _ = up.Serve(ln) }()
	t.Cleanup(func() { _ = up.Close() })

	gw := testutil.Start(t, `{
	byteproxy {
		runtime_services {
			allow_private_upstreams
		}
	}
}

:{{PORT}} {
	byteproxy
}
`, testutil.Options{})
	add := `{"key":"metered","config":{"baseUrl":"http://` + ln.Addr().String() + `/","upstreamLimits":{"headers":"x-ratelimit","reset":"delta","maxWaitMs":1000}}}`
	if resp, body := testutil.Do(t, "POST", gw.URL("/manage/services"), []byte(add), "Content-Type", "application/json"); resp.StatusCode != 201 {
		t.Fatalf("adding the service: %d %s", resp.StatusCode, body)
	}
	if _, body := testutil.Do(t, "GET", gw.URL("/manage/services/metered"), nil); !strings.Contains(string(body), `"upstreamLimits":{"maxWaitMs":1000,"headers":"x-ratelimit","reset":"delta"}`) {
		t.Errorf("GET /manage/services/metered: %s", body)
	}
	c := consumerClient(62)
	for i := range 3 {
		if r := send(context.Background(), c, "GET", gw.URL("/proxy/metered/items")); r.status != 200 {
			t.Fatalf("request %d: %d %s", i, r.status, r.body)
		}
	}
	r := send(context.Background(), c, "GET", gw.URL("/proxy/metered/items"))
	var body struct {
		Error, Service, Path string
		Troubleshooting      map[string]string
	}
	if err := json.Unmarshal(r.body, &body); err != nil || r.status != 429 || body.Service != "metered" || body.Path != "/items" || body.Troubleshooting["hint"] == "" {
		t.Fatalf("%d %s: want the original's 429 body", r.status, r.body)
	}
	if ra, _ := strconv.Atoi(r.header.Get("Retry-After")); ra < 29 || ra > 32 {
		t.Errorf("Retry-After %q, want the upstream's 30 seconds", r.header.Get("Retry-After"))
	}
	if strings.Contains(string(r.body), "retry_after") || r.header.Get("X-Ratelimit-Limit") != "" {
		t.Errorf("a service without a preset got an upstream's shape: %v %s", r.header, r.body)
	}
	if received.Load() != 3 {
		t.Errorf("the upstream received %d requests, want 3", received.Load())
	}
}

// TestBudgetRetryAfter: any service with upstream_limits honours a 429's
// Retry-After: until then, a request is held (within max_wait) or
// answered by the gateway.
func TestBudgetRetryAfter(t *testing.T) {
	var received atomic.Int64
	var busy atomic.Bool
	busy.Store(true)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	up := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		received.Add(1)
		if busy.Swap(false) {
			w.Header().Set("Retry-After", "2")
			w.WriteHeader(429)
			return
		}
		_, _ = io.WriteString(w, `{"ok":true}`)
	})}
	go func() { _ = up.Serve(ln) }()
	t.Cleanup(func() { _ = up.Close() })
	gw := startBudgetGateway(t, `{
	byteproxy {
		service api {
			base_url http://`+ln.Addr().String()+`/
			upstream_limits
		}
	}
}

:{{PORT}} {
	byteproxy
}
`)
	c := consumerClient(63)
	if r := send(context.Background(), c, "GET", gw.URL("/proxy/api/x")); r.status != 429 {
		t.Fatalf("the upstream's 429: %d", r.status)
	}
	locked := time.Now()
	if r := send(context.Background(), c, "GET", gw.URL("/proxy/api/x"), "Prefer", "wait=0"); r.status != 429 || received.Load() != 1 {
		t.Fatalf("during Retry-After: %d, upstream received %d; want the gateway's 429", r.status, received.Load())
	}
	r := send(context.Background(), c, "GET", gw.URL("/proxy/api/x"))
	if r.status != 200 || r.done.Sub(locked) < 1500*time.Millisecond {
		t.Fatalf("held request: %d after %v; want 200 once the 2s Retry-After passed", r.status, r.done.Sub(locked))
	}
	if received.Load() != 2 {
		t.Errorf("the upstream received %d requests, want 2", received.Load())
	}
}
