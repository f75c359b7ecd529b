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
// the upstream's headers, while the gateway describes its own limit in the
// IETF fields (RateLimit, RateLimit-Policy) and never invents X-RateLimit-*.
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

	if got := resp.Header.Values("Ratelimit-Policy"); len(got) != 1 || got[0] != `"service";q=10;w=60` {
		t.Errorf("RateLimit-Policy = %q, want the gateway's one policy", got)
	}

	resp, _ = testutil.Do(t, "GET", in.URL("/proxy/quota/plain"), nil)
	for k := range resp.Header {
		if strings.HasPrefix(k, "X-Ratelimit") {
			t.Errorf("the gateway invented %s: %q", k, resp.Header.Values(k))
		}
	}
	if got := resp.Header.Values("Ratelimit"); len(got) != 1 || !strings.HasPrefix(got[0], `"service";r=8;t=`) {
		t.Errorf("RateLimit = %q, want the gateway's r=8 after two requests", got)
	}
}
