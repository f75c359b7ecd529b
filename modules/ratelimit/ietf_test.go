package ratelimit

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
)

// ietfMember finds the member name of an IETF RateLimit or RateLimit-Policy
// field (`"service";r=42;t=17, "client";r=3;t=1`) and returns its integer
// parameters; ok is false when the field has no such member.
func ietfMember(t *testing.T, h http.Header, field, name string) (params map[string]int, ok bool) {
	t.Helper()
	for _, v := range h.Values(field) {
		for member := range strings.SplitSeq(v, ",") {
			parts := strings.Split(strings.TrimSpace(member), ";")
			if parts[0] != strconv.Quote(name) {
				continue
			}
			params = map[string]int{}
			for _, p := range parts[1:] {
				k, val, _ := strings.Cut(p, "=")
				n, err := strconv.Atoi(val)
				if err != nil {
					t.Fatalf("%s: parameter %q of %q is not an integer", field, p, name)
				}
				params[k] = n
			}
			return params, true
		}
	}
	return nil, false
}

// limitState is the RateLimit member of name: remaining and seconds until
// reset. It fails the test when there is none.
func limitState(t *testing.T, h http.Header, name string) (remaining, reset int) {
	t.Helper()
	p, ok := ietfMember(t, h, "RateLimit", name)
	if !ok {
		t.Fatalf("no %q in RateLimit %q", name, h.Values("RateLimit"))
	}
	return p["r"], p["t"]
}

// limitPolicy is the RateLimit-Policy member of name: quota and window.
func limitPolicy(t *testing.T, h http.Header, name string) (quota, window int) {
	t.Helper()
	p, ok := ietfMember(t, h, "RateLimit-Policy", name)
	if !ok {
		t.Fatalf("no %q in RateLimit-Policy %q", name, h.Values("RateLimit-Policy"))
	}
	return p["q"], p["w"]
}

// noXRateLimit fails when a response carries X-RateLimit-*, which the
// gateway's own limits never invent.
func noXRateLimit(t *testing.T, h http.Header) {
	t.Helper()
	for k := range h {
		if strings.HasPrefix(strings.ToLower(k), "x-ratelimit") {
			t.Fatalf("the gateway invented %s: %q", k, h.Values(k))
		}
	}
}
