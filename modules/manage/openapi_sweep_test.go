package manage

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/byteproxy/byteproxy/internal/testutil"
	"github.com/byteproxy/byteproxy/internal/testutil/openapicheck"
	"github.com/byteproxy/byteproxy/internal/testutil/record"
)

// The sweep's keys.
const (
	sweepProxyKey = "sweep-proxy-key-0123456789abcdef"
	sweepMgmtKey  = "sweep-mgmt-key-0123456789abcdef"
)

// notDriven are the documented answers the sweep does not provoke, and
// why. Every other documented (operation, status) must be answered by one
// of the sweep's gateways: a status added to the document must be driven
// here too.
var notDriven = map[string]string{
	"POST /manage/services 500":         "a storage failure: the tests run as root, who can write anywhere",
	"PUT /manage/services/{key} 500":    "a storage failure (see POST)",
	"DELETE /manage/services/{key} 500": "a storage failure (see POST)",
	// The github preset's upstream-budget refusal needs GitHub's limit
	// state: modules/services' TestBudgetGitHub* provoke it, and the
	// harness checks those answers against the document.
	"GET /proxy/{service}/{path} 403":    "the github upstream budget's refusal (modules/services TestBudgetGitHub*)",
	"POST /proxy/{service}/{path} 403":   "as GET",
	"PUT /proxy/{service}/{path} 403":    "as GET",
	"PATCH /proxy/{service}/{path} 403":  "as GET",
	"DELETE /proxy/{service}/{path} 403": "as GET",
	"HEAD /proxy/{service}/{path} 403":   "as GET",
}

// TestOpenAPISweep drives every documented operation through real
// gateways, with each of its documented statuses: its answers are checked
// against the document by the harness (internal/testutil), and the test
// checks that every documented answer was indeed made. Together with the
// check of every answer of every other integration test, the document
// cannot drift from the server (issue 17.1).
func TestOpenAPISweep(t *testing.T) {
	checker, err := openapicheck.Default()
	if err != nil {
		t.Fatal(err)
	}
	up := newSweepUpstream(t)
	var answers []record.Answer
	answers = append(answers, sweepMain(t, up)...)
	answers = append(answers, sweepUnderPressure(t, up)...)
	answers = append(answers, sweepKeylessAndThrottled(t, up)...)

	// The answers the gateways made themselves; an upstream's status says
	// nothing about the document (its headers were checked, as the 200's).
	made := map[string]bool{}
	for i := range answers {
		a := &answers[i]
		if checker.Forwarded(a) {
			a.Status = http.StatusOK
		}
		made[fmt.Sprintf("%s %d", checker.Operation(a), a.Status)] = true
	}
	for _, op := range checker.Operations() {
		method, path, _ := strings.Cut(op, " ")
		item := checker.Doc().Paths.Value(path)
		for status := range item.GetOperation(method).Responses.Map() {
			name := op + " " + status
			if _, skip := notDriven[name]; skip {
				continue
			}
			if !made[name] {
				t.Errorf("no gateway of the sweep answered %s", name)
			}
		}
	}
	for name := range notDriven {
		if made[name] {
			t.Errorf("%s is driven now: remove it from notDriven", name)
		}
	}
}

// sweepUpstream is the services' upstream: /slow answers only when the
// request or the test ends (the service's timeout gives 504), anything
// else 200.
type sweepUpstream struct {
	*httptest.Server
	release chan struct{}
}

