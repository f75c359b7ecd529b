package budget

import (
	"net/http"
	"strconv"
	"testing"
	"time"
)

func snowflakeAt(t time.Time) string {
	return strconv.FormatUint(uint64(t.UnixMilli()-discordEpoch)<<22, 10)
}

func TestDiscordRoute(t *testing.T) {
	now := time.Now()
	old := snowflakeAt(now.Add(-15 * 24 * time.Hour))
	recent := snowflakeAt(now.Add(-time.Hour))
	tests := []struct {
		method, path, key, major string
		flags                    routeFlags
	}{
		{"GET", "/api/v10/channels/123456789012345678/messages", "GET /channels/{id}/messages", "123456789012345678", 0},
		{"POST", "/channels/1/messages", "POST /channels/{id}/messages", "1", 0},
		{"PATCH", "/v10/channels/1/messages/2", "PATCH /channels/{id}/messages/{id}", "1", 0},
		{"PUT", "/v10/channels/1/messages/2/reactions/%F0%9F%91%8D/@me", "PUT /channels/{id}/messages/{id}/reactions/{reaction}", "1", 0},
		{"DELETE", "/v10/channels/1/messages/2/reactions/name:123/99", "DELETE /channels/{id}/messages/{id}/reactions/{reaction}", "1", 0},
		{"DELETE", "/channels/1/messages/" + old, "DELETE /channels/{id}/messages/{old}", "1", 0},
		{"DELETE", "/channels/1/messages/" + recent, "DELETE /channels/{id}/messages/{id}", "1", 0},
		{"POST", "/webhooks/77/s3cret-token", "POST /webhooks/{id}/{token}", "77", routeNoGlobal},
		{"PATCH", "/webhooks/77/s3cret-token/messages/5", "PATCH /webhooks/{id}/{token}/messages/{id}", "77", routeNoGlobal},
		{"GET", "/webhooks/77", "GET /webhooks/{id}", "77", 0},
		{"POST", "/interactions/9/tok/callback", "POST /interactions/{id}/{token}/callback", "", routeNoGlobal | routeNoBucket},
		{"GET", "/users/@me", "GET /users/@me", "", 0},
		{"GET", "/guilds/5/members/6", "GET /guilds/{id}/members/{id}", "5", 0},
		{"GET", "/invites/abcDEF", "GET /invites/{code}", "", 0},
		{"GET", "/channels/1/messages?limit=5", "GET /channels/{id}/messages", "1", 0},
		{"GET", "/api/gateway/bot", "GET /gateway/bot", "", 0},
		{"GET", "/", "GET /", "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			key, major, flags := discordRoute(nil, tt.method, tt.path, now)
			if string(key) != tt.key || major != tt.major || flags != tt.flags {
				t.Fatalf("got %q %q %b, want %q %q %b", key, major, flags, tt.key, tt.major, tt.flags)
			}
		})
	}
	long := "/channels/1"
	for range 40 {
		long += "/segment"
	}
	if key, _, _ := discordRoute(nil, "GET", long, now); key != nil {
		t.Fatalf("a route longer than %d bytes folded to %q", maxRouteKey, key)
	}
}

func TestGitHubResource(t *testing.T) {
	tests := map[string]string{
		"GET /repos/o/r":                             "core",
		"GET /search/code":                           "code_search",
		"GET /search/issues?q=x":                     "search",
		"POST /graphql":                              "graphql",
		"POST /app-manifests/abc/conversions":        "integration_manifest",
		"POST /repos/o/r/code-scanning/sarifs":       "code_scanning_upload",
		"POST /repos/o/r/dependency-graph/snapshots": "dependency_snapshots",
		"GET /rate_limit":                            "",
		"GET /api/v3/search/code":                    "code_search",
	}
	for in, want := range tests {
		m, p, _ := cut(in)
		if got := githubResource(m, p); got != want {
			t.Errorf("%s: %q, want %q", in, got, want)
		}
	}
	a := githubShape(nil, "GET", "/repos/alice/app/issues/12")
	b := githubShape(nil, "GET", "/repos/bob/lib/issues/99")
	if string(a) != string(b) || string(a) != "GET /repos/{name}/{repo}/issues/{n}" {
		t.Fatalf("shapes %q and %q", a, b)
	}
}

