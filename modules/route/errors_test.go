package route

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/byteproxy/byteproxy/internal/testutil"
)

const errorsKey = "errors-proxy-key-0123456789"

// errorsGateway runs one gateway with five sites on one server (custom,
// vars, only404, broken with handle_errors; same without) and one site on a
// server of its own without handle_errors (plain), at debug level.
// Services: "ok" (limited to one request a minute) and "down" (nothing
// listens).
func errorsGateway(t *testing.T) (in *testutil.Instance, plainPort int) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, `{"ok":true}`)
	}))
	t.Cleanup(up.Close)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := ln.Addr().String()
	ln.Close()
	plainPort = testutil.FreePort(t)
	in = testutil.InProcess(t, fmt.Sprintf(`{
	debug
	byteproxy {
		auth proxy {
			key %s
		}
		service ok {
			base_url %s/
			rate_limit 1 1m
		}
		service down {
			base_url http://%s/
		}
	}
}
http://custom.localhost:{{PORT}} {
	byteproxy
	handle_errors {
		respond "custom {http.error.status_code} {http.error.message}"
	}
}
http://vars.localhost:{{PORT}} {
	byteproxy
	handle_errors {
		respond {vars.byteproxy_error_body}
	}
}
http://only404.localhost:{{PORT}} {
	byteproxy
	handle_errors 404 {
		respond "custom 404"
	}
}
http://broken.localhost:{{PORT}} {
	byteproxy
	handle_errors {
		root * %s
		file_server
	}
}
http://same.localhost:{{PORT}} {
	byteproxy
}
http://plain.localhost:%d {
	byteproxy
}
`, errorsKey, up.URL, down, t.TempDir(), plainPort), testutil.Options{})
	return in, plainPort
}

type answer struct {
	status int
	header http.Header
	body   string
}

func ask(t *testing.T, port int, host, path string, key bool) answer {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d%s", port, path), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	if key {
		req.Header.Set("X-API-Key", errorsKey)
	}
	client := &http.Client{Timeout: 10 * time.Second}
	res, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return answer{res.StatusCode, res.Header, string(b)}
}

var digits = regexp.MustCompile(`[0-9]+`)

