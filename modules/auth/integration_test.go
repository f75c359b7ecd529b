package auth

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/byteproxy/byteproxy/internal/testutil"
)

// Integration tests run the real byteproxy binary. Keys reach it through
// the environment ({env.X}), as in production, so they never appear in a
// config file or in the JSON Caddy logs.

var keyEnv = []string{
	"BP_TEST_PROXY_KEY=" + proxyKey,
	"BP_TEST_PROXY_KEY2=" + proxyKey2,
	"BP_TEST_MGMT_KEY=" + mgmtKey,
}

// gatewayConfig protects /proxy/* with two proxy keys and /manage/* with a
// management key. /echo/* is a custom composition, byteproxy_auth in front
// of Caddy's reverse_proxy, so the upstream shows what would leave the
// gateway. The access log filter drops X-API-Key and ?api_key= because
// Caddy logs the request as it arrived, before any handler strips it.
const gatewayConfig = `{
	log {
		level DEBUG
	}
	byteproxy {
		auth proxy {
			key {env.BP_TEST_PROXY_KEY}
			%s
			key {env.BP_TEST_UNSET_KEY}
		}
		auth management {
			key {env.BP_TEST_MGMT_KEY}
		}
		%s
	}
}

:{{PORT}} {
	log {
		format filter {
			request>headers>X-Api-Key delete
			request>uri query {
				delete api_key
			}
		}
	}
	handle /echo/* {
		route {
			byteproxy_auth proxy
			request_header X-Client-Id {http.vars.byteproxy.client}
			reverse_proxy 127.0.0.1:%d
		}
	}
	handle {
		byteproxy
	}
}
`

// gw is a running gateway that remembers every response it gave, so a
// test can scan them all for key material at the end.
type gw struct {
	t        *testing.T
	in       *testutil.Instance
	upstream *recorder
	mu       sync.Mutex
	seen     strings.Builder
}

// recorder is an upstream that remembers the last request it got.
type recorder struct {
	mu   sync.Mutex
	last *http.Request
	srv  *httptest.Server
}

func newRecorder(t *testing.T) *recorder {
	rec := new(recorder)
	rec.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec.mu.Lock()
		rec.last = r.Clone(context.Background())
		rec.mu.Unlock()
		w.WriteHeader(http.StatusOK)
		io.WriteString(w, "upstream ok")
	}))
	t.Cleanup(rec.srv.Close)
	return rec
}

func (rec *recorder) take() *http.Request {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	r := rec.last
	rec.last = nil
	return r
}

func (rec *recorder) port() int { return rec.srv.Listener.Addr().(*net.TCPAddr).Port }

func config(rec *recorder, rotate bool, extra string) string {
	second := "key {env.BP_TEST_PROXY_KEY2}"
	if rotate {
		second = ""
	}
	return fmt.Sprintf(gatewayConfig, second, extra, rec.port())
}

func startGateway(t *testing.T, extra string) *gw {
	t.Helper()
	return startGatewayWith(t, func(*recorder) string { return extra })
}

// startGatewayWith is startGateway with settings that name the recording
// upstream (a service in front of it, say).
func startGatewayWith(t *testing.T, extra func(*recorder) string, env ...string) *gw {
	t.Helper()
	rec := newRecorder(t)
	g := &gw{t: t, upstream: rec}
	g.in = testutil.Start(t, config(rec, false, extra(rec)), testutil.Options{Env: append(env, keyEnv...)})
	t.Cleanup(g.scan)
	return g
}

// do sends a request; headers are name/value pairs.
func (g *gw) do(method, path string, headers ...string) (*http.Response, string) {
	g.t.Helper()
	resp, body := testutil.Do(g.t, method, g.in.URL(path), nil, headers...)
	var b strings.Builder
	fmt.Fprintf(&b, "%d\n", resp.StatusCode) // not the request line: it holds the key
	_ = resp.Header.Write(&b)
	b.Write(body)
	g.mu.Lock()
	g.seen.WriteString(b.String())
	g.mu.Unlock()
	return resp, string(body)
}

