package ratelimit

import (
	"net/http"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/byteproxy/byteproxy/modules/gateway"
)

func TestInfoPath(t *testing.T) {
	for _, tc := range []struct {
		path string
		key  string
		ok   bool
	}{
		{"/proxy/services/github/rate-limit", "github", true},
		{"/proxy/services/custom-api/rate-limit", "custom-api", true},
		{"/proxy/services//rate-limit", "", false},
		{"/proxy/services/rate-limit", "", false},
		{"/proxy/services/a/b/rate-limit", "", false},
		{"/proxy/services/github/rate-limit/", "", false},
		{"/proxy/github/rate-limit", "", false},
		{"/proxy/services", "", false},
	} {
		t.Run(tc.path, func(t *testing.T) {
			key, ok := infoPath(tc.path)
			if key != tc.key || ok != tc.ok {
				t.Fatalf("infoPath(%q) = %q, %v; want %q, %v", tc.path, key, ok, tc.key, tc.ok)
			}
		})
	}
}

func TestCeilSecondsAndHumanDuration(t *testing.T) {
	for d, want := range map[time.Duration]int64{0: 0, -time.Second: 0, time.Nanosecond: 1, time.Second: 1, 1500 * time.Millisecond: 2, time.Minute: 60} {
		if got := ceilSeconds(d); got != want {
			t.Errorf("ceilSeconds(%v) = %d, want %d", d, got, want)
		}
	}
	for d, want := range map[time.Duration]string{time.Minute: "1 minute", time.Hour: "1 hour", 2 * time.Hour: "2 hours", 90 * time.Second: "90 seconds", 1500 * time.Millisecond: "1.5s", 24 * time.Hour: "1 day"} {
		if got := humanDuration(d); got != want {
			t.Errorf("humanDuration(%v) = %q, want %q", d, got, want)
		}
	}
}

func TestRedisURLRejected(t *testing.T) {
	for _, url := range []string{"http://127.0.0.1:6379", "redis://127.0.0.1:6379/notanumber"} {
		if s, err := newRedisStore(url, zap.NewNop(), defaultRedisTimings); err == nil {
			_ = s.Destruct()
			t.Errorf("newRedisStore(%q) accepted a bad URL", url)
		}
	}
}

func TestRedisKeys(t *testing.T) {
	if got := redisServiceKey("github", 60, time.Hour); got != "byteproxy:rl:service:github:60:3600000" {
		t.Fatalf("service key %q", got)
	}
	if got := redisClientPrefix(600, time.Minute) + (clientKey{kindKeyID, "k1"}).String(); got != "byteproxy:rl:client:600:60000:key:k1" {
		t.Fatalf("client key %q", got)
	}
}

// A window another request opened after this one read the clock ends more
// than a window after this request's now: its reset still says at most
// the window (TestServiceLimitExactUnderConcurrency once saw 61 of 60).
func TestResetNeverExceedsWindow(t *testing.T) {
	now := time.Now()
	v := verdict{
		service: &serviceLimit{limit: gateway.RateLimit{MaxRequests: 100, Window: caddy.Duration(time.Minute)}},
		window:  windowState{ok: true, remaining: 5, end: now.Add(time.Minute + 3*time.Millisecond)},
	}
	h := http.Header{}
	v.setHeaders(h, now)
	if got := h.Get("X-Ratelimit-Reset"); got != "60" {
		t.Errorf("X-RateLimit-Reset %q, want 60", got)
	}
	v.refused = gateway.LimitService
	v.setHeaders(h, now)
	if got := h.Get("Retry-After"); got != "60" {
		t.Errorf("Retry-After %q, want 60", got)
	}
}
