package auth

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/byteproxy/byteproxy/modules/gateway"
)

func TestFailureStoreBlocksAfterMax(t *testing.T) {
	t.Parallel()
	s := newFailureStore(20, time.Minute)
	now := time.Unix(1_700_000_000, 0)
	a := netip.MustParseAddr("203.0.113.9")
	other := netip.MustParseAddr("203.0.113.10")
	if s.Active() {
		t.Fatal("a new store is active")
	}
	for i := range 20 {
		if _, blocked := s.blocked(now, a); blocked {
			t.Fatalf("blocked after %d failures, want 20 allowed", i)
		}
		s.fail(now, a)
	}
	retry, blocked := s.blocked(now, a)
	if !blocked {
		t.Fatal("not blocked after 20 failures")
	}
	// One token comes back every window/max = 3s.
	if retry <= 0 || retry > 3*time.Second {
		t.Errorf("retry %v, want (0, 3s]", retry)
	}
	if _, blocked := s.blocked(now, other); blocked {
		t.Error("another address is blocked too")
	}
	if _, blocked := s.blocked(now.Add(3*time.Second), a); blocked {
		t.Error("still blocked once a token is back")
	}
	// Failures while blocked change nothing.
	s.fail(now, a)
	if retry2, _ := s.blocked(now, a); retry2 != retry {
		t.Errorf("a failure while blocked moved the retry from %v to %v", retry, retry2)
	}
	// A full bucket is swept; a used one is kept.
	if left := s.Sweep(now.Add(30 * time.Second)); left != 1 {
		t.Errorf("sweep kept %d buckets half a window later, want 1", left)
	}
	if left := s.Sweep(now.Add(2 * time.Minute)); left != 0 || s.Active() {
		t.Errorf("sweep kept %d buckets after the window, active %v", left, s.Active())
	}
}

func TestFailureStoreIPv6By64(t *testing.T) {
	t.Parallel()
	s := newFailureStore(2, time.Minute)
	now := time.Now()
	for _, ip := range []string{"2001:db8:1:2::1", "2001:db8:1:2:ffff::9"} {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r = r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, map[string]any{caddyhttp.ClientIPVarKey: ip}))
		s.fail(now, clientAddr(r))
	}
	if _, blocked := s.blocked(now, netip.MustParseAddr("2001:db8:1:2::")); !blocked {
		t.Error("two addresses of one /64 do not share a bucket")
	}
	if _, blocked := s.blocked(now, netip.MustParseAddr("2001:db8:1:3::")); blocked {
		t.Error("the next /64 is blocked too")
	}
}

// TestFailureStoreBoundedUnderFlood: one failure from each of far more
// addresses than the store holds keeps it at its bound.
func TestFailureStoreBoundedUnderFlood(t *testing.T) {
	t.Parallel()
	s := newFailureStore(20, time.Minute)
	now := time.Now()
	for i := range 200_000 {
		s.fail(now, netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}))
	}
	if held := s.Len(); held > maxFailureBuckets {
		t.Errorf("store holds %d buckets, bound %d", held, maxFailureBuckets)
	}
	// A guesser that used its budget is still blocked unless the flood
	// evicted it: flooding is the only way out, and it costs addresses.
	a := netip.MustParseAddr("198.51.100.1")
	for range 20 {
		s.fail(now, a)
	}
	if _, blocked := s.blocked(now, a); !blocked {
		t.Error("not blocked in a full store")
	}
}

func TestClientAddr(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ clientIP, remote, want string }{
		{"203.0.113.9", "127.0.0.1:1", "203.0.113.9"},
		{"", "203.0.113.9:4000", "203.0.113.9"},
		{"::ffff:203.0.113.9", "", "203.0.113.9"},
		{"2001:db8::1234", "", "2001:db8::"},
		{"fe80::1%eth0", "", "fe80::"},
		{"", "@", "invalid IP"},
	} {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.RemoteAddr = c.remote
		vars := map[string]any{}
		if c.clientIP != "" {
			vars[caddyhttp.ClientIPVarKey] = c.clientIP
		}
		r = r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, vars))
		if got := clientAddr(r).String(); got != c.want {
			t.Errorf("clientAddr(%q, %q) = %s, want %s", c.clientIP, c.remote, got, c.want)
		}
	}
}

// TestThrottledAnswer: past the limit the handler answers 429 without
// checking keys (the right key too), with Retry-After and Connection:
// close; missing keys do not count.
func TestThrottledAnswer(t *testing.T) {
	t.Parallel()
	h := newHandler(gateway.ScopeProxy, gateway.Scope{Keys: []string{proxyKey}, Required: true}, true)
	h.failures = newFailureStore(3, time.Minute)
	req := func(headers ...string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodGet, "/proxy/svc/x", nil)
		r.RemoteAddr = "203.0.113.9:4000"
		for i := 0; i+1 < len(headers); i += 2 {
			r.Header.Set(headers[i], headers[i+1])
		}
		w, _, _ := serve(t, h, r)
		return w
	}
	for range 5 {
		if w := req(); w.Code != 401 {
			t.Fatalf("no key: %d", w.Code)
		}
	}
	for i := range 3 {
		if w := req("X-API-Key", "wrong"); w.Code != 401 {
			t.Fatalf("wrong key %d: %d", i+1, w.Code)
		}
	}
	for _, w := range []*httptest.ResponseRecorder{req("X-API-Key", "wrong"), req("X-API-Key", proxyKey), req()} {
		if w.Code != http.StatusTooManyRequests {
			t.Fatalf("after 3 wrong keys: %d %s", w.Code, w.Body)
		}
		if ra := w.Header().Get("Retry-After"); ra == "" || ra == "0" {
			t.Errorf("Retry-After %q", ra)
		}
		if w.Header().Get("Connection") != "close" {
			t.Errorf("Connection %q, want close", w.Header().Get("Connection"))
		}
	}
}