// expect sends a request and checks the status.
func (g *gw) expect(status int, path string, headers ...string) string {
	g.t.Helper()
	resp, body := g.do(http.MethodGet, path, headers...)
	if resp.StatusCode != status {
		g.t.Errorf("GET %s %v: status %d, want %d: %s", path, redactArgs(headers), resp.StatusCode, status, body)
	}
	if status == http.StatusUnauthorized && resp.Header.Get("WWW-Authenticate") != `Bearer realm="byteproxy"` {
		g.t.Errorf("GET %s: WWW-Authenticate %q", path, resp.Header.Get("WWW-Authenticate"))
	}
	return body
}

// scan checks every response and the whole log for key material.
func (g *gw) scan() {
	g.mu.Lock()
	seen := g.seen.String()
	g.mu.Unlock()
	if seen == "" {
		g.t.Error("no responses recorded")
	}
	assertNoKeyMaterial(g.t, "responses", seen, proxyKey, proxyKey2, mgmtKey)
	assertNoKeyMaterial(g.t, "log", g.in.Logs(), proxyKey, proxyKey2, mgmtKey)
}

// redactArgs keeps test failure messages free of keys too.
func redactArgs(h []string) []string {
	out := make([]string, len(h))
	for i, v := range h {
		out[i] = v
		for _, k := range []string{proxyKey, proxyKey2, mgmtKey} {
			if strings.Contains(v, k[:6]) || strings.Contains(v, k[len(k)-6:]) {
				out[i] = "<key material>"
			}
		}
	}
	return out
}

func TestTransports(t *testing.T) {
	g := startGateway(t, "")
	body := g.expect(200, "/proxy/auth-test", "Authorization", "Bearer "+proxyKey)
	var ok struct{ Status, Message, Timestamp string }
	if err := json.Unmarshal([]byte(body), &ok); err != nil || ok.Status != "success" || ok.Message != "Authentication successful" {
		t.Fatalf("auth-test body %s (%v)", body, err)
	}
	if _, err := time.Parse(time.RFC3339, ok.Timestamp); err != nil {
		t.Errorf("timestamp %q: %v", ok.Timestamp, err)
	}
	g.expect(200, "/proxy/auth-test", "X-API-Key", proxyKey)
	g.expect(200, "/proxy/auth-test", "x-api-key", proxyKey2)
	g.expect(200, "/proxy/auth-test?api_key="+proxyKey)
	g.expect(200, "/proxy/auth-test?api_key="+proxyKey2)
	// Any one matching credential is enough, as the original.
	g.expect(200, "/proxy/auth-test", "Authorization", "Bearer wrong", "X-API-Key", proxyKey)

	body = g.expect(401, "/proxy/auth-test")
	var unauth struct {
		Error, Message    string
		HowToAuthenticate []string
	}
	if err := json.Unmarshal([]byte(body), &unauth); err != nil {
		t.Fatal(err)
	}
	if unauth.Error != "Unauthorized" || unauth.Message != "No authentication provided. API key required for proxy routes." || len(unauth.HowToAuthenticate) != 3 {
		t.Errorf("401 body %s", body)
	}
	body = g.expect(401, "/proxy/auth-test", "X-API-Key", "wrong")
	if !strings.Contains(body, `"Authentication failed. Invalid API key for proxy routes."`) {
		t.Errorf("401 body %s", body)
	}

	body = g.expect(200, "/proxy/auth-debug?api_key="+proxyKey, "Authorization", "Bearer "+proxyKey)
	var dbg struct {
		Status     string
		AuthMethod map[string]string
		Help       string
	}
	if err := json.Unmarshal([]byte(body), &dbg); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"bearer": "provided", "xApiKey": "not provided", "queryParam": "provided"}
	if fmt.Sprint(dbg.AuthMethod) != fmt.Sprint(want) || dbg.Status != "success" || dbg.Help == "" {
		t.Errorf("auth-debug body %s", body)
	}
	g.expect(401, "/proxy/auth-debug")

	// The access log names the consumer by key id, never by key.
	if !strings.Contains(g.in.Logs(), `"client":"`+keyID(proxyKey)+`"`) {
		t.Errorf("access log has no client field %s", keyID(proxyKey))
	}
	assertMetric(t, g.in, `byteproxy_auth_failures_total{scope="proxy"}`, 3)
}