// TestHandleErrors: the gateway's own error answers (401, 404 for an
// unknown service or path, 429, 502) go through a site's handle_errors, with the
// headers the gateway set (Retry-After, WWW-Authenticate) kept and the
// JSON body in {vars.byteproxy_error_body}; where no error route answers
// (another site, `handle_errors 404` for a 401) and on a server without
// handle_errors the answer is the JSON body, the same byte for byte. The
// debug log has no key in it.
func TestHandleErrors(t *testing.T) {
	in, plainPort := errorsGateway(t)
	port := in.Port
	// Spend the limit of "ok".
	for i := 0; ; i++ {
		a := ask(t, plainPort, "plain.localhost", "/proxy/ok/x", true)
		if a.status == http.StatusTooManyRequests {
			break
		}
		if a.status != http.StatusOK || i == 5 {
			t.Fatalf("request %d to ok: %d %s", i, a.status, a.body)
		}
	}
	cases := []struct {
		name, path string
		key        bool
		status     int
		message    string // {http.error.message}
	}{
		{"no key", "/proxy/ok/x", false, 401, "No authentication provided. API key required for proxy routes."},
		{"unknown service", "/proxy/nope/x", true, 404, "Service 'nope' not configured"},
		{"unknown endpoint", "/nothing-here", false, 404, "The endpoint '/nothing-here' does not exist"},
		{"rate limit", "/proxy/ok/x", true, 429, "Rate limit exceeded for ok. Reset in N seconds."},
		{"upstream down", "/proxy/down/x", true, 502, ""},
	}
	for _, c := range cases {
		plain := ask(t, plainPort, "plain.localhost", c.path, c.key)
		if plain.status != c.status || !strings.HasPrefix(plain.header.Get("Content-Type"), "application/json") ||
			plain.header.Get("X-Proxy-Error") != "true" {
			t.Fatalf("%s without handle_errors: %d %v %s", c.name, plain.status, plain.header, plain.body)
		}
		// N for the seconds, which may tick between two requests.
		norm := func(s string) string { return digits.ReplaceAllString(s, "N") }

		same := ask(t, port, "same.localhost", c.path, c.key)
		if same.status != c.status || norm(same.body) != norm(plain.body) {
			t.Errorf("%s, handle_errors on another site: %d %s, want %d %s", c.name, same.status, same.body, c.status, plain.body)
		}
		for _, h := range []string{"Content-Type", "Cache-Control", "X-Proxy-Error", "X-Proxy-Service", "WWW-Authenticate", "Allow"} {
			if same.header.Get(h) != plain.header.Get(h) {
				t.Errorf("%s, another site: %s %q, without handle_errors %q", c.name, h, same.header.Get(h), plain.header.Get(h))
			}
		}
		if (same.header.Get("Retry-After") != "") != (plain.header.Get("Retry-After") != "") {
			t.Errorf("%s, another site: Retry-After %q, without handle_errors %q", c.name, same.header.Get("Retry-After"), plain.header.Get("Retry-After"))
		}

		custom := ask(t, port, "custom.localhost", c.path, c.key)
		prefix := fmt.Sprintf("custom %d ", c.status)
		if custom.status != c.status || !strings.HasPrefix(custom.body, prefix) ||
			(c.message != "" && norm(custom.body) != norm(prefix+c.message)) {
			t.Errorf("%s, handle_errors: %d %q, want %d %q", c.name, custom.status, custom.body, c.status, prefix+c.message)
		}
		if ct := custom.header.Get("Content-Type"); strings.Contains(ct, "json") {
			t.Errorf("%s, handle_errors: Content-Type %q: the gateway's, not the error route's", c.name, ct)
		}
		if strings.Contains(custom.body, errorsKey) {
			t.Errorf("%s: the key is in the error message", c.name)
		}
		switch c.status {
		case 401:
			if custom.header.Get("WWW-Authenticate") == "" {
				t.Errorf("401 through handle_errors lost WWW-Authenticate: %v", custom.header)
			}
		case 429:
			if custom.header.Get("Retry-After") == "" {
				t.Errorf("429 through handle_errors lost Retry-After: %v", custom.header)
			}
		}

		vars := ask(t, port, "vars.localhost", c.path, c.key)
		if vars.status != c.status || norm(vars.body) != norm(plain.body) || !strings.HasPrefix(vars.header.Get("Content-Type"), "application/json") {
			t.Errorf("%s, respond {vars.byteproxy_error_body}: %d %q %s, want %d %s", c.name, vars.status,
				vars.header.Get("Content-Type"), vars.body, c.status, plain.body)
		}

		only := ask(t, port, "only404.localhost", c.path, c.key)
		if c.status == 404 {
			if only.body != "custom 404" {
				t.Errorf("handle_errors 404 on a 404: %d %s", only.status, only.body)
			}
		} else if only.status != c.status || norm(only.body) != norm(plain.body) {
			t.Errorf("%s, handle_errors 404 only: %d %s, want the JSON body %s", c.name, only.status, only.body, plain.body)
		}
	}
	// Error routes that fail (no page to serve): the JSON body, logged.
	plain := ask(t, plainPort, "plain.localhost", "/proxy/ok/x", false)
	if broken := ask(t, port, "broken.localhost", "/proxy/ok/x", false); broken.status != 401 || broken.body != plain.body {
		t.Errorf("failing error routes: %d %s, want 401 %s", broken.status, broken.body, plain.body)
	}
	logs := in.Logs()
	if !strings.Contains(logs, "handle_errors failed on a gateway error") {
		t.Error("no error line for the failing error routes")
	}
	if !strings.Contains(logs, "gateway error answered by handle_errors") {
		t.Errorf("no debug line for the errors handle_errors answered:\n%.3000s", logs)
	}
	if strings.Contains(logs, errorsKey) {
		t.Error("the proxy key is in the log")
	}
}
