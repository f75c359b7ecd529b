package auth

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/byteproxy/byteproxy/modules/gateway"
)

func TestIsLocalHost(t *testing.T) {
	t.Parallel()
	for host, want := range map[string]bool{
		"localhost":              true,
		"localhost:3420":         true,
		"LOCALHOST:3420":         true,
		"127.0.0.1":              true,
		"127.0.0.1:80":           true,
		"[::1]":                  true,
		"[::1]:3420":             true,
		"":                       false,
		"::1":                    false, // not a Host without brackets
		"::1:3420":               false,
		"[::1]:x":                false,
		"localhost:99999999":     false,
		"localhost.":             false,
		"127.0.0.2:3420":         false,
		"[::ffff:127.0.0.1]:80":  false,
		"0.0.0.0:3420":           false,
		"evil.example":           false,
		"evil.example:3420":      false,
		"localhost.evil.example": false,
		"127.0.0.1.nip.io:3420":  false,
		"localhost@evil.example": false,
		"[localhost]:3420":       true, // SplitHostPort's reading; still this machine
	} {
		if got := isLocalHost(host); got != want {
			t.Errorf("isLocalHost(%q) = %v, want %v", host, got, want)
		}
	}
}

func TestCrossSite(t *testing.T) {
	t.Parallel()
	cases := []struct {
		headers []string
		want    bool
	}{
		{nil, false},
		{[]string{"Origin", "http://localhost:3420"}, false},
		{[]string{"Origin", "http://localhost:8080"}, false}, // a local page: local, as the Host rule
		{[]string{"Origin", "https://127.0.0.1"}, false},
		{[]string{"Origin", "http://[::1]:3000"}, false},
		{[]string{"Origin", "https://evil.example"}, true},
		{[]string{"Origin", "http://localhost.evil.example"}, true},
		{[]string{"Origin", "null"}, true},
		{[]string{"Origin", ""}, true},
		{[]string{"Origin", "file://"}, true},
		{[]string{"Origin", "chrome-extension://abc"}, true},
		{[]string{"Sec-Fetch-Site", "cross-site"}, true},
		{[]string{"Sec-Fetch-Site", "same-site"}, false},
		{[]string{"Sec-Fetch-Site", "none"}, false}, // typed into the address bar
		{[]string{"Origin", "http://localhost:3420", "Sec-Fetch-Site", "cross-site"}, true},
	}
	for _, c := range cases {
		r := httptest.NewRequest(http.MethodGet, "/manage/services", nil)
		for i := 0; i+1 < len(c.headers); i += 2 {
			r.Header[c.headers[i]] = []string{c.headers[i+1]}
		}
		if got := crossSite(r); got != c.want {
			t.Errorf("crossSite(%q) = %v, want %v", c.headers, got, c.want)
		}
	}
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r.Header["Origin"] = []string{"http://localhost", "https://evil.example"}
	if !crossSite(r) {
		t.Error("two Origin headers must be refused")
	}
}