// TestLibrarySchemes: client libraries send the token they are given as
// `Authorization: <scheme> <token>` — octokit and PyGithub `token K`,
// discord.js and discordgo `Bot K`, others `Bearer K` — so the proxy key
// given to them as their token opens the gateway under each scheme, in any
// letter case and with any number of spaces, and the service's own
// credential replaces it upstream. A 401 after any credential says it was
// wrong, never that none was sent.
func TestLibrarySchemes(t *testing.T) {
	const svcToken = "svc-token-QxWvUtSrPo"
	g := startGatewayWith(t, func(rec *recorder) string {
		return fmt.Sprintf("auth_failures off\n\t\tservice rec {\n\t\t\tbase_url http://127.0.0.1:%d/svc/\n\t\t\tauth bearer {env.BP_TEST_SVC_TOKEN}\n\t\t}", rec.port())
	}, "BP_TEST_SVC_TOKEN="+svcToken)
	k := proxyKey
	for _, authz := range []string{
		"Bearer " + k, "bearer " + k, "BEARER " + k, "Bearer   " + k,
		"Bot " + k, "bot " + k, "BOT  " + k,
		"token " + k, "Token " + k, "TOKEN " + k,
	} {
		body := g.expect(200, "/proxy/auth-test", "Authorization", authz)
		if !strings.Contains(body, `"Authentication successful"`) {
			t.Errorf("%q: %s", strings.Fields(authz)[0], body)
		}
		resp, body := g.do(http.MethodGet, "/proxy/rec/user?x=1", "Authorization", authz)
		up := g.upstream.take()
		if resp.StatusCode != 200 || up == nil {
			t.Fatalf("%q through the service: %d %s", strings.Fields(authz)[0], resp.StatusCode, body)
		}
		if got := up.Header.Values("Authorization"); len(got) != 1 || got[0] != "Bearer "+svcToken || up.URL.Path != "/svc/user" {
			t.Errorf("%q: upstream got path %q and %d Authorization values (want the service's)", strings.Fields(authz)[0], up.URL.Path, len(got))
		}
		var dump strings.Builder
		_ = up.Write(&dump)
		assertNoKeyMaterial(t, "upstream request", dump.String(), proxyKey, proxyKey2, mgmtKey)
	}
	body := g.expect(200, "/proxy/auth-debug", "Authorization", "bot "+k)
	if !strings.Contains(body, `"authorizationScheme":"Bot"`) || !strings.Contains(body, `"bearer":"provided"`) {
		t.Errorf("auth-debug: %s", body)
	}

	// Anything presented and refused is "wrong", with the reason for an
	// Authorization header the gateway could not read a key from.
	for _, c := range []struct {
		headers []string
		query   string
		detail  string
	}{
		{[]string{"Authorization", "Bot wrong-key"}, "", ""},
		{[]string{"Authorization", "token " + k + "x"}, "", ""},
		{[]string{"X-API-Key", "wrong-key"}, "", ""},
		{nil, "?api_key=wrong-key", ""},
		{[]string{"Authorization", "Basic " + base64.StdEncoding.EncodeToString([]byte("u:"+k))}, "", "Basic authentication is not accepted"},
		{[]string{"Authorization", k}, "", "has no scheme"},
		{[]string{"Authorization", "Digest " + k}, "", "not one the gateway accepts"},
		{[]string{"Authorization", "Bearer"}, "", "has no scheme"},
		{[]string{"Authorization", "Basic x", "X-API-Key", "wrong"}, "", "Basic authentication"},
	} {
		resp, body := g.do(http.MethodGet, "/proxy/rec/user"+c.query, c.headers...)
		var m struct{ Message, Detail string }
		_ = json.Unmarshal([]byte(body), &m)
		if resp.StatusCode != 401 || m.Message != "Authentication failed. Invalid API key for proxy routes." {
			t.Errorf("%v query=%v: %d %s", redactArgs(c.headers), c.query != "", resp.StatusCode, body)
		}
		if c.detail == "" && m.Detail != "" || !strings.Contains(m.Detail, c.detail) {
			t.Errorf("%v: detail %q, want %q", redactArgs(c.headers), m.Detail, c.detail)
		}
		if g.upstream.take() != nil {
			t.Errorf("%v: a refused request reached the upstream", redactArgs(c.headers))
		}
	}
	body = g.expect(401, "/proxy/rec/user")
	if !strings.Contains(body, "No authentication provided") || strings.Contains(body, `"detail"`) {
		t.Errorf("nothing sent: %s", body)
	}
	// The management key under a library scheme does not open /proxy/*,
	// and the proxy key under one does not open /manage/*.
	g.expect(401, "/proxy/auth-test", "Authorization", "Bot "+mgmtKey)
	g.expect(401, "/manage/key-debug", "Authorization", "token "+k)
	g.expect(200, "/manage/key-debug", "Authorization", "Bot "+mgmtKey)
}

