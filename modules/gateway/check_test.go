package gateway

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestUnsafePath(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		rest   string
		refuse bool
	}{
		{"/", false},
		{"/users/@me", false},
		{"/a/file.json", false},
		{"/...", false},
		{"/a..b/.hidden/..c", false},
		{"/a%2Fb", false},
		{"/a%2e", false},
		{"/%5C%5Chost/x", false},
		{"//host/x", false},
		{"/..", true},
		{"/.", true},
		{"/a/../b", true},
		{"/a/./b", true},
		{"/%2e%2e/x", true},
		{"/%2E%2E/x", true},
		{"/.%2e/x", true},
		{"/%2e/x", true},
		{"/..%2fx", true},
		{"/x%2F..%2Fy", true},
		{"/a%2F.%2Fb", true},
		{"/..%5cx", true},
		{"/a%5C..%5Cb", true},
		{`/..\x`, true},
		{"/..;/x", true},
		{"/.;jsessionid=1/x", true},
		{"/%2e%2e;a=b/x", true},
		{"/a%zzb", true}, // not validly encoded
	} {
		if got := UnsafePath(c.rest) != ""; got != c.refuse {
			t.Errorf("UnsafePath(%q) refuses = %v, want %v", c.rest, got, c.refuse)
		}
	}
}

// LocalRefusal is the one answer to "will the gateway refuse this request
// itself?", which byteproxy_services answers with and byteproxy_ratelimit
// asks so as not to count such a request.
func TestLocalRefusal(t *testing.T) {
	t.Setenv("BYTEPROXY_TEST_GH_TOKEN", "ghp-x")
	build := func(key string, cfg ServiceConfig) *Service {
		t.Helper()
		s, err := BuildService(key, cfg, "config", BuildOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	gh := build("gh", ServiceConfig{Preset: "github", Auth: &ServiceAuth{Type: "bearer", Token: "{env.BYTEPROXY_TEST_GH_TOKEN}"}})
	plain := build("plain", ServiceConfig{BaseURL: "https://api.example/"})
	missing := build("nobot", ServiceConfig{BaseURL: "https://api.example/", Auth: &ServiceAuth{Type: "bot", Token: "{env.BYTEPROXY_TEST_UNSET_TOKEN}"}})
	get := httptest.NewRequest(http.MethodGet, "/", nil)
	for _, c := range []struct {
		svc    *Service
		rest   string
		status int
	}{
		{gh, "/orgs/caddyserver/repos", 0},
		{gh, "/org/caddyserver", http.StatusBadRequest},
		{gh, "/org", http.StatusBadRequest},
		{gh, "/organizations", 0},
		{plain, "/org/x", 0}, // the hint is GitHub's alone
		{plain, "/a/%2e%2e/b", http.StatusBadRequest},
		{missing, "/users/@me", http.StatusUnauthorized},
		{missing, "/a/../b", http.StatusBadRequest}, // the path before the token, as the original
	} {
		status, body := c.svc.LocalRefusal(get, c.rest)
		if status != c.status || (status == 0) != (body == nil) {
			t.Errorf("%s %s: status %d body %v, want %d", c.svc.Key, c.rest, status, body, c.status)
		}
	}
	if _, body := missing.LocalRefusal(get, "/x"); body.(tokenMissingBody).Hint != "Set the environment variable: BYTEPROXY_TEST_UNSET_TOKEN" {
		t.Errorf("token hint %+v", body)
	}
	// Methods and upgrades the gateway never forwards come first.
	for method, want := range map[string]int{http.MethodTrace: 405, http.MethodConnect: 405, http.MethodPost: 0} {
		if status, _ := plain.LocalRefusal(httptest.NewRequest(method, "/", nil), "/x"); status != want {
			t.Errorf("%s: status %d, want %d", method, status, want)
		}
	}
	up := httptest.NewRequest(http.MethodGet, "/", nil)
	up.Header.Set("Upgrade", "h2c")
	if status, _ := plain.LocalRefusal(up, "/x"); status != http.StatusBadRequest {
		t.Errorf("Upgrade h2c: status %d, want 400", status)
	}
}
