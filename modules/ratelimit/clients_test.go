package ratelimit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bwmarrin/discordgo"
	"github.com/google/go-github/v84/github"

	"github.com/byteproxy/byteproxy/internal/testutil"
)

// Client libraries pointed at the gateway meet its refusals in the shape
// they know (issue 13.1, 13.4): the real discordgo and go-github, through
// the real gateway, against fake upstreams.

// exchange is one request a client library sent, as its transport saw it.
type exchange struct {
	status int
	header http.Header
	body   []byte
	sent   time.Time // when the request left
	got    time.Time // when its answer arrived
}

// recordingTransport records every exchange and refuses to send more than
// max requests, so a client caught in a retry loop fails the test at once
// instead of hammering the gateway.
type recordingTransport struct {
	max int
	mu  sync.Mutex
	log []exchange
}

func (rt *recordingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	rt.mu.Lock()
	n := len(rt.log)
	rt.mu.Unlock()
	if n >= rt.max {
		return nil, fmt.Errorf("the client sent more than %d requests: it is looping", rt.max)
	}
	sent := time.Now()
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	rt.mu.Lock()
	rt.log = append(rt.log, exchange{resp.StatusCode, resp.Header.Clone(), body, sent, time.Now()})
	rt.mu.Unlock()
	return resp, nil
}

func (rt *recordingTransport) exchanges() []exchange {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return slices.Clone(rt.log)
}

func statuses(xs []exchange) []int {
	var s []int
	for _, x := range xs {
		s = append(s, x.status)
	}
	return s
}

// countingUpstream answers every request with handler and counts them.
func countingUpstream(t *testing.T, handler http.HandlerFunc) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		handler(w, r)
	}))
	t.Cleanup(up.Close)
	return up, &n
}

func fakeDiscord(t *testing.T) (*httptest.Server, *atomic.Int64) {
	return countingUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bot gateway-bot-token" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"id":"80351110224678912","username":"gatewaybot","discriminator":"0"}`)
	})
}

// TestDiscordgoWaitsOnceForTheGatewayLimit: discordgo hits the gateway's
// service limit, sleeps for the body's retry_after once, and its retry
// succeeds. Before the Discord shape, the 429 had no retry_after and
// discordgo retried at once, forever (22,001 requests in 10 s).
func TestDiscordgoWaitsOnceForTheGatewayLimit(t *testing.T) {
	up, upstreamCalls := fakeDiscord(t)
	in := testutil.Start(t, `{
	byteproxy {
		auth proxy {
			required false
		}
		service discord {
			base_url `+up.URL+`/api/
			rate_limit 1 1s
		}
	}
}
:{{PORT}} {
	byteproxy
}
`, testutil.Options{Env: []string{"DISCORD_BOT_TOKEN=gateway-bot-token"}})

	saved := discordgo.EndpointUsers
	discordgo.EndpointUsers = in.URL("/proxy/discord/users/")
	t.Cleanup(func() { discordgo.EndpointUsers = saved })

	s, err := discordgo.New("Bot client-side-token")
	if err != nil {
		t.Fatal(err)
	}
	rt := &recordingTransport{max: 10}
	s.Client = &http.Client{Transport: rt, Timeout: 20 * time.Second}
	s.MaxRestRetries = 0
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	for i := range 2 {
		u, err := s.User("@me", discordgo.WithContext(ctx))
		if err != nil {
			t.Fatalf("call %d: %v (exchanges %v)", i+1, err, statuses(rt.exchanges()))
		}
		if u.Username != "gatewaybot" {
			t.Fatalf("call %d: user %+v", i+1, u)
		}
	}
	xs := rt.exchanges()
	if got := statuses(xs); !slices.Equal(got, []int{200, 429, 200}) {
		t.Fatalf("discordgo sent %v, want 200, one 429, then its retry 200\n%s", got, in.Logs())
	}
	if n := upstreamCalls.Load(); n != 2 {
		t.Fatalf("the upstream saw %d requests, want 2", n)
	}
	var body struct {
		RetryAfter float64 `json:"retry_after"`
	}
	if err := json.Unmarshal(xs[1].body, &body); err != nil || body.RetryAfter <= 0 || body.RetryAfter > 1.002 {
		t.Fatalf("429 body %s: want retry_after in (0, 1.002] seconds", xs[1].body)
	}
	// It waited what it was told before retrying (discordgo keeps
	// milliseconds), not a moment less.
	waited := xs[2].sent.Sub(xs[1].got)
	if told := time.Duration(body.RetryAfter*1000) * time.Millisecond; waited < told-time.Millisecond {
		t.Fatalf("discordgo retried after %v, told to wait %v", waited, told)
	}
}