// TestProxyKeyDebug: GET /proxy/key-debug exists again for holders of a
// proxy key and says how the scopes are set up, never anything about a key
// (the original showed the first and last four characters and the length
// of both keys there).
func TestProxyKeyDebug(t *testing.T) {
	g := startGateway(t, "")
	body := g.expect(200, "/proxy/key-debug", "Authorization", "token "+proxyKey)
	var kd struct {
		Message           string
		AuthStatus        map[string]any
		HowToAuthenticate []string
		Troubleshooting   map[string]string
	}
	if err := json.Unmarshal([]byte(body), &kd); err != nil {
		t.Fatal(err)
	}
	for field, want := range map[string]any{
		"proxyAuthRequired": true, "managementAuthRequired": true,
		"proxyKeyConfigured": true, "managementKeyConfigured": true, "queryKeyEnabled": true,
	} {
		if kd.AuthStatus[field] != want {
			t.Errorf("key-debug %s = %v, want %v", field, kd.AuthStatus[field], want)
		}
	}
	if kd.Message == "" || len(kd.HowToAuthenticate) != 3 || kd.Troubleshooting["invalidKey"] == "" || kd.AuthStatus["setupStatus"] == nil {
		t.Errorf("key-debug body %s", body)
	}
	for _, leak := range []string{`Length"`, `Format"`, `Preview"`, `Count"`} {
		if strings.Contains(body, leak) {
			t.Errorf("key-debug describes keys (%s): %s", leak, body)
		}
	}
	g.expect(401, "/proxy/key-debug")
	g.expect(401, "/proxy/key-debug", "X-API-Key", mgmtKey)
	// Not a service call: the name is reserved.
	g.expect(200, "/proxy/key-debug?api_key="+proxyKey2)
}

