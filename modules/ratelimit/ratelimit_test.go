package ratelimit

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/byteproxy/byteproxy/internal/metrics"
	"github.com/byteproxy/byteproxy/modules/gateway"
)

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
	h := &Handler{}
	v := verdict{
		service: &serviceLimit{limit: gateway.RateLimit{MaxRequests: 100, Window: caddy.Duration(time.Minute)}, policy: `"service";q=100;w=60`},
		window:  windowState{ok: true, remaining: 5, end: now.Add(time.Minute + 3*time.Millisecond)},
	}
	hdr := http.Header{}
	h.setHeaders(hdr, &v, now)
	if got := hdr.Get("RateLimit"); got != `"service";r=5;t=60` {
		t.Errorf("RateLimit %q, want t=60", got)
	}
	if got := v.serviceReset(now); got != time.Minute {
		t.Errorf("retry after %v, want 1m", got)
	}
}

// The IETF fields name each limit that applies; a request refused by the
// client limit did not read the service window, so only the client's
// state is given. No X-RateLimit-* is ever set by the gateway's limits.
func TestIETFHeaders(t *testing.T) {
	now := time.Now()
	h := &Handler{clientPolicy: policyMember(metrics.LimitClient, 600, time.Minute)}
	if h.clientPolicy != `"client";q=600;w=60` {
		t.Fatalf("client policy %q", h.clientPolicy)
	}
	if got := policyMember(metrics.LimitService, 5, 1500*time.Millisecond); got != `"service";q=5;w=2` {
		t.Fatalf("policy with a fractional window %q, want w rounded up", got)
	}
	sl := &serviceLimit{limit: gateway.RateLimit{MaxRequests: 100, Window: caddy.Duration(time.Minute)}, policy: `"service";q=100;w=60, "client";q=600;w=60`}
	for _, c := range []struct {
		name       string
		v          verdict
		policy, rl string
	}{
		{"both admitted", verdict{service: sl, window: windowState{ok: true, remaining: 42, end: now.Add(17 * time.Second)}, hasClient: true, bucket: bucketState{ok: true, remaining: 599, full: 100 * time.Millisecond}},
			sl.policy, `"service";r=42;t=17, "client";r=599;t=1`},
		{"client refused", verdict{refused: metrics.LimitClient, service: sl, hasClient: true, bucket: bucketState{remaining: 0, full: time.Minute, retry: 100 * time.Millisecond}},
			sl.policy, `"client";r=0;t=60`},
		{"client only", verdict{hasClient: true, bucket: bucketState{ok: true, remaining: 3, full: 2 * time.Second}},
			h.clientPolicy, `"client";r=3;t=2`},
	} {
		hdr := http.Header{}
		h.setHeaders(hdr, &c.v, now)
		if got := hdr.Get("RateLimit-Policy"); got != c.policy {
			t.Errorf("%s: RateLimit-Policy %q, want %q", c.name, got, c.policy)
		}
		if got := hdr.Get("RateLimit"); got != c.rl {
			t.Errorf("%s: RateLimit %q, want %q", c.name, got, c.rl)
		}
		for k := range hdr {
			if strings.HasPrefix(k, "X-Ratelimit") || k == "Retry-After" {
				t.Errorf("%s: the limits set %s", c.name, k)
			}
		}
	}
}