// TestKeylessManagementLocalOnly runs requests through a management
// handler without a key: only a program on this machine, talking to it
// directly under a loopback name, gets through.
func TestKeylessManagementLocalOnly(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name     string
		remote   string
		host     string
		clientIP string // Caddy's resolved client IP; "" for unset
		headers  []string
		reason   string // "" = passes; else a word of the 403 message
	}{
		{"curl to localhost", "127.0.0.1:5000", "localhost:3420", "127.0.0.1", nil, ""},
		{"curl to 127.0.0.1", "127.0.0.1:5000", "127.0.0.1:3420", "127.0.0.1", nil, ""},
		{"curl to [::1]", "[::1]:5000", "[::1]:3420", "::1", nil, ""},
		{"local page", "127.0.0.1:5000", "localhost:3420", "127.0.0.1", []string{"Origin", "http://localhost:8080", "Sec-Fetch-Site", "same-site"}, ""},
		{"remote peer", "203.0.113.9:5000", "localhost:3420", "203.0.113.9", nil, "only available from localhost"},
		{"X-Forwarded-For", "127.0.0.1:5000", "localhost:3420", "127.0.0.1", []string{"X-Forwarded-For", "8.8.8.8"}, "X-Forwarded-For"},
		{"X-Forwarded-For naming loopback", "127.0.0.1:5000", "localhost:3420", "127.0.0.1", []string{"X-Forwarded-For", "127.0.0.1"}, "proxy"},
		{"Forwarded", "127.0.0.1:5000", "localhost:3420", "127.0.0.1", []string{"Forwarded", "for=8.8.8.8"}, "Forwarded"},
		{"X-Real-IP", "127.0.0.1:5000", "localhost:3420", "127.0.0.1", []string{"X-Real-Ip", "8.8.8.8"}, "X-Real-Ip"},
		{"Via", "127.0.0.1:5000", "localhost:3420", "127.0.0.1", []string{"Via", "1.1 Caddy"}, "Via"},
		{"X-Forwarded-Host", "127.0.0.1:5000", "localhost:3420", "127.0.0.1", []string{"X-Forwarded-Host", "gw.example"}, "X-Forwarded-Host"},
		{"trusted proxy resolved a remote client", "127.0.0.1:5000", "localhost:3420", "8.8.8.8", nil, "trusted_proxies"},
		{"DNS rebinding", "127.0.0.1:5000", "attacker.example:3420", "127.0.0.1", nil, "DNS rebinding"},
		{"no Host", "127.0.0.1:5000", "", "127.0.0.1", nil, "DNS rebinding"},
		{"forged page", "127.0.0.1:5000", "localhost:3420", "127.0.0.1", []string{"Origin", "https://evil.example"}, "another origin"},
		{"null origin", "127.0.0.1:5000", "localhost:3420", "127.0.0.1", []string{"Origin", "null"}, "another origin"},
		{"cross-site GET without Origin", "127.0.0.1:5000", "localhost:3420", "127.0.0.1", []string{"Sec-Fetch-Site", "cross-site"}, "another origin"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := newHandler(gateway.ScopeManagement, gateway.Scope{}, true)
			r := httptest.NewRequest(http.MethodPut, "/manage/services/payments", nil)
			r.RemoteAddr, r.Host = c.remote, c.host
			for i := 0; i+1 < len(c.headers); i += 2 {
				r.Header[c.headers[i]] = []string{c.headers[i+1]}
			}
			vars := map[string]any{}
			if c.clientIP != "" {
				vars[caddyhttp.ClientIPVarKey] = c.clientIP
			}
			r = r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, vars))
			w := httptest.NewRecorder()
			next := new(served)
			if err := h.ServeHTTP(w, r, next); err != nil {
				t.Fatal(err)
			}
			if c.reason == "" {
				if !next.called {
					t.Fatalf("refused: %d %s", w.Code, w.Body)
				}
				return
			}
			if next.called || w.Code != http.StatusForbidden {
				t.Fatalf("status %d (passed: %v), want 403", w.Code, next.called)
			}
			if body := w.Body.String(); !strings.Contains(body, c.reason) || !strings.Contains(body, "management key") {
				t.Errorf("403 body does not say why (%q) and what to set: %s", c.reason, body)
			}
		})
	}

	// With the management key, none of this matters: the key decides.
	h := newHandler(gateway.ScopeManagement, gateway.Scope{Keys: []string{mgmtKey}, Required: true}, true)
	r := httptest.NewRequest(http.MethodPut, "/manage/services/payments", nil)
	r.RemoteAddr, r.Host = "127.0.0.1:5000", "gw.example"
	r.Header.Set("X-Forwarded-For", "8.8.8.8")
	r.Header.Set("Origin", "https://admin.example")
	r.Header.Set("X-API-Key", mgmtKey)
	if w, next, _ := serve(t, h, r); !next.called {
		t.Errorf("management key through a proxy: %d %s", w.Code, w.Body)
	}
}