// assertMetric checks a counter on the admin endpoint's /metrics.
func assertMetric(t *testing.T, in *testutil.Instance, series string, want float64) {
	t.Helper()
	resp, body := testutil.Do(t, http.MethodGet, in.AdminURL("/metrics"), nil)
	if resp.StatusCode != 200 {
		t.Fatalf("/metrics: %d", resp.StatusCode)
	}
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`)
	m := re.FindSubmatch(body)
	if m == nil {
		t.Errorf("/metrics has no %s", series)
		return
	}
	if got, _ := strconv.ParseFloat(string(m[1]), 64); got != want {
		t.Errorf("%s = %v, want %v", series, got, want)
	}
}

func TestNearMissKeys(t *testing.T) {
	// More wrong keys than the default throttle allows in a minute.
	g := startGateway(t, "auth_failures off")
	k := proxyKey
	basic := func(s string) string { return "Basic " + base64.StdEncoding.EncodeToString([]byte(s)) }
	for _, h := range [][]string{
		{"Authorization", "Bearer " + k[:len(k)-1]},                       // prefix
		{"Authorization", "Bearer " + k[1:]},                              // suffix
		{"Authorization", "Bearer " + k[:12]},                             // short prefix
		{"Authorization", "Bearer " + strings.ToUpper(k)},                 // case
		{"Authorization", "Bot " + strings.ToLower(k)},                    // case
		{"Authorization", "Bearer:" + k},                                  // no space
		{"Authorization", "Bearer\t" + k},                                 // tab instead of space
		{"Authorization", "Bearerx " + k},                                 // near scheme
		{"Authorization", "Digest " + k},                                  // other scheme
		{"Authorization", "Bots " + k},                                    // other scheme
		{"Authorization", "to\u212aen " + k},                              // Kelvin sign k
		{"Authorization", "Bearer \t" + k},                                // leading tab
		{"Authorization", "Bearer " + k + "x"},                            // extra byte
		{"Authorization", "Bearer " + k + " " + k},                        // twice
		{"Authorization", k},                                              // raw key
		{"Authorization", "Basic " + k},                                   // Basic carrying the key
		{"Authorization", basic("user:" + k)},                             // Basic password
		{"Authorization", basic(k + ":")},                                 // Basic user
		{"X-API-Key", k[:len(k)-1]},                                       // prefix
		{"X-API-Key", k[1:]},                                              // suffix
		{"X-API-Key", strings.ToUpper(k)},                                 // case
		{"X-API-Key", "Bearer " + k},                                      // scheme in the wrong header
		{"X-API-Key", k + k},                                              // twice
		{"X-API-Key", "\t" + k + "x"},                                     // whitespace plus a byte
		{"Proxy-Authorization", "Bearer " + k},                            // another header
		{"Cookie", "api_key=" + k},                                        // cookie
		{"X-Forwarded-For", "127.0.0.1", "X-API-Key", strings.ToLower(k)}, // forged locality
	} {
		g.expect(401, "/proxy/auth-test", h...)
	}
	for _, q := range []string{
		"api_key=" + k[:len(k)-1],
		"api_key=" + k[1:],
		"api_key=" + strings.ToUpper(k),
		"api_key=%20" + k,
		"api_key=" + k + "%20",
		"api_key=" + k + "+",
		"api_key=" + k + "%0A",
		"api_key=" + k + "%00",
	} {
		g.expect(401, "/proxy/auth-test?"+q)
	}
}

func TestScopeSeparation(t *testing.T) {
	g := startGateway(t, "")
	for _, h := range [][]string{{"Authorization", "Bearer " + proxyKey}, {"X-API-Key", proxyKey}, {"X-API-Key", proxyKey2}} {
		body := g.expect(401, "/manage/key-debug", h...)
		if !strings.Contains(body, "Invalid API key for management routes") {
			t.Errorf("proxy key on /manage: %s", body)
		}
		g.expect(401, "/manage/services", h...)
		g.expect(401, "/manage", h...)
	}
	g.expect(401, "/manage/key-debug?api_key="+proxyKey)
	for _, h := range [][]string{{"Authorization", "Bearer " + mgmtKey}, {"X-API-Key", mgmtKey}} {
		body := g.expect(401, "/proxy/auth-test", h...)
		if !strings.Contains(body, "Invalid API key for proxy routes") {
			t.Errorf("management key on /proxy: %s", body)
		}
	}
	g.expect(401, "/proxy/auth-test?api_key="+mgmtKey)

	body := g.expect(200, "/manage/key-debug", "Authorization", "Bearer "+mgmtKey)
	var kd struct {
		AuthStatus map[string]any
	}
	if err := json.Unmarshal([]byte(body), &kd); err != nil {
		t.Fatal(err)
	}
	for field, want := range map[string]any{
		"proxyAuthRequired": true, "managementAuthRequired": true,
		"proxyKeyConfigured": true, "managementKeyConfigured": true,
		"proxyKeyCount": 2.0, "managementKeyCount": 1.0,
	} {
		if kd.AuthStatus[field] != want {
			t.Errorf("key-debug %s = %v, want %v", field, kd.AuthStatus[field], want)
		}
	}
	if strings.Contains(body, `Length"`) || strings.Contains(body, `Format"`) || strings.Contains(body, `Preview"`) {
		t.Errorf("key-debug describes keys: %s", body)
	}
	g.expect(200, "/manage/key-debug", "X-API-Key", mgmtKey)
	g.expect(200, "/manage/key-debug?api_key="+mgmtKey)
	assertMetric(t, g.in, `byteproxy_auth_failures_total{scope="management"}`, 10)
}