// TestDiscordPresetRefusalShape: a refusal on a service built from the
// discord preset carries Discord's 429 body and the X-RateLimit-* Discord
// libraries read, in Discord's meaning, besides the original's fields.
func TestDiscordPresetRefusalShape(t *testing.T) {
	up, _ := fakeDiscord(t)
	in := testutil.Start(t, `{
	byteproxy {
		auth proxy {
			required false
		}
		client_rate_limit 3 1m
		service discord {
			base_url `+up.URL+`/api/
			rate_limit 1 1m
		}
		service bot2 discord {
			base_url `+up.URL+`/api/
		}
	}
}
:{{PORT}} {
	byteproxy
}
`, testutil.Options{Env: []string{"DISCORD_BOT_TOKEN=gateway-bot-token"}})

	if r := get(t, in.URL("/proxy/discord/users/@me")); r.status != 200 {
		t.Fatalf("first request: %d %s", r.status, r.body)
	}
	before := time.Now()
	r := get(t, in.URL("/proxy/discord/users/@me"))
	if r.status != 429 {
		t.Fatalf("second request: %d, want 429", r.status)
	}
	m := decode(t, r.body)
	retry, _ := m["retry_after"].(float64)
	if m["message"] == nil || m["global"] != false || m["code"] != 0.0 || retry <= 55 || retry > 60.002 {
		t.Fatalf("Discord body fields: %s", r.body)
	}
	checkServiceRefusal(t, r, "discord", "/users/@me", 60)
	h := r.header
	resetAfter, err1 := strconv.ParseFloat(h.Get("X-RateLimit-Reset-After"), 64)
	reset, err2 := strconv.ParseFloat(h.Get("X-RateLimit-Reset"), 64)
	if err1 != nil || err2 != nil || resetAfter != retry {
		t.Fatalf("X-RateLimit-Reset-After %q, X-RateLimit-Reset %q: want seconds, as retry_after %v", h.Get("X-RateLimit-Reset-After"), h.Get("X-RateLimit-Reset"), retry)
	}
	// Epoch seconds with a fraction, Discord's meaning: when it resets.
	resetAt := time.UnixMilli(int64(reset * 1000))
	if resetAt.Before(before.Add(55*time.Second)) || resetAt.After(time.Now().Add(61*time.Second)) {
		t.Fatalf("X-RateLimit-Reset %q is %v, want about a minute from now", h.Get("X-RateLimit-Reset"), resetAt)
	}
	if h.Get("X-RateLimit-Limit") != "1" || h.Get("X-RateLimit-Remaining") != "0" || h.Get("X-RateLimit-Scope") != "shared" {
		t.Fatalf("X-RateLimit headers: %v", h)
	}
	if _, ok := h["X-Ratelimit-Global"]; ok {
		t.Fatalf("X-RateLimit-Global %q on a limit that is not global: discord.js and discordgo read any value as global", h.Get("X-RateLimit-Global"))
	}

	// The client limit (3 per minute; the service's refusal spent none of
	// it, so two tokens are left) refuses on another service in the same
	// shape, scoped to this client.
	for i := range 2 {
		if r := get(t, in.URL("/proxy/bot2/users/@me")); r.status != 200 {
			t.Fatalf("token %d: %d %s", i+2, r.status, r.body)
		}
	}
	r = get(t, in.URL("/proxy/bot2/users/@me"))
	m = decode(t, r.body)
	if r.status != 429 || m["limitType"] != "client" || m["service"] != "bot2" || m["retry_after"] == nil || r.header.Get("X-RateLimit-Scope") != "user" || r.header.Get("X-RateLimit-Limit") != "3" {
		t.Fatalf("client refusal: %d %v %s", r.status, r.header, r.body)
	}
}

// fakeGitHub answers like api.github.com: the user, and x-ratelimit-* of
// the token's core quota.
func fakeGitHub(t *testing.T, reset int64) (*httptest.Server, *atomic.Int64) {
	return countingUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer gateway-gh-token" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		h := w.Header()
		h.Set("Content-Type", "application/json; charset=utf-8")
		h.Set("X-RateLimit-Limit", "5000")
		h.Set("X-RateLimit-Remaining", "4999")
		h.Set("X-RateLimit-Used", "1")
		h.Set("X-RateLimit-Reset", strconv.FormatInt(reset, 10))
		h.Set("X-RateLimit-Resource", "core")
		_, _ = io.WriteString(w, `{"login":"octocat","id":583231}`)
	})
}

