package ratelimit

import (
	"fmt"
	"testing"

	"github.com/byteproxy/byteproxy/internal/testutil"
)

// clientIPConfig is a client limit of 3 per minute keyed by client IP (no
// key id), behind the given servers options.
func clientIPConfig(servers string) string {
	return `{
	servers {
` + servers + `
	}
	byteproxy {
		client_rate_limit 3 1m
		service x {
			base_url http://127.0.0.1:1/
		}
	}
}
:{{PORT}} {
	route /proxy/* {
		byteproxy_ratelimit
		respond "ok" 200
	}
}
`
}

// spoofedRequests sends 4 requests, each claiming another client address in
// the headers built by spoof(i), and returns their statuses.
func spoofedRequests(t *testing.T, in *testutil.Instance, spoof func(i int) []string) []int {
	t.Helper()
	var statuses []int
	for i := range 4 {
		statuses = append(statuses, get(t, in.URL("/proxy/x/a"), spoof(i)...).status)
	}
	return statuses
}

// TestClientIPNotSpoofable: the per-IP client limit uses the client IP that
// Caddy resolved (which honours trusted_proxies), never a forwarding header
// by itself. Without trusted_proxies, X-Forwarded-For, X-Real-IP and
// Forwarded change nothing; behind a trusted proxy with
// trusted_proxies_strict, the address the proxy appended counts, whatever
// the client put in front of it. Without strict, Caddy takes the leftmost
// address (which the client chooses): that is why the docs prescribe
// strict next to client_rate_limit.
func TestClientIPNotSpoofable(t *testing.T) {
	want := []int{200, 200, 200, 429}
	same := func(got []int) bool { return fmt.Sprint(got) == fmt.Sprint(want) }

	direct := testutil.Start(t, clientIPConfig(""), testutil.Options{})
	got := spoofedRequests(t, direct, func(i int) []string {
		ip := fmt.Sprintf("198.51.100.%d", i+1)
		return []string{"X-Forwarded-For", ip, "X-Real-IP", ip, "Forwarded", "for=" + ip}
	})
	if !same(got) {
		t.Errorf("no trusted_proxies, spoofed headers: statuses %v, want %v (one bucket: the peer's)", got, want)
	}

	strict := testutil.Start(t, clientIPConfig(`		trusted_proxies static 127.0.0.1/32
		trusted_proxies_strict
		client_ip_headers X-Forwarded-For`), testutil.Options{})
	got = spoofedRequests(t, strict, func(i int) []string {
		// The client sent its own X-Forwarded-For; the trusted proxy (this
		// test, on loopback) appended the address it saw.
		return []string{"X-Forwarded-For", fmt.Sprintf("198.51.100.%d, 203.0.113.9", i+1)}
	})
	if !same(got) {
		t.Errorf("trusted_proxies_strict: statuses %v, want %v (one bucket: the address the proxy appended)", got, want)
	}

	lax := testutil.Start(t, clientIPConfig(`		trusted_proxies static 127.0.0.1/32
		client_ip_headers X-Forwarded-For`), testutil.Options{})
	got = spoofedRequests(t, lax, func(i int) []string {
		return []string{"X-Forwarded-For", fmt.Sprintf("198.51.100.%d, 203.0.113.9", i+1)}
	})
	if fmt.Sprint(got) != "[200 200 200 200]" {
		t.Errorf("without strict, Caddy was expected to take the leftmost address: %v", got)
	}
}