func TestRotation(t *testing.T) {
	g := startGateway(t, "")
	g.expect(200, "/proxy/auth-test", "X-API-Key", proxyKey)
	g.expect(200, "/proxy/auth-test", "X-API-Key", proxyKey2)

	// Retire the second key: after the reload it no longer opens anything.
	g.in.Reload(config(g.upstream, true, ""))
	g.expect(401, "/proxy/auth-test", "X-API-Key", proxyKey2)
	g.expect(401, "/proxy/auth-test", "Authorization", "Bearer "+proxyKey2)
	g.expect(401, "/echo/x?api_key="+proxyKey2)
	g.expect(200, "/proxy/auth-test", "X-API-Key", proxyKey)

	// And back.
	g.in.Reload(config(g.upstream, false, ""))
	g.expect(200, "/proxy/auth-test", "X-API-Key", proxyKey2)
}

func TestStripBeforeUpstream(t *testing.T) {
	g := startGateway(t, "")
	cases := []struct {
		name, path string
		headers    []string
		wantQuery  string
	}{
		{"bearer", "/echo/a?x=1", []string{"Authorization", "Bearer " + proxyKey}, "x=1"},
		{"header", "/echo/a?x=1", []string{"X-API-Key", proxyKey2}, "x=1"},
		{"query", "/echo/a?a=1&b=%2F&flag&api_key=" + proxyKey + "&y=2&y=3", nil, "a=1&b=%2F&flag&y=2&y=3"},
		{"query encoded name", "/echo/a?api%5Fkey=" + proxyKey + "&z=%7E", nil, "z=%7E"},
		{"all three, one wrong", "/echo/a?api_key=" + proxyKey2, []string{"Authorization", "Bearer nope", "X-API-Key", proxyKey}, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp, body := g.do(http.MethodGet, c.path, append(c.headers, "X-Other", "kept")...)
			if resp.StatusCode != 200 || body != "upstream ok" {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			up := g.upstream.take()
			if up == nil {
				t.Fatal("upstream saw nothing")
			}
			if v := up.Header.Values("Authorization"); len(v) != 0 {
				t.Error("Authorization reached the upstream")
			}
			if v := up.Header.Values("X-Api-Key"); len(v) != 0 {
				t.Error("X-API-Key reached the upstream")
			}
			if up.URL.RawQuery != c.wantQuery {
				t.Errorf("upstream query %q, want %q", up.URL.RawQuery, c.wantQuery)
			}
			if up.URL.Path != "/echo/a" || up.Header.Get("X-Other") != "kept" {
				t.Errorf("upstream path %q, X-Other %q", up.URL.Path, up.Header.Get("X-Other"))
			}
			var dump strings.Builder
			_ = up.Write(&dump)
			assertNoKeyMaterial(t, "upstream request", dump.String(), proxyKey, proxyKey2, mgmtKey)
			// Later handlers know the consumer by its key id.
			if id := up.Header.Get("X-Client-Id"); id != keyID(proxyKey) && id != keyID(proxyKey2) {
				t.Errorf("client id %q", id)
			}
		})
	}
	g.expect(401, "/echo/a")
	if g.upstream.take() != nil {
		t.Error("a refused request reached the upstream")
	}
}

