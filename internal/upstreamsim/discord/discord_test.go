package discord

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"
)

const token = "sim-token"

func start(t *testing.T, mod func(*Config)) *Server {
	t.Helper()
	cfg := Config{Tokens: []string{token}}
	if mod != nil {
		mod(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

type answer struct {
	status int
	h      http.Header
	body   map[string]any
}

func call(t *testing.T, s *Server, method, path, auth string) answer {
	t.Helper()
	req, _ := http.NewRequest(method, s.URL+path, nil)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	a := answer{status: resp.StatusCode, h: resp.Header}
	_ = json.Unmarshal(b, &a.body)
	return a
}

func TestBucketPerResource(t *testing.T) {
	s := start(t, nil)
	var reset string
	for i := range 5 {
		a := call(t, s, "GET", "/api/v10/channels/1", "Bot "+token)
		if a.status != 200 || a.h.Get("X-RateLimit-Remaining") != strconv.Itoa(4-i) || a.h.Get("X-RateLimit-Limit") != "5" || a.h.Get("X-RateLimit-Bucket") != HashChannel {
			t.Fatalf("request %d: %d %v", i, a.status, a.h)
		}
		if i > 0 && a.h.Get("X-RateLimit-Reset") != reset {
			t.Fatalf("reset changed within the window: %s then %s", reset, a.h.Get("X-RateLimit-Reset"))
		}
		reset = a.h.Get("X-RateLimit-Reset")
		if ra, err := strconv.ParseFloat(a.h.Get("X-RateLimit-Reset-After"), 64); err != nil || ra <= 0 || ra > 0.5 {
			t.Fatalf("reset-after %q", a.h.Get("X-RateLimit-Reset-After"))
		}
	}
	a := call(t, s, "GET", "/api/v10/channels/1", "Bot "+token)
	if a.status != 429 || a.h.Get("X-RateLimit-Scope") != "user" || a.h.Get("Retry-After") != "1" || a.h.Get("X-RateLimit-Global") != "" {
		t.Fatalf("over the limit: %d %v", a.status, a.h)
	}
	if ra, ok := a.body["retry_after"].(float64); !ok || ra <= 0 || ra > 0.5 || a.body["global"] != false || a.body["message"] == "" {
		t.Fatalf("429 body %v", a.body)
	}
	if a := call(t, s, "GET", "/api/v10/channels/2", "Bot "+token); a.status != 200 {
		t.Fatalf("another channel: %d", a.status)
	}
	if n := s.Invalid(time.Minute); n != 1 {
		t.Fatalf("invalid %d", n)
	}
}

func TestSharedHash(t *testing.T) {
	s := start(t, nil)
	for i, m := range []string{"POST", "PATCH", "POST", "PATCH", "POST"} {
		path := "/api/v10/channels/1/messages"
		if m == "PATCH" {
			path += "/99"
		}
		if a := call(t, s, m, path, "Bot "+token); a.status != 200 || a.h.Get("X-RateLimit-Remaining") != strconv.Itoa(4-i) {
			t.Fatalf("%s %d: %d remaining %s", m, i, a.status, a.h.Get("X-RateLimit-Remaining"))
		}
	}
	if a := call(t, s, "PATCH", "/api/v10/channels/1/messages/7", "Bot "+token); a.status != 429 {
		t.Fatalf("sixth on the shared bucket: %d", a.status)
	}
}

func TestGlobal(t *testing.T) {
	s := start(t, func(c *Config) { c.GlobalLimit = 3 })
	for i := range 3 {
		if a := call(t, s, "GET", "/api/v10/channels/"+strconv.Itoa(i), "Bot "+token); a.status != 200 {
			t.Fatalf("%d: %d", i, a.status)
		}
	}
	a := call(t, s, "GET", "/api/v10/channels/9", "Bot "+token)
	if a.status != 429 || a.h.Get("X-RateLimit-Global") != "true" || a.h.Get("X-RateLimit-Scope") != "global" || a.h.Get("X-RateLimit-Bucket") != "" || a.body["global"] != true {
		t.Fatalf("over the global limit: %d %v %v", a.status, a.h, a.body)
	}
	if a := call(t, s, "POST", "/api/v10/webhooks/5/wh-token", ""); a.status != 200 {
		t.Fatalf("webhook with its token: %d", a.status)
	}
	if a := call(t, s, "POST", "/api/v10/interactions/5/itok/callback", ""); a.status != 204 || a.h.Get("X-RateLimit-Bucket") != "" {
		t.Fatalf("interaction callback: %d %v", a.status, a.h)
	}
	if st := s.Stats(); st.TooMany["global"] != 1 {
		t.Fatalf("%v", st.TooMany)
	}
	if n := s.MaxArrivals(time.Second); n != 6 {
		t.Fatalf("max arrivals within a second %d", n)
	}
}

func TestSharedScope(t *testing.T) {
	s := start(t, func(c *Config) {
		c.Buckets = FastBuckets()
		c.Buckets[HashGuild] = Bucket{Limit: 5, Window: time.Second, SharedLimit: 1, SharedWindow: time.Second}
		c.Tokens = append(c.Tokens, "other")
	})
	other := "other"
	if a := call(t, s, "GET", "/api/v10/guilds/3", "Bot "+token); a.status != 200 {
		t.Fatalf("%d", a.status)
	}
	a := call(t, s, "GET", "/api/v10/guilds/3", "Bot "+other)
	if a.status != 429 || a.h.Get("X-RateLimit-Scope") != "shared" || a.h.Get("Retry-After") == "" {
		t.Fatalf("another bot on the shared resource: %d %v", a.status, a.h)
	}
	if n := s.Invalid(time.Minute); n != 0 {
		t.Fatalf("a shared 429 counted as invalid: %d", n)
	}
}

func TestAuthForbiddenAndBan(t *testing.T) {
	s := start(t, func(c *Config) { c.BanThreshold = 3 })
	if a := call(t, s, "GET", "/api/v10/users/@me", "Bot wrong"); a.status != 401 {
		t.Fatalf("wrong token: %d", a.status)
	}
	if a := call(t, s, "GET", "/api/v10/users/@me", ""); a.status != 401 {
		t.Fatalf("no token: %d", a.status)
	}
	s.Forbid("8")
	if a := call(t, s, "GET", "/api/v10/channels/8", "Bot "+token); a.status != 403 || a.body["code"] != float64(50001) {
		t.Fatalf("forbidden: %d %v", a.status, a.body)
	}
	a := call(t, s, "GET", "/api/v10/users/@me", "Bot "+token)
	if a.status != 429 || a.h.Get("X-RateLimit-Scope") != "" || a.h.Get("Content-Type") != "text/html" {
		t.Fatalf("banned: %d %v", a.status, a.h)
	}
	if st := s.Stats(); st.TooMany["cloudflare"] != 1 || st.Upstream429s() != 0 {
		t.Fatalf("%v", st.TooMany)
	}
}

func TestWindowReopens(t *testing.T) {
	s := start(t, func(c *Config) {
		c.Buckets = FastBuckets()
		c.Buckets[HashMe] = Bucket{Limit: 1, Window: 50 * time.Millisecond}
	})
	first := call(t, s, "GET", "/api/v10/users/@me", "Bot "+token)
	if first.status != 200 || call(t, s, "GET", "/api/v10/users/@me", "Bot "+token).status != 429 {
		t.Fatal("the limit of 1 did not hold")
	}
	ra, _ := strconv.ParseFloat(first.h.Get("X-RateLimit-Reset-After"), 64)
	time.Sleep(time.Duration(ra*1000)*time.Millisecond + 5*time.Millisecond) // waiting out the simulated window is the point
	if a := call(t, s, "GET", "/api/v10/users/@me", "Bot "+token); a.status != 200 {
		t.Fatalf("after the reset: %d", a.status)
	}
}

// TestHandlerBodyNoArrivals: NewHandler serves without listening, Body
// replaces the answers' bodies (not a 204's), and NoArrivals records none.
func TestHandlerBodyNoArrivals(t *testing.T) {
	s, err := NewHandler(Config{Tokens: []string{token}, Body: `{"ok":true}`, NoArrivals: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.URL != "" {
		t.Errorf("a handler has a URL: %q", s.URL)
	}
	do := func(method, path string) *http.Response {
		req := httptest.NewRequest(method, path, nil)
		req.Header.Set("Authorization", "Bot "+token)
		w := httptest.NewRecorder()
		s.ServeHTTP(w, req)
		return w.Result()
	}
	r := do("GET", "/api/v10/channels/1/messages")
	if b, _ := io.ReadAll(r.Body); r.StatusCode != 200 || string(b) != `{"ok":true}` || r.Header.Get("X-RateLimit-Bucket") != HashRead {
		t.Errorf("GET: %d %q %v", r.StatusCode, b, r.Header)
	}
	r = do("PUT", "/api/v10/channels/1/messages/2/reactions/x/@me")
	if b, _ := io.ReadAll(r.Body); r.StatusCode != 204 || len(b) != 0 {
		t.Errorf("PUT: %d %q", r.StatusCode, b)
	}
	if first, last := s.FirstLast(); !first.IsZero() || !last.IsZero() || s.Stats().Received != 2 {
		t.Errorf("arrivals recorded: %v %v, stats %+v", first, last, s.Stats())
	}
}