func newSweepUpstream(t *testing.T) *sweepUpstream {
	up := &sweepUpstream{release: make(chan struct{})}
	up.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/slow") {
			select {
			case <-r.Context().Done():
			case <-up.release:
			}
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"ok":true}`)
	}))
	t.Cleanup(func() { close(up.release); up.Close() })
	return up
}

// sweepServices are the services every sweep gateway has: up (the
// upstream), limited (one request an hour), dead (nothing listens),
// tokened (its token is not set), and the presets github and discord on
// the upstream, one request an hour each (their 429s have their
// upstream's shape).
func sweepServices(up *sweepUpstream, dead string) string {
	return fmt.Sprintf(`
		service up {
			base_url %[1]s/
			timeout 300ms
			retries 0
		}
		service limited {
			base_url %[1]s/
			rate_limit 1 1h
		}
		service dead {
			base_url http://%[2]s/
			retries 0
		}
		service tokened {
			base_url %[1]s/
			auth bearer {env.BYTEPROXY_SWEEP_UNSET_TOKEN}
		}
		service github {
			base_url %[1]s/
			rate_limit 1 1h
		}
		service discord {
			base_url %[1]s/
			rate_limit 1 1h
		}`, up.URL, dead)
}

var proxyMethods = []string{"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}

// do sends a request and fails the test when the status is not want.
func do(t *testing.T, in *testutil.Instance, want int, method, path string, body []byte, headers ...string) {
	t.Helper()
	resp, raw := testutil.Do(t, method, in.URL(path), body, headers...)
	if resp.StatusCode != want {
		t.Errorf("%s %s: %d, want %d: %.300s", method, path, resp.StatusCode, want, raw)
	}
}

func deadAddress(t *testing.T) string {
	return fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
}

// sweepMain drives every operation's answers but 503 and the 429 and 403
// of the auth handler (see the other sweeps).
func sweepMain(t *testing.T, up *sweepUpstream) []record.Answer {
	in := testutil.Start(t, fmt.Sprintf(`{
	byteproxy {
		auth proxy {
			key %s
		}
		auth management {
			key %s
		}
		auth_failures 1000 1m
		cors {
			origins https://app.example
		}
		%s
	}
}
:{{PORT}} {
	bind 127.0.0.1
	byteproxy
}
`, sweepProxyKey, sweepMgmtKey, sweepServices(up, deadAddress(t))), testutil.Options{Env: []string{"GITHUB_TOKEN=sweep-github-token", "DISCORD_BOT_TOKEN=sweep-discord-token"}})
	px := []string{"X-API-Key", sweepProxyKey}
	mg := []string{"X-API-Key", sweepMgmtKey, "Content-Type", "application/json"}
	wrong := []string{"X-API-Key", "wrong-key"}

	// The proxy, every method.
	for _, m := range proxyMethods {
		do(t, in, 200, m, "/proxy/up/x", nil, px...)
		do(t, in, 400, m, "/proxy/up/%2e%2e/x", nil, px...)
		do(t, in, 401, m, "/proxy/up/x", nil)
		do(t, in, 404, m, "/proxy/nope/x", nil, px...)
		do(t, in, 502, m, "/proxy/dead/x", nil, px...)
		do(t, in, 401, m, "/proxy/tokened/x", nil, px...) // token missing
	}
	do(t, in, 400, "GET", "/proxy/github/org/acme", nil, px...)
	for _, m := range proxyMethods {
		do(t, in, 504, m, "/proxy/up/slow", nil, px...)
	}
	do(t, in, 200, "GET", "/proxy/limited/x", nil, px...) // spends the hour's request
	for _, m := range proxyMethods {
		do(t, in, 429, m, "/proxy/limited/x", nil, px...)
	}
	for _, p := range []string{"/proxy/github/repos/o/r", "/proxy/discord/v10/users/@me"} {
		do(t, in, 200, "GET", p, nil, px...)
		do(t, in, 429, "GET", p, nil, px...)
	}
	do(t, in, 405, "TRACE", "/proxy/up/x", nil, px...)
	// CORS preflights: an allowed origin, another one.
	preflight := func(origin string) []string {
		return []string{"Origin", origin, "Access-Control-Request-Method", "GET"}
	}
	do(t, in, 204, "OPTIONS", "/proxy/up/x", nil, preflight("https://app.example")...)
	do(t, in, 403, "OPTIONS", "/proxy/up/x", nil, preflight("https://evil.example")...)
	do(t, in, 403, "OPTIONS", "/", nil, preflight("https://evil.example")...)

	// The proxy scope's own endpoints.
	for _, p := range []string{"/proxy/services", "/proxy/services/up/rate-limit", "/proxy/services/limited/rate-limit", "/proxy/auth-test", "/proxy/auth-debug", "/proxy/key-debug"} {
		do(t, in, 200, "GET", p, nil, px...)
		do(t, in, 401, "GET", p, nil, wrong...)
	}
	do(t, in, 404, "GET", "/proxy/services/nope/rate-limit", nil, px...)

	// Management.
	svc := []byte(`{"key":"added","config":{"name":"Added","baseUrl":"https://api.example.com/"}}`)
	do(t, in, 201, "POST", "/manage/services", svc, mg...)
	do(t, in, 409, "POST", "/manage/services", svc, mg...)
	do(t, in, 400, "POST", "/manage/services", []byte(`{"key":"bad key","config":{"baseUrl":"https://api.example.com/"}}`), mg...)
	do(t, in, 415, "POST", "/manage/services", svc, "X-API-Key", sweepMgmtKey)
	do(t, in, 200, "GET", "/manage/services/added", nil, mg...)
	do(t, in, 404, "GET", "/manage/services/nope", nil, mg...)
	do(t, in, 200, "PUT", "/manage/services/added", []byte(`{"name":"Added","baseUrl":"https://api.example.org/"}`), mg...)
	do(t, in, 400, "PUT", "/manage/services/added", []byte(`{"baseUrl":"ftp://x/"}`), mg...)
	do(t, in, 404, "PUT", "/manage/services/bad%20key", []byte(`{"baseUrl":"https://api.example.org/"}`), mg...)
	do(t, in, 409, "PUT", "/manage/services/up", []byte(`{"baseUrl":"https://api.example.org/"}`), mg...)
	do(t, in, 415, "PUT", "/manage/services/added", []byte(`{}`), "X-API-Key", sweepMgmtKey)
	do(t, in, 200, "POST", "/manage/services/up/test", nil, mg...)
	do(t, in, 502, "POST", "/manage/services/dead/test", nil, mg...)
	do(t, in, 404, "POST", "/manage/services/nope/test", nil, mg...)
	do(t, in, 415, "POST", "/manage/services/up/test", nil, "X-API-Key", sweepMgmtKey)
	do(t, in, 409, "DELETE", "/manage/services/up", nil, mg...)
	do(t, in, 200, "DELETE", "/manage/services/added", nil, mg...)
	do(t, in, 404, "DELETE", "/manage/services/added", nil, mg...)
	for _, op := range []struct{ method, path string }{
		{"GET", "/manage/services"}, {"POST", "/manage/services"}, {"GET", "/manage/services/up"}, {"PUT", "/manage/services/up"},
		{"DELETE", "/manage/services/up"}, {"POST", "/manage/services/up/test"}, {"GET", "/manage/diagnostics"}, {"GET", "/manage/key-debug"},
	} {
		do(t, in, 401, op.method, op.path, []byte(`{}`), "X-API-Key", "wrong-key", "Content-Type", "application/json")
	}
	do(t, in, 200, "GET", "/manage/services", nil, mg...)
	do(t, in, 200, "GET", "/manage/diagnostics", nil, mg...)
	do(t, in, 200, "GET", "/manage/key-debug", nil, mg...)

	// Information and documentation.
	for _, p := range []string{"/", "/health", "/status", "/up", "/ready", "/version", "/version/check", "/auth-status", "/docs", "/docs/openapi.json", "/docs/json"} {
		do(t, in, 200, "GET", p, nil)
	}
	do(t, in, 204, "OPTIONS", "/", nil)
	do(t, in, 404, "GET", "/nope", nil)
	do(t, in, 405, "POST", "/health", nil)

	answers := in.Answers()
	// The presets' 429s were checked in their upstream's shape.
	for prefix, field := range map[string]string{"/proxy/discord/": `"retry_after"`, "/proxy/github/": `"documentation_url"`} {
		if !slices.ContainsFunc(answers, func(a record.Answer) bool {
			return a.Status == 429 && strings.HasPrefix(a.Path, prefix) && strings.Contains(string(a.Body), field)
		}) {
			t.Errorf("no 429 of %s with %s recorded", prefix, field)
		}
	}
	return answers
}

// sweepUnderPressure drives the 503s: a gateway whose heap is always over
// its limit sheds every request but /up, /health and /ready (which say
// so); the informational endpoints, which the byteproxy directive does not
// shed, are shed by byteproxy_pressure in front of byteproxy_manage.
func sweepUnderPressure(t *testing.T, up *sweepUpstream) []record.Answer {
	in := testutil.Start(t, fmt.Sprintf(`{
	byteproxy {
		auth proxy {
			key %s
		}
		auth management {
			key %s
		}
		pressure {
			max_heap 1KiB
			interval 100ms
		}
		%s
	}
}
:{{PORT}} {
	bind 127.0.0.1
	handle_path /composed/* {
		byteproxy_pressure
		byteproxy_manage
	}
	handle {
		byteproxy
	}
}
`, sweepProxyKey, sweepMgmtKey, sweepServices(up, deadAddress(t))), testutil.Options{})
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, _ := testutil.Do(t, "GET", in.URL("/ready"), nil)
		if resp.StatusCode == 503 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the gateway with max_heap 1KiB is not under pressure after 20s")
		}
		time.Sleep(100 * time.Millisecond) // the monitor's next reading
	}
	px := []string{"X-API-Key", sweepProxyKey}
	mg := []string{"X-API-Key", sweepMgmtKey, "Content-Type", "application/json"}
	for _, m := range proxyMethods {
		do(t, in, 503, m, "/proxy/up/x", nil, px...)
	}
	for _, p := range []string{"/proxy/services", "/proxy/services/up/rate-limit", "/proxy/auth-test", "/proxy/auth-debug", "/proxy/key-debug"} {
		do(t, in, 503, "GET", p, nil, px...)
	}
	for _, op := range []struct{ method, path string }{
		{"GET", "/manage/services"}, {"POST", "/manage/services"}, {"GET", "/manage/services/up"}, {"PUT", "/manage/services/up"},
		{"DELETE", "/manage/services/up"}, {"POST", "/manage/services/up/test"}, {"GET", "/manage/diagnostics"}, {"GET", "/manage/key-debug"},
	} {
		do(t, in, 503, op.method, op.path, []byte(`{}`), mg...)
	}
	for _, p := range []string{"/", "/status", "/version", "/version/check", "/auth-status", "/docs", "/docs/openapi.json", "/docs/json"} {
		do(t, in, 503, "GET", "/composed"+p, nil)
	}
	do(t, in, 503, "OPTIONS", "/composed/", nil)
	for _, p := range []string{"/up", "/health"} {
		do(t, in, 200, "GET", "/composed"+p, nil)
	}
	do(t, in, 503, "GET", "/composed/ready", nil)
	return in.Answers()
}

// sweepKeylessAndThrottled drives the auth handler's refusals: 403 for a
// management request that is not from a local program while management
// has no key, then 429 for every scoped endpoint once this address has
// sent too many wrong keys.
func sweepKeylessAndThrottled(t *testing.T, up *sweepUpstream) []record.Answer {
	in := testutil.Start(t, fmt.Sprintf(`{
	byteproxy {
		auth proxy {
			key %s
		}
		auth management {
			required false
		}
		auth_failures 2 1h
		%s
	}
}
:{{PORT}} {
	bind 127.0.0.1
	byteproxy
}
`, sweepProxyKey, sweepServices(up, deadAddress(t))), testutil.Options{})
	manage := []struct{ method, path string }{
		{"GET", "/manage/services"}, {"POST", "/manage/services"}, {"GET", "/manage/services/up"}, {"PUT", "/manage/services/up"},
		{"DELETE", "/manage/services/up"}, {"POST", "/manage/services/up/test"}, {"GET", "/manage/diagnostics"}, {"GET", "/manage/key-debug"},
	}
	for _, op := range manage {
		// Through a proxy: not a local program.
		do(t, in, 403, op.method, op.path, []byte(`{}`), "X-Forwarded-For", "203.0.113.7", "Content-Type", "application/json")
	}
	for range 3 {
		testutil.Do(t, "GET", in.URL("/proxy/auth-test"), nil, "X-API-Key", "guess")
	}
	px := []string{"X-API-Key", sweepProxyKey}
	for _, m := range proxyMethods {
		do(t, in, 429, m, "/proxy/up/x", nil, px...)
	}
	for _, p := range []string{"/proxy/services", "/proxy/services/up/rate-limit", "/proxy/auth-test", "/proxy/auth-debug", "/proxy/key-debug"} {
		do(t, in, 429, "GET", p, nil, px...)
	}
	for _, op := range manage {
		do(t, in, 429, op.method, op.path, []byte(`{}`), "Content-Type", "application/json")
	}
	answers := in.Answers()
	if !slices.ContainsFunc(answers, func(a record.Answer) bool { return a.Status == 429 }) {
		t.Fatal("no 429 recorded")
	}
	return answers
}