func TestQueryKeyOff(t *testing.T) {
	g := startGateway(t, "query_key off")
	body := g.expect(401, "/proxy/auth-test?api_key="+proxyKey)
	if !strings.Contains(body, "No authentication provided") || !strings.Contains(body, "disabled") {
		t.Errorf("401 body %s", body)
	}
	g.expect(200, "/proxy/auth-test", "X-API-Key", proxyKey)
	// A key in the URL still never travels on.
	resp, _ := g.do(http.MethodGet, "/echo/a?api_key="+proxyKey2+"&k=v", "Authorization", "Bearer "+proxyKey)
	up := g.upstream.take()
	if resp.StatusCode != 200 || up == nil || up.URL.RawQuery != "k=v" {
		t.Fatalf("status %d, upstream %v", resp.StatusCode, up)
	}
}

// An unprotected management scope answers loopback clients only.
func TestManagementLoopbackOnly(t *testing.T) {
	const cfg = `{
	servers {
		listener_wrappers {
			proxy_protocol {
				timeout 5s
				allow 127.0.0.1/32 ::1/128
			}
		}
	}
	byteproxy {
		auth proxy {
			required false
		}
	}
}

:{{PORT}} {
	byteproxy
}
`
	in := testutil.Start(t, cfg, testutil.Options{})
	resp, body := testutil.Do(t, http.MethodGet, in.URL("/manage/key-debug"), nil)
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"managementKeyConfigured":false`) {
		t.Fatalf("loopback: %d %s", resp.StatusCode, body)
	}
	// The proxy scope, not required and without keys, is open to all.
	if resp, body := testutil.Do(t, http.MethodGet, in.URL("/proxy/auth-test"), nil); resp.StatusCode != 200 {
		t.Fatalf("open proxy: %d %s", resp.StatusCode, body)
	}

	// A PROXY protocol header (accepted from loopback by the listener) makes
	// Caddy see a remote TCP peer: the request is refused, whatever the
	// forwarded-for headers claim.
	status, rb := rawGet(t, in.Port, "203.0.113.9", "/manage/key-debug", "X-Forwarded-For: 127.0.0.1", "X-Real-IP: 127.0.0.1")
	if status != 403 || !strings.Contains(rb, "only available from localhost") {
		t.Fatalf("remote peer: %d %s", status, rb)
	}
	if status, body := rawGet(t, in.Port, "203.0.113.9", "/manage/services"); status != 403 {
		t.Fatalf("remote peer: %d %s", status, body)
	}
	if status, body := rawGet(t, in.Port, "127.0.0.1", "/manage/key-debug"); status != 200 {
		t.Fatalf("PROXY header naming loopback: %d %s", status, body)
	}
}

// rawGet sends one HTTP/1.1 request after a PROXY protocol v1 header that
// names src as the client.
func rawGet(t *testing.T, port int, src, path string, headers ...string) (int, string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "PROXY TCP4 %s 127.0.0.1 40000 %d\r\n", src, port)
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n", path)
	for _, h := range headers {
		fmt.Fprintf(c, "%s\r\n", h)
	}
	fmt.Fprint(c, "\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// A required scope without a key stops the config from loading, and the
// error names the scope.
func TestFailClosedStartup(t *testing.T) {
	cases := []struct {
		name, auth, want string
		ok               bool
	}{
		{"proxy empty env key", "auth proxy {\n\t\t\tkey {env.BP_TEST_UNSET_KEY}\n\t\t\trequired true\n\t\t}", "auth proxy", false},
		{"proxy blank key", "auth proxy {\n\t\t\tkey \"   \"\n\t\t\trequired true\n\t\t}", "auth proxy", false},
		{"management no key", "auth management {\n\t\t\trequired true\n\t\t}", "auth management", false},
		{"management default env", "auth management {\n\t\t\tkey {env.BP_TEST_UNSET_KEY}\n\t\t\trequired {$BP_TEST_UNSET_REQ:true}\n\t\t}", "auth management", false},
		{"not required", "auth proxy {\n\t\t\tkey {env.BP_TEST_UNSET_KEY}\n\t\t\trequired false\n\t\t}", "", true},
		{"key set", "auth proxy {\n\t\t\tkey {env.BP_TEST_PROXY_KEY}\n\t\t\trequired true\n\t\t}", "", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := fmt.Sprintf("{\n\tadmin off\n\tbyteproxy {\n\t\t%s\n\t}\n}\n\n:%d {\n\tbyteproxy\n}\n", c.auth, testutil.FreePort(t))
			out, err := runBinary(t, 30*time.Second, cfg, "validate")
			if c.ok {
				if err != nil {
					t.Fatalf("validate failed: %v\n%s", err, out)
				}
				return
			}
			if err == nil {
				t.Fatalf("validate accepted a required scope without key:\n%s", out)
			}
			if !strings.Contains(out, c.want) || !strings.Contains(out, "no key") {
				t.Errorf("error does not name %q:\n%s", c.want, out)
			}
			assertNoKeyMaterial(t, "validate output", out, proxyKey)
		})
	}

	// `run` refuses too, and exits instead of serving.
	cfg := fmt.Sprintf("{\n\tadmin off\n\tbyteproxy {\n\t\tauth management {\n\t\t\tkey {env.BP_TEST_UNSET_KEY}\n\t\t\trequired true\n\t\t}\n\t}\n}\n\n:%d {\n\tbyteproxy\n}\n", testutil.FreePort(t))
	out, err := runBinary(t, 30*time.Second, cfg, "run")
	if err == nil || !strings.Contains(out, "auth management") {
		t.Fatalf("run: err %v, want a failure naming the scope:\n%s", err, out)
	}
}

// A handler with an unknown scope in JSON config is refused at load.
func TestJSONScopeValidated(t *testing.T) {
	const cfg = `{"admin": {"disabled": true}, "apps": {"http": {"servers": {"s": {"listen": ["127.0.0.1:%d"],
		"routes": [{"handle": [{"handler": "byteproxy_auth", "scope": "%s"}]}]}}}}}`
	out, err := runBinary(t, 30*time.Second, fmt.Sprintf(cfg, testutil.FreePort(t), "admin"), "validate")
	if err == nil || !strings.Contains(out, "scope") {
		t.Fatalf("unknown scope accepted: %v\n%s", err, out)
	}
	if out, err := runBinary(t, 30*time.Second, fmt.Sprintf(cfg, testutil.FreePort(t), "proxy"), "validate"); err != nil {
		t.Fatalf("scope proxy refused: %v\n%s", err, out)
	}
}

// runBinary runs `byteproxy <cmd> --config <file>` and returns its combined
// output. A config starting with "{\"" is JSON, anything else a Caddyfile.
func runBinary(t *testing.T, timeout time.Duration, config, cmd string) (string, error) {
	t.Helper()
	dir := t.TempDir()
	name, adapter := "Caddyfile", "caddyfile"
	if strings.HasPrefix(config, `{"`) {
		name, adapter = "caddy.json", ""
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	args := []string{cmd, "--config", path}
	if adapter != "" {
		args = append(args, "--adapter", adapter)
	}
	c := exec.CommandContext(ctx, testutil.Binary(t), args...)
	c.Dir = dir
	c.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir, keyEnv[0])
	out, err := c.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("%s did not exit within %v:\n%s", cmd, timeout, out)
	}
	return string(out), err
}