// TestGoGitHubReportsTheGatewayLimit: go-github takes the gateway's refusal
// for a primary rate limit with the right reset time (the window's end, in
// epoch seconds; before, X-RateLimit-Reset held seconds until the reset and
// go-github reported a reset in 1970), and then waits for it without
// sending. The upstream's own x-ratelimit-* reach it untouched.
func TestGoGitHubReportsTheGatewayLimit(t *testing.T) {
	upstreamReset := time.Now().Add(42 * time.Minute).Unix()
	up, upstreamCalls := fakeGitHub(t, upstreamReset)
	in := testutil.Start(t, `{
	byteproxy {
		auth proxy {
			required false
		}
		service github {
			base_url `+up.URL+`/
			rate_limit 1 1h
		}
	}
}
:{{PORT}} {
	byteproxy
}
`, testutil.Options{Env: []string{"GITHUB_TOKEN=gateway-gh-token"}})

	rt := &recordingTransport{max: 10}
	client := github.NewClient(&http.Client{Transport: rt, Timeout: 20 * time.Second})
	base, err := url.Parse(in.URL("/proxy/github/"))
	if err != nil {
		t.Fatal(err)
	}
	client.BaseURL = base
	ctx := context.Background()

	u, resp, err := client.Users.Get(ctx, "octocat")
	if err != nil || u.GetLogin() != "octocat" {
		t.Fatalf("first call: %v %+v", err, u)
	}
	// The upstream's figures, untouched.
	if resp.Rate.Limit != 5000 || resp.Rate.Remaining != 4999 || resp.Rate.Reset.Unix() != upstreamReset || resp.Rate.Resource != "core" {
		t.Fatalf("go-github read the upstream's rate %+v, want 5000/4999 reset %d core", resp.Rate, upstreamReset)
	}
	for _, k := range []string{"X-Ratelimit-Limit", "X-Ratelimit-Remaining", "X-Ratelimit-Reset", "X-Ratelimit-Used", "X-Ratelimit-Resource"} {
		if len(resp.Header.Values(k)) != 1 {
			t.Fatalf("%s = %q, want the upstream's one value", k, resp.Header.Values(k))
		}
	}

	before := time.Now()
	_, _, err = client.Users.Get(ctx, "octocat")
	after := time.Now()
	var rle *github.RateLimitError
	if !errors.As(err, &rle) {
		t.Fatalf("second call: %T %v, want *github.RateLimitError", err, err)
	}
	if rle.Rate.Limit != 1 || rle.Rate.Remaining != 0 || rle.Rate.Used != 1 || rle.Rate.Resource != "byteproxy_service" || rle.Message == "" {
		t.Fatalf("rate limit error %+v (rate %+v)", rle, rle.Rate)
	}
	// The window opened with the first call and lasts an hour; the reset
	// is rounded up to the second.
	reset := rle.Rate.Reset.Time
	if reset.Before(before.Add(time.Hour-time.Minute)) || reset.After(after.Add(time.Hour+time.Second)) {
		t.Fatalf("go-github reports the reset at %v, want about an hour from %v", reset, before)
	}
	if rle.Response.StatusCode != 429 {
		t.Fatalf("status %d", rle.Response.StatusCode)
	}
	var body map[string]any
	if err := json.Unmarshal(rt.exchanges()[1].body, &body); err != nil || body["documentation_url"] == nil || body["error"] == nil || body["service"] != "github" {
		t.Fatalf("GitHub body fields: %s", rt.exchanges()[1].body)
	}

	// go-github now knows the limit until its reset and does not send.
	if _, _, err := client.Users.Get(ctx, "octocat"); !errors.As(err, &rle) {
		t.Fatalf("third call: %v, want the rate limit error", err)
	}
	if n := len(rt.exchanges()); n != 2 {
		t.Fatalf("go-github sent %d requests, want 2 (the third waits for the reset)", n)
	}
	if n := upstreamCalls.Load(); n != 1 {
		t.Fatalf("the upstream saw %d requests, want 1", n)
	}
}