func cut(s string) (string, string, bool) {
	for i := 0; i < len(s); i++ {
		if s[i] == ' ' {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

// TestBucketOutOfOrderAnswers: answers that come back in another order
// than the requests arrived never give room back.
func TestBucketOutOfOrderAnswers(t *testing.T) {
	now := time.Unix(1000, 0)
	b := &bucket{}
	fact := func(remaining int64) *Fact {
		return &Fact{Name: "h", Limit: 5, Remaining: remaining, Window: 1_000_500, ResetAfter: 500 * time.Millisecond}
	}
	if ok, _, _ := b.check(now, 0, 0); !ok {
		t.Fatal("an unknown bucket refuses its first request")
	}
	b.take(now)
	if ok, until, scope := b.check(now, 0, 0); ok || !until.IsZero() || scope != ScopeBucket {
		t.Fatalf("a second request while the probe is out: ok %v until %v scope %v", ok, until, scope)
	}
	b.release(b.gen, false, now, 0)
	b.observe(fact(4), now, 0)
	for range 3 {
		if ok, _, _ := b.check(now, 0, 0); !ok {
			t.Fatal("refused with room")
		}
		b.take(now)
	}
	// Room: 5 - 1 used - 3 in flight = 1. The three arrive in the order
	// 2nd, 3rd, 1st; their answers come back 3rd, 1st, 2nd.
	for _, rem := range []int64{2, 1, 3} {
		b.release(b.gen, false, now, 0)
		b.observe(fact(rem), now, 0)
	}
	if b.used != 4 || b.room() != 1 {
		t.Fatalf("used %d room %d, want 4 and 1", b.used, b.room())
	}
}

// TestBucketRollover: when the window runs out locally, requests still in
// flight count against the next one, late answers of the old window are
// ignored, and the first answer of the new window is adopted.
func TestBucketRollover(t *testing.T) {
	now := time.Unix(1000, 0)
	b := &bucket{}
	b.take(now)
	b.release(b.gen, false, now, 0)
	b.observe(&Fact{Name: "h", Limit: 5, Remaining: 2, Window: 1_000_500, ResetAfter: 500 * time.Millisecond}, now, 10*time.Millisecond)
	b.take(now)
	b.take(now)
	if ok, until, _ := b.check(now, 10*time.Millisecond, 0); ok || !until.Equal(now.Add(510*time.Millisecond)) {
		t.Fatalf("exhausted bucket: ok %v until %v", ok, until)
	}
	later := now.Add(510 * time.Millisecond)
	if ok, _, _ := b.check(later, 10*time.Millisecond, 0); !ok {
		t.Fatal("refused after the reset")
	}
	if room := b.room(); room != 3 {
		t.Fatalf("room after rollover %d, want 5 - 2 in flight", room)
	}
	// A late answer of the old window says 0 remaining: ignored.
	b.release(b.gen-1, false, later, 0)
	b.observe(&Fact{Name: "h", Limit: 5, Remaining: 0, Window: 1_000_500, ResetAfter: 0}, later, 10*time.Millisecond)
	if room := b.room(); room != 4 {
		t.Fatalf("room %d after a stale answer, want 4", room)
	}
	// The other old request arrived in the new window: its answer is the
	// first of the new window and is adopted.
	b.release(b.gen-1, false, later, 0)
	b.observe(&Fact{Name: "h", Limit: 5, Remaining: 4, Window: 1_001_010, ResetAfter: 500 * time.Millisecond}, later, 10*time.Millisecond)
	if b.used != 1 || b.rolled || !b.reset.Equal(later.Add(510*time.Millisecond)) {
		t.Fatalf("new window: used %d rolled %v reset %v", b.used, b.rolled, b.reset)
	}
}

// TestBucketNewerWindowBeforeLocalReset: the upstream's window may turn
// over before the local estimate; an answer of the newer window wins.
func TestBucketNewerWindowBeforeLocalReset(t *testing.T) {
	now := time.Unix(1000, 0)
	b := &bucket{}
	b.observe(&Fact{Name: "h", Limit: 5, Remaining: 3, Window: 1_000_500, ResetAfter: 500 * time.Millisecond}, now, 0)
	b.observe(&Fact{Name: "h", Limit: 5, Remaining: 4, Window: 1_001_000, ResetAfter: 500 * time.Millisecond}, now.Add(500*time.Millisecond), 0)
	if b.used != 1 || b.window != 1_001_000 {
		t.Fatalf("used %d window %d", b.used, b.window)
	}
}

// TestBucketUnansweredWindow: a window rolled over locally is not rolled
// again while the requests sent in it are unanswered (the upstream opened
// it when the first of them arrived, as late as its answer), and an answer
// that does not describe it moves its end past that answer.
func TestBucketUnansweredWindow(t *testing.T) {
	at := func(ms int) time.Time { return time.Unix(1000, 0).Add(time.Duration(ms) * time.Millisecond) }
	b := &bucket{}
	b.observe(&Fact{Name: "h", Limit: 2, Remaining: 0, Window: 1_000_500, ResetAfter: 500 * time.Millisecond}, at(0), 0)
	if ok, _, _ := b.check(at(500), 0, 0); !ok {
		t.Fatal("refused after the reset")
	}
	b.take(at(500))
	b.take(at(500))
	gen := b.gen
	// The rolled window is assumed to end at 1000, but both requests are
	// still out (say the upstream is slow): it does not roll again.
	if ok, until, _ := b.check(at(1100), 0, 0); ok || !until.IsZero() {
		t.Fatalf("rolled again with its requests out: ok %v until %v", ok, until)
	}
	b.release(gen, true, at(1200), 0) // answered without rate-limit headers
	b.release(gen, true, at(1300), 0)
	if !b.reset.Equal(at(1800)) || b.used != 2 {
		t.Fatalf("reset %v used %d, want a window after the last answer and both counted", b.reset, b.used)
	}
	if ok, _, _ := b.check(at(1799), 0, 0); ok {
		t.Fatal("sent before the end of the window the answers may have opened")
	}
	if ok, _, _ := b.check(at(1800), 0, 0); !ok {
		t.Fatal("refused after it")
	}
}

func TestBucketNoResponseCounts(t *testing.T) {
	now := time.Unix(1000, 0)
	b := &bucket{}
	b.observe(&Fact{Name: "h", Limit: 5, Remaining: 5, Window: 1_000_500, ResetAfter: 500 * time.Millisecond}, now, 0)
	b.take(now)
	b.release(b.gen, true, now, 0)
	if b.used != 1 || b.inflight != 0 {
		t.Fatalf("a request without an answer: used %d inflight %d, want counted", b.used, b.inflight)
	}
}

func TestInvalidWindow(t *testing.T) {
	var w invalidWindow
	window := 10 * time.Minute // slots of a second
	start := time.Unix(5000, 0)
	for i := range 5 {
		w.add(start.Add(time.Duration(i)*time.Second), window)
	}
	if n := w.count(start.Add(4*time.Second), window); n != 5 {
		t.Fatalf("count %d", n)
	}
	// Below 4 (3) once the two oldest slots have left the window.
	if until := w.until(4); !until.Equal(start.Add(window + time.Second)) {
		t.Fatalf("until %v, want %v", until, start.Add(window+time.Second))
	}
	if n := w.count(start.Add(window), window); n != 4 {
		t.Fatalf("count after the window %d, want 4", n)
	}
	if n := w.count(start.Add(window+time.Second), window); n != 3 {
		t.Fatalf("count a second later %d, want 3", n)
	}
	if n := w.count(start.Add(time.Hour), window); n != 0 {
		t.Fatalf("count after an hour %d", n)
	}
}

func TestSFItems(t *testing.T) {
	h := http.Header{}
	h.Add("RateLimit", `"burst";r=3;t=2, "daily";r=900;t=3600;pk=:abc=:`)
	h.Add("RateLimit-Policy", `"burst";q=10;w=5, "daily";q=1000;w=86400`)
	var o Outcome
	now := time.Unix(1000, 0)
	ietfFacts(&o, h, now)
	if o.N != 2 {
		t.Fatalf("%d facts", o.N)
	}
	b, d := o.Facts[0], o.Facts[1]
	if b.Name != "burst" || b.Limit != 10 || b.Remaining != 3 || b.ResetAfter != 2*time.Second || b.Window != 1_002_000 {
		t.Fatalf("burst %+v", b)
	}
	if d.Name != "daily" || d.Limit != 1000 || d.Remaining != 900 || d.ResetAfter != time.Hour {
		t.Fatalf("daily %+v", d)
	}
	// Malformed members are skipped, not fatal.
	o = Outcome{}
	h = http.Header{"Ratelimit": {`x;r=1, ;;, tok;r=abc, "unterminated;r=1`, `"ok";r=1`}}
	ietfFacts(&o, h, now)
	for i := 0; i < o.N; i++ {
		if o.Facts[i].Name == "ok" {
			return
		}
	}
	t.Fatalf("the valid member after malformed ones was lost: %+v", o.Facts[:o.N])
}

func TestPreferWait(t *testing.T) {
	tests := []struct {
		in   []string
		want time.Duration
		ok   bool
	}{
		{[]string{"wait=10"}, 10 * time.Second, true},
		{[]string{"respond-async, wait=3"}, 3 * time.Second, true},
		{[]string{"Wait = 0"}, 0, true},
		{[]string{"wait=5;foo=bar"}, 5 * time.Second, true},
		{[]string{"wait=2", "wait=9"}, 2 * time.Second, true},
		{[]string{"return=minimal"}, 0, false},
		{[]string{"wait=-1"}, 0, false},
		{[]string{"wait=abc"}, 0, false},
		{nil, 0, false},
	}
	for _, tt := range tests {
		got, ok := PreferWait(http.Header{"Prefer": tt.in})
		if got != tt.want || ok != tt.ok {
			t.Errorf("%q: %v %v, want %v %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := map[string]time.Duration{
		"":                              0,
		"2":                             2 * time.Second,
		"0.0011":                        2 * time.Millisecond,
		"Fri, 02 Jan 2026 03:04:15 GMT": 10 * time.Second,
		"soon":                          0,
		"-4":                            0,
	}
	for in, want := range tests {
		if got := retryAfter(in, now); got != want {
			t.Errorf("%q: %v, want %v", in, got, want)
		}
	}
}

func TestShareField(t *testing.T) {
	s := Share{Limit: 10, Remaining: 3, Reset: 1500 * time.Millisecond}
	if got := string(s.AppendRateLimit(nil, "upstream", "key-1")); got != `"upstream";r=3;t=2;pk=:a2V5LTE=:` {
		t.Fatalf("%s", got)
	}
	if got := string((Share{}).AppendRateLimit(nil, "upstream", "")); got != `"upstream";r=0` {
		t.Fatalf("%s", got)
	}
}

func TestRefusalRoundsUp(t *testing.T) {
	now := time.Unix(1000, 0)
	r := refusal(Grant{Until: now.Add(1234567 * time.Microsecond), Scope: ScopeGlobal}, now, time.Second)
	if r.RetryAfter != 1235*time.Millisecond || r.RetryAfterSeconds() != 1.235 || !r.Global || r.DiscordScope() != "global" || r.Status != 429 {
		t.Fatalf("%+v", r)
	}
	if r := refusal(Grant{Scope: ScopeBanGuard}, now, 50*time.Millisecond); r.Status != 503 || r.RetryAfter != 50*time.Millisecond {
		t.Fatalf("ban guard %+v", r)
	}
}
