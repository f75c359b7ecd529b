package services

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/byteproxy/byteproxy/internal/testutil"
)

// TestUpstreamRateLimitHeadersWin checks that a service with a quota of its
// own (GitHub's, Discord's X-RateLimit-*) reaches the client with exactly
// the upstream's headers, not the gateway's next to them, while a response
// without them carries the gateway's.
func TestUpstreamRateLimitHeadersWin(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/own") {
			w.Header().Set("X-RateLimit-Limit", "5000")
			w.Header().Set("X-RateLimit-Remaining", "4999")
			w.Header().Set("X-RateLimit-Reset", "1795600000")
		}
		_, _ = w.Write([]byte("ok"))
	}))
	defer up.Close()
	in := testutil.Start(t, `{
	byteproxy {
		auth proxy {
			required false
		}
		service quota {
			base_url `+up.URL+`/
			rate_limit 10 1m
		}
	}
}
:{{PORT}} {
	byteproxy
}
`, testutil.Options{})

	resp, _ := testutil.Do(t, "GET", in.URL("/proxy/quota/own"), nil)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	for k, want := range map[string]string{"X-Ratelimit-Limit": "5000", "X-Ratelimit-Remaining": "4999", "X-Ratelimit-Reset": "1795600000"} {
		if got := resp.Header.Values(k); len(got) != 1 || got[0] != want {
			t.Errorf("%s = %q, want only the upstream's %q", k, got, want)
		}
	}

	resp, _ = testutil.Do(t, "GET", in.URL("/proxy/quota/plain"), nil)
	if got := resp.Header.Values("X-Ratelimit-Limit"); len(got) != 1 || got[0] != "10" {
		t.Errorf("X-RateLimit-Limit = %q, want the gateway's 10", got)
	}
	if got := resp.Header.Values("X-Ratelimit-Remaining"); len(got) != 1 || got[0] != "8" {
		t.Errorf("X-RateLimit-Remaining = %q, want 8 after two requests", got)
	}
}