// TestGenericServiceIETFFields: the gateway's own limits are described with
// RateLimit-Policy and RateLimit; a service without a preset gets no
// X-RateLimit-* from the gateway, the upstream's pass through untouched,
// and its 429 body is the original's.
func TestGenericServiceIETFFields(t *testing.T) {
	up, _ := countingUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/own" {
			// An upstream with its own (odd) figures: not the gateway's to change.
			w.Header()["X-RateLimit-Limit"] = []string{"77"}
			w.Header()["X-RateLimit-Remaining"] = []string{"5"}
			w.Header()["X-RateLimit-Reset"] = []string{"1795600000.5"}
		}
		_, _ = io.WriteString(w, "ok")
	})
	in := testutil.Start(t, `{
	byteproxy {
		auth proxy {
			required false
		}
		client_rate_limit 600 1m
		service plain {
			base_url `+up.URL+`/
			rate_limit 2 1m
		}
	}
}
:{{PORT}} {
	byteproxy
}
`, testutil.Options{})

	r := get(t, in.URL("/proxy/plain/own"))
	if r.status != 200 || r.header.Get("RateLimit-Policy") != `"service";q=2;w=60, "client";q=600;w=60` {
		t.Fatalf("first: %d RateLimit-Policy %q", r.status, r.header.Get("RateLimit-Policy"))
	}
	if rem, reset := limitState(t, r.header, "service"); rem != 1 || reset < 59 || reset > 60 {
		t.Fatalf("RateLimit %q, want service r=1;t=60", r.header.Get("RateLimit"))
	}
	if rem, _ := limitState(t, r.header, "client"); rem != 599 {
		t.Fatalf("RateLimit %q, want client r=599", r.header.Get("RateLimit"))
	}
	for k, v := range map[string]string{"X-Ratelimit-Limit": "77", "X-Ratelimit-Remaining": "5", "X-Ratelimit-Reset": "1795600000.5"} {
		if got := r.header.Values(k); len(got) != 1 || got[0] != v {
			t.Fatalf("%s = %q, want the upstream's %q untouched", k, got, v)
		}
	}

	r = get(t, in.URL("/proxy/plain/x"))
	noXRateLimit(t, r.header)
	if rem, _ := limitState(t, r.header, "service"); r.status != 200 || rem != 0 {
		t.Fatalf("second: %d RateLimit %q", r.status, r.header.Get("RateLimit"))
	}

	r = get(t, in.URL("/proxy/plain/x"))
	if r.status != 429 {
		t.Fatalf("third: %d, want 429", r.status)
	}
	noXRateLimit(t, r.header)
	checkServiceRefusal(t, r, "plain", "/x", 60)
	m := decode(t, r.body)
	if len(m) != 4 || m["troubleshooting"] == nil {
		t.Fatalf("generic 429 body %s: want exactly the original's error, service, path, troubleshooting", r.body)
	}
}

// TestLocalRefusalsSpendNothing: requests the gateway refuses itself (the
// service's token not set: 401; GitHub's /org/ hint and dot segments: 400)
// spend nothing of the service limit or of the client limit.
func TestLocalRefusalsSpendNothing(t *testing.T) {
	up, upstreamCalls := fakeGitHub(t, time.Now().Add(time.Hour).Unix())
	in := testutil.Start(t, `{
	byteproxy {
		auth proxy {
			required false
		}
		client_rate_limit 3 1m
		service github {
			base_url `+up.URL+`/
			rate_limit 2 1m
		}
		service notoken {
			base_url `+up.URL+`/
			auth bearer {env.BYTEPROXY_TEST_NEVER_SET}
			rate_limit 2 1m
		}
	}
}
:{{PORT}} {
	byteproxy
}
`, testutil.Options{Env: []string{"GITHUB_TOKEN=gateway-gh-token"}})

	for _, c := range []struct {
		path   string
		status int
	}{
		{"/proxy/notoken/users/x", 401},
		{"/proxy/github/org/caddyserver/repos", 400},
		{"/proxy/github/repos/a/../b", 400},
		{"/proxy/github/repos/a/%2e%2e/b", 400},
	} {
		for i := range 4 { // more than either limit allows
			if r := get(t, in.URL(c.path)); r.status != c.status {
				t.Fatalf("%s (%d): %d %s, want %d", c.path, i+1, r.status, r.body, c.status)
			}
		}
	}
	for _, key := range []string{"github", "notoken"} {
		m := decode(t, get(t, in.URL("/proxy/services/"+key+"/rate-limit")).body)
		if m["remaining"] != 2.0 || m["resetTime"] != 0.0 {
			t.Fatalf("%s after refused requests: %v, want the whole limit (remaining 2, no window)", key, m)
		}
	}
	r := get(t, in.URL("/proxy/github/users/octocat"))
	if r.status != 200 {
		t.Fatalf("a valid request: %d %s", r.status, r.body)
	}
	if rem, _ := limitState(t, r.header, "client"); rem != 2 {
		t.Fatalf("client RateLimit %q, want r=2: the refused requests spent client tokens", r.header.Get("RateLimit"))
	}
	if rem, _ := limitState(t, r.header, "service"); rem != 1 {
		t.Fatalf("service RateLimit %q, want r=1", r.header.Get("RateLimit"))
	}
	if n := upstreamCalls.Load(); n != 1 {
		t.Fatalf("the upstream saw %d requests, want 1", n)
	}
}
