package services

import (
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
)

// TRACE and CONNECT never reach the upstream (issue 11.4): an upstream that
// echoes TRACE would hand the service's credential to the caller. The
// gateway answers 405 with Allow and a JSON body, also with Max-Forwards: 0.
func testTraceConnect(t *testing.T, g *gatewayUnderTest) {
	for _, c := range []struct {
		method string
		extra  []string
	}{
		{"TRACE", nil},
		{"TRACE", []string{"Max-Forwards", "0"}},
		{"CONNECT", nil},
	} {
		id := newID()
		r := rawMethod(t, g.addr(), c.method, "/proxy/up/echo", append([]string{"X-Test-Id", id}, c.extra...)...)
		if g.up.received(id) {
			t.Errorf("%s %v reached the upstream", c.method, c.extra)
		}
		if r.status != http.StatusMethodNotAllowed {
			t.Errorf("%s %v: status %d, want 405: %s", c.method, c.extra, r.status, r.body)
			continue
		}
		if allow := r.header.Get("Allow"); !strings.Contains(allow, "GET") || strings.Contains(allow, "TRACE") || strings.Contains(allow, "CONNECT") {
			t.Errorf("%s: Allow %q", c.method, allow)
		}
		if m := decode(t, r); m["error"] != "Method not allowed" || m["service"] != "up" {
			t.Errorf("%s: body %s", c.method, r.body)
		}
		assertNoSecrets(t, c.method+" answer", string(r.body))
	}
}

// Only WebSocket upgrades pass (issue 11.8): h2c or any other protocol
// would open a tunnel past the gateway's rules. The refusal is 400 and the
// upstream sees nothing; a WebSocket upgrade (any case) still works.
func testUpgrades(t *testing.T, g *gatewayUnderTest) {
	for _, up := range [][]string{
		{"Connection", "Upgrade, HTTP2-Settings", "Upgrade", "h2c", "HTTP2-Settings", "AAMAAABkAAQCAAAAAAIAAAAA"},
		{"Connection", "Upgrade", "Upgrade", "TLS/1.2"},
		{"Connection", "Upgrade", "Upgrade", "websocket, h2c"},
		{"Upgrade", "h2c"}, // without Connection: still not forwarded
	} {
		id := newID()
		r := raw(t, g.addr(), "/proxy/up/ws", append([]string{"X-Test-Id", id}, up...)...)
		if g.up.received(id) {
			t.Errorf("%q reached the upstream", up)
		}
		if r.status != http.StatusBadRequest || !strings.HasPrefix(r.header.Get("Content-Type"), "application/json") {
			t.Errorf("%q: status %d %q, want a JSON 400", up, r.status, r.body)
			continue
		}
		if m := decode(t, r); m["error"] != "Upgrade not allowed" || m["service"] != "up" {
			t.Errorf("%q: body %s", up, r.body)
		}
	}
	r := raw(t, g.addr(), "/proxy/up/ws", "Connection", "Upgrade", "Upgrade", "WebSocket",
		"Sec-WebSocket-Version", "13", "Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	if r.status != http.StatusSwitchingProtocols || r.header.Get("X-Proxy-Service") != "up" {
		t.Errorf("WebSocket upgrade: status %d %v, want 101", r.status, r.header)
	}
}

// Caddy's header directive edits response headers in place (issue 11.5):
// the X-Proxy-Service and X-Proxy-Duration values are each response's own,
// so every response shows exactly one edit, request after request, on
// every service and both paths; and the site without the directive shows
// none.
func testHeaderEdits(t *testing.T, g *gatewayUnderTest) {
	edited := regexp.MustCompile(`^\d+ ms$`)
	for i := range 12 {
		svc := []string{"up", "open"}[i%2]
		method := []string{"GET", "POST", "HEAD"}[i%3]
		var body io.Reader
		if method == "POST" {
			body = strings.NewReader("{}")
		}
		r := call(t, method, "http://"+g.edit+"/proxy/"+svc+"/things", body)
		if r.status != http.StatusOK {
			t.Fatalf("%s %s: status %d", method, svc, r.status)
		}
		if got := r.header.Values("X-Proxy-Service"); len(got) != 1 || got[0] != svc+"-x" {
			t.Errorf("request %d (%s %s): X-Proxy-Service %q, want [%q]", i, method, svc, got, svc+"-x")
		}
		if got := r.header.Values("X-Proxy-Duration"); len(got) != 1 || !edited.MatchString(got[0]) {
			t.Errorf("request %d (%s %s): X-Proxy-Duration %q, want one edit", i, method, svc, got)
		}
	}
	plain := regexp.MustCompile(`^\d+ms$`)
	for _, method := range []string{"GET", "POST"} {
		r := call(t, method, g.url("/proxy/up/things"), strings.NewReader(""))
		if r.header.Get("X-Proxy-Service") != "up" || !plain.MatchString(r.header.Get("X-Proxy-Duration")) {
			t.Errorf("%s on the site without the directive: %v", method, r.header)
		}
	}
}
