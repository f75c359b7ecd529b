package services

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/byteproxy/byteproxy/internal/budget"
	"github.com/byteproxy/byteproxy/modules/gateway"
)

// TestUpstreamLimitScope: which upstream answers count as rate-limit
// refusals in byteproxy_upstream_rate_limited_total, by scope.
func TestUpstreamLimitScope(t *testing.T) {
	h := func(kv ...string) http.Header {
		out := http.Header{}
		for i := 0; i+1 < len(kv); i += 2 {
			out.Set(kv[i], kv[i+1])
		}
		return out
	}
	for _, c := range []struct {
		name   string
		status int
		h      http.Header
		scope  string
		ok     bool
	}{
		{"discord bucket", 429, h("X-RateLimit-Scope", "user", "X-RateLimit-Remaining", "0"), "user", true},
		{"discord global", 429, h("X-RateLimit-Global", "true", "Retry-After", "1"), "global", true},
		{"discord shared", 429, h("X-RateLimit-Scope", "shared"), "shared", true},
		{"cloudflare", 429, h(), "other", true},
		{"github primary 429", 429, h("X-RateLimit-Remaining", "0", "X-RateLimit-Resource", "core"), "exhausted", true},
		{"github primary 403", 403, h("X-RateLimit-Remaining", "0", "X-RateLimit-Resource", "core"), "exhausted", true},
		{"github secondary 403", 403, h("X-RateLimit-Remaining", "4000", "Retry-After", "60"), "retry_after", true},
		{"generic 429", 429, h("Retry-After", "3"), "retry_after", true},
		{"github permission 403", 403, h("X-RateLimit-Remaining", "4999", "X-RateLimit-Resource", "core"), "", false},
		{"discord missing access 403 with a spent bucket", 403, h("X-RateLimit-Remaining", "0", "X-RateLimit-Bucket", "abc"), "", false},
	} {
		scope, ok := upstreamLimitScope(c.status, c.h)
		if scope != c.scope || ok != c.ok {
			t.Errorf("%s: %q %v, want %q %v", c.name, scope, ok, c.scope, c.ok)
		}
	}
}

// TestBudgetRefusalShapes: each refusal of the engine is answered in its
// service's shape (the integration tests cover the bucket, GitHub's and
// the 503 through the gateway; these are the other scopes).
func TestBudgetRefusalShapes(t *testing.T) {
	t.Setenv("BP_SHAPE_TOKEN", "shape-token")
	build := func(preset string, kind budget.Kind) *forwarder {
		s := testService(t, gateway.ServiceConfig{Preset: preset, BaseURL: "https://up.example/api/",
			Auth: &gateway.ServiceAuth{Type: "bot", Token: "{env.BP_SHAPE_TOKEN}"}})
		f := newForwarder(s, nil, zap.NewNop(), false)
		f.budget = &gateway.Budget{Kind: kind, MaxWait: 5 * time.Second}
		return f
	}
	refuse := func(f *forwarder, rf *budget.Refusal, prefer string) *httptest.ResponseRecorder {
		var err error = rf
		if rf == nil {
			err = budget.ErrClosed
		}
		rec := httptest.NewRecorder()
		r := httptest.NewRequest("POST", "/proxy/svc/v10/channels/1/messages", nil)
		pw := &proxyWriter{ResponseWriter: rec, f: f, r: r}
		if prefer != "" {
			pw.preferWait, pw.preferApplied = 0, true
		}
		f.refuseBudget(pw, r, err)
		if pw.status != rec.Code || !pw.failed {
			t.Errorf("writer state: status %d (sent %d), failed %v", pw.status, rec.Code, pw.failed)
		}
		return rec
	}
	discord := build("discord", budget.KindDiscord)
	t.Run("discord global", func(t *testing.T) {
		rec := refuse(discord, &budget.Refusal{Scope: budget.ScopeGlobal, Global: true, Status: 429, RetryAfter: 437 * time.Millisecond, Limit: 50}, "wait=0")
		var body map[string]any
		_ = json.Unmarshal(rec.Body.Bytes(), &body)
		h := rec.Header()
		if rec.Code != 429 || body["global"] != true || body["retry_after"] != 0.438 || h.Get("X-Ratelimit-Global") != "true" ||
			h.Get("X-Ratelimit-Scope") != "global" || h.Get("X-Ratelimit-Bucket") != "" || h.Get("X-Ratelimit-Limit") != "" || h.Get("Retry-After") != "1" {
			t.Errorf("%d %v %s", rec.Code, h, rec.Body)
		}
		if h.Get("Preference-Applied") != "wait=0" || h.Get("X-Proxy-Service") != "svc" {
			t.Errorf("Preference-Applied %q, X-Proxy-Service %q", h.Get("Preference-Applied"), h.Get("X-Proxy-Service"))
		}
	})
	t.Run("discord shared", func(t *testing.T) {
		rec := refuse(discord, &budget.Refusal{Scope: budget.ScopeShared, Status: 429, RetryAfter: 2 * time.Second, Name: "abc", Limit: 5}, "")
		if h := rec.Header(); h.Get("X-Ratelimit-Scope") != "shared" || h.Get("X-Ratelimit-Bucket") != "abc" || h.Get("X-Ratelimit-Global") != "" {
			t.Errorf("%v %s", h, rec.Body)
		}
	})
	t.Run("github serial", func(t *testing.T) {
		rec := refuse(build("github", budget.KindGitHub), &budget.Refusal{Scope: budget.ScopeSerial, Status: 429, RetryAfter: time.Second}, "")
		var body map[string]string
		_ = json.Unmarshal(rec.Body.Bytes(), &body)
		if rec.Code != 403 || !strings.Contains(body["message"], "secondary rate limit") || !strings.HasSuffix(body["documentation_url"], "secondary-rate-limits") ||
			rec.Header().Get("X-Ratelimit-Remaining") != "" {
			t.Errorf("%d %v %s", rec.Code, rec.Header(), rec.Body)
		}
	})
	t.Run("generic queue full", func(t *testing.T) {
		rec := refuse(build("", budget.KindGeneric), &budget.Refusal{Scope: budget.ScopeBucket, Status: 429, RetryAfter: 1500 * time.Millisecond, QueueFull: true}, "")
		var body map[string]any
		_ = json.Unmarshal(rec.Body.Bytes(), &body)
		if rec.Code != 429 || body["retry_after"] != nil || body["service"] != "svc" || rec.Header().Get("Retry-After") != "2" || rec.Header().Get("X-Ratelimit-Scope") != "" {
			t.Errorf("%d %v %s", rec.Code, rec.Header(), rec.Body)
		}
	})
	t.Run("engine closed", func(t *testing.T) {
		rec := refuse(discord, nil, "")
		var body map[string]any
		_ = json.Unmarshal(rec.Body.Bytes(), &body)
		if rec.Code != 503 || body["retry_after"] != 1.0 || rec.Header().Get("Retry-After") != "1" || rec.Header().Get("X-Ratelimit-Scope") != "" {
			t.Errorf("%d %v %s", rec.Code, rec.Header(), rec.Body)
		}
	})
}
