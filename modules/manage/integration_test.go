package manage_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/byteproxy/byteproxy"
	"github.com/byteproxy/byteproxy/internal/testutil"
)

// Distinctive secrets: no response body or log line may contain any of
// them, or a prefix or suffix of one.
const (
	mgmtKey      = "Mk7QzR2vX9wL4pT8nB3s"
	proxyKey     = "Pq5WjH8cY1kD6fG0uZ2e"
	customToken  = "Ct3VbN6mQ9xS2aJ7hK4r"
	discordToken = "Dz8LwE5tU1oI4yP7gF0q"
	githubToken  = "ghp_Gx2NcV7bM4zA9sD1fH6j"
	headerSecret = "Hs9KpL3qW6eR1tY8uO5i"
)

var secretEnv = []string{
	"CUSTOM_TOKEN=" + customToken, "DISCORD_BOT_TOKEN=" + discordToken, "GITHUB_TOKEN=" + githubToken,
	"MANAGEMENT_API_KEY=" + mgmtKey, "PROXY_API_KEY=" + proxyKey,
}

// conf is a gateway with a management key, runtime services that may use
// loopback upstreams and sync every 200ms, one config-defined service and
// the presets.
func conf(runtimeOpts string) string {
	if runtimeOpts == "" {
		runtimeOpts = "allow_private_upstreams\n\t\t\ttoken_env CUSTOM_*"
	}
	return `{
	byteproxy {
		auth management {
			key {env.MANAGEMENT_API_KEY}
		}
		auth proxy {
			key {env.PROXY_API_KEY}
		}
		runtime_services {
			` + runtimeOpts + `
			sync_interval 200ms
		}
		service discord
		service github
		service cfgsvc {
			base_url http://127.0.0.1:9/
		}
	}
}
:{{PORT}} {
	byteproxy
}
`
}

func start(t *testing.T, cf string, dataDir string) *testutil.Instance {
	t.Helper()
	return testutil.Start(t, cf, testutil.Options{Env: secretEnv, DataDir: dataDir})
}

// startHere runs the gateway in the test process, for the tests that need
// no process of their own (no restart on the same storage, no kill -9):
// they also run under -short.
func startHere(t *testing.T, cf string) *testutil.Instance {
	t.Helper()
	return testutil.InProcess(t, cf, testutil.Options{Env: secretEnv})
}

// api sends a management request with the management key and decodes the
// JSON answer.
func api(t *testing.T, in *testutil.Instance, method, path, body string) (int, map[string]any) {
	t.Helper()
	var b []byte
	if body != "" {
		b = []byte(body)
	}
	resp, raw := testutil.Do(t, method, in.URL(path), b, "X-API-Key", mgmtKey, "Content-Type", "application/json")
	return resp.StatusCode, decode(t, resp, raw)
}

func decode(t *testing.T, resp *http.Response, raw []byte) map[string]any {
	t.Helper()
	if len(raw) == 0 {
		return nil
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Fatalf("%s: Content-Type %q: %s", resp.Request.URL, ct, raw)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("%s: not JSON: %v: %s", resp.Request.URL, err, raw)
	}
	return m
}

func addBody(key, baseURL string) string {
	return fmt.Sprintf(`{"key":%q,"config":{"name":"Svc %s","baseUrl":%q}}`, key, key, baseURL)
}

// runtimeKeys lists the keys of GET /manage/services whose source is runtime.
func runtimeKeys(t *testing.T, in *testutil.Instance) []string {
	t.Helper()
	st, m := api(t, in, "GET", "/manage/services", "")
	if st != 200 {
		t.Fatalf("list: %d %v", st, m)
	}
	var keys []string
	for _, s := range m["services"].([]any) {
		e := s.(map[string]any)
		if e["source"] == "runtime" {
			keys = append(keys, e["key"].(string))
		}
	}
	sort.Strings(keys)
	return keys
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", within, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestInformationalEndpoints(t *testing.T) {
	t.Parallel()
	in := start(t, conf(""), "") // /version reads the binary's build info
	get := func(path string, want int) map[string]any {
		t.Helper()
		resp, raw := testutil.Do(t, "GET", in.URL(path), nil)
		if resp.StatusCode != want {
			t.Fatalf("GET %s: %d, want %d: %s", path, resp.StatusCode, want, raw)
		}
		return decode(t, resp, raw)
	}
	m := get("/", 200)
	for _, k := range []string{"message", "source", "documentation", "status", "health", "version", "checkUpdates"} {
		if m[k] == nil || m[k] == "" {
			t.Errorf("/ lacks %s: %v", k, m)
		}
	}
	m = get("/health", 200)
	if m["status"] != "healthy" || m["version"] == nil || m["timestamp"] == nil || m["uptime"] == nil {
		t.Errorf("/health: %v", m)
	}
	svcs := m["services"].(map[string]any)
	if svcs["total"].(float64) != 3 || !slices.Equal(toStrings(svcs["available"]), []string{"cfgsvc", "discord", "github"}) {
		t.Errorf("/health services: %v", svcs)
	}
	if _, ok := m["pressure"].(map[string]any)["underPressure"]; !ok {
		t.Errorf("/health pressure: %v", m)
	}
	m = get("/status", 200)
	rt := m["runtime"].(map[string]any)
	if rt["go"] == nil || rt["goroutines"] == nil || rt["memory"] == nil {
		t.Errorf("/status runtime: %v", rt)
	}
	cfg := m["configuration"].(map[string]any)
	list := cfg["services"].([]any)
	if len(list) != 3 {
		t.Fatalf("/status services: %v", list)
	}
	for _, s := range list {
		e := s.(map[string]any)
		if _, leak := e["baseUrl"]; leak {
			t.Errorf("/status shows a base URL: %v", e)
		}
		if e["key"] == "github" && (e["authTokenConfigured"] != true || e["hasAuth"] != true || e["configured"] != true) {
			t.Errorf("/status github: %v", e)
		}
	}
	if _, ok := m["components"]; !ok {
		t.Errorf("/status lacks components")
	}
	for _, p := range []string{"/version", "/version/"} {
		m = get(p, 200)
		bw := m["builtWith"].(map[string]any)
		if m["version"] == nil || m["semver"] == nil || bw["go"] == nil || bw["caddy"] == nil || !strings.HasPrefix(bw["caddy"].(string), "v2.") || m["module"] == nil {
			t.Errorf("%s: %v", p, m)
		}
	}
	get("/up", 200)
	get("/auth-status", 200)
	get("/version/check", 200)
	for _, p := range []string{"/nope", "/proxy/cfgsvc", "/proxy", "/healthz", "/manage/nope"} {
		key := proxyKey
		if strings.HasPrefix(p, "/manage") {
			key = mgmtKey
		}
		resp, raw := testutil.Do(t, "GET", in.URL(p), nil, "X-API-Key", key)
		if p == "/manage/nope" && resp.StatusCode == 401 {
			t.Fatalf("management key refused: %s", raw)
		}
		m := decode(t, resp, raw)
		if resp.StatusCode != 404 || m["error"] != "Endpoint not found" || m["message"] != "The endpoint '"+p+"' does not exist" || len(m["availableEndpoints"].([]any)) == 0 {
			t.Errorf("%s: %d %v", p, resp.StatusCode, m)
		}
	}
	resp, raw := testutil.Do(t, "DELETE", in.URL("/nope"), nil)
	if resp.StatusCode != 404 {
		t.Errorf("DELETE /nope: %d %s", resp.StatusCode, raw)
	}
	resp, raw = testutil.Do(t, "POST", in.URL("/health"), nil)
	if resp.StatusCode != 405 || resp.Header.Get("Allow") == "" {
		t.Errorf("POST /health: %d %s", resp.StatusCode, raw)
	}
	// /proxy/services needs the proxy key, and lists every service.
	resp, raw = testutil.Do(t, "GET", in.URL("/proxy/services"), nil, "X-API-Key", proxyKey)
	m = decode(t, resp, raw)
	if resp.StatusCode != 200 || m["count"].(float64) != 3 {
		t.Fatalf("/proxy/services: %d %v", resp.StatusCode, m)
	}
	first := m["services"].([]any)[0].(map[string]any)
	if first["key"] != "cfgsvc" || first["baseUrl"] != "http://127.0.0.1:9/" || first["hasAuth"] != false {
		t.Errorf("/proxy/services entry: %v", first)
	}
}

func toStrings(v any) []string {
	var out []string
	for _, x := range v.([]any) {
		out = append(out, x.(string))
	}
	return out
}

func TestManageServicesCRUD(t *testing.T) {
	t.Parallel()
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(204) }))
	defer up.Close()
	in := startHere(t, conf(""))

	if resp, raw := testutil.Do(t, "GET", in.URL("/manage/services"), nil); resp.StatusCode != 401 {
		t.Fatalf("no key: %d %s", resp.StatusCode, raw)
	}

	body := `{"key":"fake","config":{"name":"Fake","baseUrl":"` + up.URL + `/api","headers":{"User-Agent":"t/1","X-Api-Key":"` + headerSecret + `"},
		"versionedBaseUrls":{"v2":"` + up.URL + `/api/v2/"},"rateLimit":{"maxRequests":3,"windowMs":60000},
		"auth":{"type":"bearer","tokenEnvVar":"CUSTOM_TOKEN"}}}`
	st, m := api(t, in, "POST", "/manage/services", body)
	if st != 201 || m["message"] != "Service 'fake' added successfully" || m["key"] != "fake" {
		t.Fatalf("POST: %d %v", st, m)
	}
	c := m["config"].(map[string]any)
	if c["baseUrl"] != up.URL+"/api/" || c["name"] != "Fake" {
		t.Fatalf("POST config: %v", c)
	}

	st, m = api(t, in, "GET", "/manage/services/fake", "")
	if st != 200 || m["source"] != "runtime" {
		t.Fatalf("GET: %d %v", st, m)
	}
	c = m["config"].(map[string]any)
	a := c["auth"].(map[string]any)
	if a["type"] != "bearer" || a["tokenEnvVar"] != "CUSTOM_TOKEN" || a["tokenConfigured"] != true {
		t.Errorf("GET auth: %v", a)
	}
	if rl := c["rateLimit"].(map[string]any); rl["maxRequests"].(float64) != 3 || rl["windowMs"].(float64) != 60000 {
		t.Errorf("GET rateLimit: %v", rl)
	}
	if h := c["headers"].(map[string]any); h["X-Api-Key"] != "[REDACTED]" || h["User-Agent"] != "t/1" {
		t.Errorf("GET headers: %v", h)
	}
	if v := c["versionedBaseUrls"].(map[string]any); v["v2"] != up.URL+"/api/v2/" {
		t.Errorf("GET versions: %v", v)
	}

	st, m = api(t, in, "GET", "/manage/services", "")
	if st != 200 || m["count"].(float64) != 4 {
		t.Fatalf("list: %d %v", st, m)
	}
	for _, s := range m["services"].([]any) {
		e := s.(map[string]any)
		want := map[string]string{"fake": "runtime", "cfgsvc": "config", "github": "config", "discord": "config"}[e["key"].(string)]
		if e["source"] != want {
			t.Errorf("list entry %v: source want %s", e, want)
		}
		if e["key"] == "fake" && (e["hasAuth"] != true || e["authConfigured"] != true || e["baseUrl"] != up.URL+"/api/") {
			t.Errorf("list fake: %v", e)
		}
	}

	// Conflicts.
	for _, key := range []string{"fake", "cfgsvc", "github", "discord"} {
		if st, m := api(t, in, "POST", "/manage/services", addBody(key, up.URL)); st != 409 || m["error"] != "Service '"+key+"' already exists" {
			t.Errorf("POST %s again: %d %v", key, st, m)
		}
	}
	for _, method := range []string{"PUT", "DELETE"} {
		if st, m := api(t, in, method, "/manage/services/cfgsvc", `{"baseUrl":"`+up.URL+`"}`); st != 409 || m["source"] != "config" {
			t.Errorf("%s cfgsvc: %d %v", method, st, m)
		}
		if st, _ := api(t, in, method, "/manage/services/github", `{"baseUrl":"`+up.URL+`"}`); st != 409 {
			t.Errorf("%s github: %d", method, st)
		}
	}

	// Replace: the GET config sent back, with one change; the redacted
	// header keeps its stored value.
	c["name"] = "Fake 2"
	c["rateLimit"] = map[string]any{"maxRequests": 7, "windowMs": 1000}
	put, _ := json.Marshal(c)
	st, m = api(t, in, "PUT", "/manage/services/fake", string(put))
	if st != 200 || m["config"].(map[string]any)["name"] != "Fake 2" {
		t.Fatalf("PUT: %d %v", st, m)
	}
	st, m = api(t, in, "GET", "/manage/services/fake", "")
	if st != 200 {
		t.Fatalf("GET after PUT: %d %v", st, m)
	}
	if c := m["config"].(map[string]any); c["name"] != "Fake 2" || c["rateLimit"].(map[string]any)["maxRequests"].(float64) != 7 {
		t.Errorf("after PUT: %v", m)
	}
	// The whole POST body is accepted by PUT too.
	if st, m := api(t, in, "PUT", "/manage/services/fake", addBody("fake", up.URL)); st != 200 {
		t.Errorf("PUT whole body: %d %v", st, m)
	}
	if st, m := api(t, in, "PUT", "/manage/services/fake", addBody("other", up.URL)); st != 400 || m["field"] != "key" {
		t.Errorf("PUT key mismatch: %d %v", st, m)
	}
	if st, m := api(t, in, "PUT", "/manage/services/ghost", `{"baseUrl":"`+up.URL+`"}`); st != 404 || m["error"] != "Service 'ghost' not found" {
		t.Errorf("PUT unknown: %d %v", st, m)
	}

	// Delete.
	if st, m := api(t, in, "DELETE", "/manage/services/fake", ""); st != 200 || m["message"] != "Service 'fake' deleted successfully" || m["key"] != "fake" {
		t.Fatalf("DELETE: %d %v", st, m)
	}
	if st, m := api(t, in, "GET", "/manage/services/fake", ""); st != 404 || m["error"] != "Service 'fake' not found" {
		t.Errorf("GET deleted: %d %v", st, m)
	}
	if st, _ := api(t, in, "DELETE", "/manage/services/fake", ""); st != 404 {
		t.Errorf("DELETE again: %d", st)
	}
	if st, _ := api(t, in, "PATCH", "/manage/services/fake", "{}"); st != 405 {
		t.Errorf("PATCH: %d", st)
	}
	if st, _ := api(t, in, "GET", "/manage/services/fake/test", ""); st != 405 {
		t.Errorf("GET test: %d", st)
	}
}

// TestManageValidation sends each invalid request through the real
// gateway and checks the 400 and the field it names.
func TestManageValidation(t *testing.T) {
	t.Parallel()
	in := startHere(t, conf("token_env CUSTOM_*")) // private upstreams refused
	ok := `"baseUrl":"https://api.example.com/"`
	cases := []struct{ name, body, ct, field string }{
		{"malformed", `{"key":"a",`, "", "body"},
		{"empty", ``, "", "body"},
		{"bad key", `{"key":"Bad Key","config":{` + ok + `}}`, "", "key"},
		{"proto", `{"key":"__proto__","config":{` + ok + `}}`, "", "key"},
		{"reserved", `{"key":"auth-test","config":{` + ok + `}}`, "", "key"},
		{"relative", `{"key":"a","config":{"baseUrl":"/v1/"}}`, "", "baseUrl"},
		{"javascript", `{"key":"a","config":{"baseUrl":"javascript:alert(1)"}}`, "", "baseUrl"},
		{"loopback", `{"key":"a","config":{"baseUrl":"http://127.0.0.1:3420/"}}`, "", "baseUrl"},
		{"localhost", `{"key":"a","config":{"baseUrl":"http://localhost:3420/"}}`, "", "baseUrl"},
		{"metadata", `{"key":"a","config":{"baseUrl":"http://169.254.169.254/latest/meta-data/"}}`, "", "baseUrl"},
		{"private", `{"key":"a","config":{"baseUrl":"http://10.0.0.5/"}}`, "", "baseUrl"},
		{"cgnat", `{"key":"a","config":{"baseUrl":"http://100.64.1.1/"}}`, "", "baseUrl"},
		{"v6 loopback", `{"key":"a","config":{"baseUrl":"http://[::1]:80/"}}`, "", "baseUrl"},
		{"v4-compatible v6", `{"key":"a","config":{"baseUrl":"http://[::127.0.0.1]/"}}`, "", "baseUrl"},
		{"decimal v4", `{"key":"a","config":{"baseUrl":"http://2130706433/"}}`, "", "baseUrl"},
		{"hex v4", `{"key":"a","config":{"baseUrl":"http://0x7f000001/"}}`, "", "baseUrl"},
		{"short v4", `{"key":"a","config":{"baseUrl":"http://127.1/"}}`, "", "baseUrl"},
		{"octal v4", `{"key":"a","config":{"baseUrl":"http://0177.0.0.1/"}}`, "", "baseUrl"},
		{"TEST-NET-1", `{"key":"a","config":{"baseUrl":"http://192.0.2.1/"}}`, "", "baseUrl"},
		{"TEST-NET-2", `{"key":"a","config":{"baseUrl":"http://198.51.100.1/"}}`, "", "baseUrl"},
		{"TEST-NET-3", `{"key":"a","config":{"baseUrl":"https://203.0.113.1/"}}`, "", "baseUrl"},
		{"version on own host", `{"key":"a","config":{` + ok + `,"versionedBaseUrls":{"v1":"http://` + ownAddress(t) + `:3420/"}}}`, "", "versionedBaseUrls"},
		{"secret env", `{"key":"a","config":{` + ok + `,"auth":{"type":"bearer","tokenEnvVar":"MANAGEMENT_API_KEY"}}}`, "", "auth.tokenEnvVar"},
		{"github env", `{"key":"a","config":{` + ok + `,"auth":{"type":"bearer","tokenEnvVar":"GITHUB_TOKEN"}}}`, "", "auth.tokenEnvVar"},
		{"zero", `{"key":"a","config":{` + ok + `,"rateLimit":{"maxRequests":0,"windowMs":1}}}`, "", "rateLimit.maxRequests"},
		{"negative", `{"key":"a","config":{` + ok + `,"rateLimit":{"maxRequests":1,"windowMs":-1}}}`, "", "rateLimit.windowMs"},
		{"auth type", `{"key":"a","config":{` + ok + `,"auth":{"type":"oauth"}}}`, "", "auth.type"},
		{"unknown", `{"key":"a","config":{` + ok + `,"tokenValue":"x"}}`, "", "tokenValue"},
		{"placeholder", `{"key":"a","config":{` + ok + `,"headers":{"X-Leak":"{env.MANAGEMENT_API_KEY}"}}}`, "", "headers"},
		{"big", `{"key":"a","config":{` + ok + `,"name":"` + strings.Repeat("x", 1<<20) + `"}}`, "", "body"},
	}
	for _, c := range cases {
		hdr := []string{"X-API-Key", mgmtKey, "Content-Type", "application/json"}
		if c.ct != "" {
			hdr[3] = c.ct
		}
		resp, raw := testutil.Do(t, "POST", in.URL("/manage/services"), []byte(c.body), hdr...)
		m := decode(t, resp, raw)
		if resp.StatusCode != 400 || m["field"] != c.field || !strings.HasPrefix(fmt.Sprint(m["error"]), "Invalid ") {
			t.Errorf("%s: %d %v, want 400 field %s", c.name, resp.StatusCode, trim(m), c.field)
		}
	}
	if keys := runtimeKeys(t, in); len(keys) != 0 {
		t.Fatalf("refused requests stored services: %v", keys)
	}
	// Writes that are not JSON are refused before anything is read (issue
	// 11.1): a browser sends a cross-site POST without a preflight only
	// as a form or text/plain, so those must never change anything.
	for _, w := range []struct{ method, path, ct string }{
		{"POST", "/manage/services", "text/plain"},
		{"POST", "/manage/services", "application/x-www-form-urlencoded"},
		{"POST", "/manage/services", "multipart/form-data; boundary=x"},
		{"POST", "/manage/services", ""},
		{"PUT", "/manage/services/a", "text/plain;charset=utf-8"},
		{"PUT", "/manage/services/a", ""},
		{"POST", "/manage/services/github/test", ""},
		{"POST", "/manage/services/github/test", "text/plain"},
		{"PATCH", "/manage/services/a", "text/plain"},
	} {
		hdr := []string{"X-API-Key", mgmtKey}
		if w.ct != "" {
			hdr = append(hdr, "Content-Type", w.ct)
		}
		resp, raw := testutil.Do(t, w.method, in.URL(w.path), []byte(`{"key":"a","config":{`+ok+`}}`), hdr...)
		m := decode(t, resp, raw)
		if resp.StatusCode != http.StatusUnsupportedMediaType || m["error"] != "Unsupported Media Type" || !strings.Contains(fmt.Sprint(m["message"]), "application/json") {
			t.Errorf("%s %s with Content-Type %q: %d %v, want 415", w.method, w.path, w.ct, resp.StatusCode, m)
		}
	}
	// A DELETE has no body and needs no Content-Type.
	if resp, raw := testutil.Do(t, "DELETE", in.URL("/manage/services/nope"), nil, "X-API-Key", mgmtKey); resp.StatusCode != 404 {
		t.Errorf("DELETE without Content-Type: %d %s", resp.StatusCode, raw)
	}
	if keys := runtimeKeys(t, in); len(keys) != 0 {
		t.Fatalf("refused writes stored services: %v", keys)
	}
	// PUT validates the same way.
	if st, m := api(t, in, "PUT", "/manage/services/nope", `{"baseUrl":"ftp://x/"}`); st != 400 || m["field"] != "baseUrl" {
		t.Errorf("PUT invalid: %d %v", st, m)
	}
}

// ownAddress is an IPv4 address of one of this host's interfaces other than
// loopback: a runtime service must not reach the gateway's own host through
// it.
func ownAddress(t *testing.T) string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is4() && !p.Addr().IsLoopback() {
			return p.Addr().String()
		}
	}
	t.Fatal("this host has no non-loopback IPv4 address")
	return ""
}

func trim(m map[string]any) string {
	s := fmt.Sprint(m)
	if len(s) > 300 {
		s = s[:300]
	}
	return s
}

// TestTokenEnvGuard: only variables matched by token_env may be named, and
// by default none may.
func TestTokenEnvGuard(t *testing.T) {
	t.Parallel()
	in := startHere(t, conf("token_env CUSTOM_*"))
	body := `{"key":"c","config":{"baseUrl":"https://api.example.com/","auth":{"type":"bot","tokenEnvVar":"CUSTOM_TOKEN"}}}`
	if st, m := api(t, in, "POST", "/manage/services", body); st != 201 || m["config"].(map[string]any)["auth"].(map[string]any)["tokenConfigured"] != true {
		t.Fatalf("CUSTOM_TOKEN: %d %v", st, m)
	}
	in2 := startHere(t, conf("allow_private_upstreams"))
	if st, m := api(t, in2, "POST", "/manage/services", body); st != 400 || m["field"] != "auth.tokenEnvVar" {
		t.Fatalf("default token_env: %d %v", st, m)
	}
}

// TestPrivateRecordDroppedWhenNotAllowed: a stored runtime service on a
// loopback upstream, written while private upstreams were allowed, is not
// loaded by a gateway that refuses them.
func TestPrivateRecordDroppedWhenNotAllowed(t *testing.T) {
	t.Parallel()
	data := t.TempDir()
	a := start(t, conf(""), data)
	if st, m := api(t, a, "POST", "/manage/services", addBody("loop", "http://127.0.0.1:9/")); st != 201 {
		t.Fatalf("POST: %d %v", st, m)
	}
	a.Stop()
	b := start(t, conf("token_env CUSTOM_*"), data)
	if st, _ := api(t, b, "GET", "/manage/services/loop", ""); st != 404 {
		t.Fatalf("private record loaded: %d", st)
	}
	if !strings.Contains(b.Logs(), "ignoring invalid runtime service") {
		t.Errorf("no warning logged:\n%s", b.Logs())
	}
}

func TestKill9Durability(t *testing.T) {
	t.Parallel()
	data := t.TempDir()
	a := start(t, conf(""), data)
	st, m := api(t, a, "POST", "/manage/services", `{"key":"durable","config":{"baseUrl":"http://127.0.0.1:9/x","rateLimit":{"maxRequests":9,"windowMs":9000}}}`)
	if st != 201 {
		t.Fatalf("POST: %d %v", st, m)
	}
	if st, _ := api(t, a, "POST", "/manage/services", addBody("gone", "http://127.0.0.1:9/")); st != 201 {
		t.Fatal(st)
	}
	if st, _ := api(t, a, "DELETE", "/manage/services/gone", ""); st != 200 {
		t.Fatal(st)
	}
	a.Kill()
	// What a crash in the middle of a write leaves behind: the temporary
	// file of an atomic write, and a damaged record. Neither may hide the
	// good records.
	dir := filepath.Join(data, "caddy", "byteproxy", "services")
	if _, err := os.Stat(filepath.Join(dir, "durable.json")); err != nil {
		t.Fatalf("record not where expected: %v", err)
	}
	for name, content := range map[string]string{"1234567890": `{"key":"dur`, "broken.json": `{"key":"bro`} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	b := start(t, conf(""), data)
	st, m = api(t, b, "GET", "/manage/services/durable", "")
	if st != 200 || m["config"].(map[string]any)["baseUrl"] != "http://127.0.0.1:9/x/" || m["config"].(map[string]any)["rateLimit"].(map[string]any)["maxRequests"].(float64) != 9 {
		t.Fatalf("after kill -9: %d %v", st, m)
	}
	if keys := runtimeKeys(t, b); !slices.Equal(keys, []string{"durable"}) {
		t.Fatalf("after kill -9: %v", keys)
	}
	if n := strings.Count(b.Logs(), "ignoring unreadable runtime service record"); n != 1 {
		t.Errorf("damaged record warned %d times, want once:\n%s", n, b.Logs())
	}
	if st, m := api(t, b, "POST", "/manage/services", addBody("broken", "http://127.0.0.1:9/")); st != 201 {
		t.Errorf("replacing a damaged record: %d %v", st, m)
	}
}

// TestConcurrentChanges: 40 parallel adds, then 20 parallel deletes, end in
// exactly the expected set, also after a restart.
func TestConcurrentChanges(t *testing.T) {
	t.Parallel()
	data := t.TempDir()
	a := start(t, conf(""), data)
	began := time.Now()
	var wg sync.WaitGroup
	errs := make(chan string, 80)
	for i := range 40 {
		wg.Go(func() {
			resp, raw := testutil.Do(t, "POST", a.URL("/manage/services"), []byte(addBody(fmt.Sprintf("svc%02d", i), "http://127.0.0.1:9/")), "X-API-Key", mgmtKey, "Content-Type", "application/json")
			if resp.StatusCode != 201 {
				errs <- fmt.Sprintf("add %d: %d %s", i, resp.StatusCode, raw)
			}
		})
	}
	wg.Wait()
	t.Logf("40 parallel durable adds: %s", time.Since(began))
	var want []string
	for i := range 40 {
		if i%2 == 0 {
			want = append(want, fmt.Sprintf("svc%02d", i))
			continue
		}
		wg.Go(func() {
			resp, raw := testutil.Do(t, "DELETE", a.URL(fmt.Sprintf("/manage/services/svc%02d", i)), nil, "X-API-Key", mgmtKey)
			if resp.StatusCode != 200 {
				errs <- fmt.Sprintf("delete %d: %d %s", i, resp.StatusCode, raw)
			}
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	if got := runtimeKeys(t, a); !slices.Equal(got, want) {
		t.Fatalf("live set: %v\nwant %v", got, want)
	}
	a.Kill()
	b := start(t, conf(""), data)
	if got := runtimeKeys(t, b); !slices.Equal(got, want) {
		t.Fatalf("after restart: %v\nwant %v", got, want)
	}
}

// TestSharedStorage: two instances on one storage see each other's adds,
// replacements and removals within sync_interval.
func TestSharedStorage(t *testing.T) {
	t.Parallel()
	data := t.TempDir()
	a := start(t, conf(""), data)
	b := start(t, conf(""), data)
	within := 5 * time.Second // sync_interval is 200ms; generous for a loaded machine

	if st, _ := api(t, a, "POST", "/manage/services", addBody("shared", "http://127.0.0.1:9/one/")); st != 201 {
		t.Fatal(st)
	}
	eventually(t, within, "b sees a's add", func() bool {
		st, _ := api(t, b, "GET", "/manage/services/shared", "")
		return st == 200
	})
	if st, m := api(t, b, "POST", "/manage/services", addBody("shared", "http://127.0.0.1:9/")); st != 409 {
		t.Fatalf("b adds the same key: %d %v", st, m)
	}
	if st, _ := api(t, b, "PUT", "/manage/services/shared", `{"baseUrl":"http://127.0.0.1:9/two/"}`); st != 200 {
		t.Fatal(st)
	}
	eventually(t, within, "a sees b's replacement", func() bool {
		_, m := api(t, a, "GET", "/manage/services/shared", "")
		c, _ := m["config"].(map[string]any)
		return c != nil && c["baseUrl"] == "http://127.0.0.1:9/two/"
	})
	if st, _ := api(t, b, "POST", "/manage/services", addBody("fromb", "http://127.0.0.1:9/")); st != 201 {
		t.Fatal(st)
	}
	eventually(t, within, "a sees b's add", func() bool { return slices.Equal(runtimeKeys(t, a), []string{"fromb", "shared"}) })
	if st, _ := api(t, a, "DELETE", "/manage/services/shared", ""); st != 200 {
		t.Fatal(st)
	}
	eventually(t, within, "b sees a's removal", func() bool { return slices.Equal(runtimeKeys(t, b), []string{"fromb"}) })
	// A removal b has not seen yet is still a 404 on b: storage decides.
	if st, _ := api(t, b, "DELETE", "/manage/services/shared", ""); st != 404 {
		t.Fatalf("b deletes a removed key: %d", st)
	}
}

// TestReloadKeepsRuntimeServices: a config reload through the admin API
// keeps every runtime service, at once.
func TestReloadKeepsRuntimeServices(t *testing.T) {
	t.Parallel()
	in := startHere(t, conf(""))
	for _, k := range []string{"r1", "r2"} {
		if st, _ := api(t, in, "POST", "/manage/services", addBody(k, "http://127.0.0.1:9/")); st != 201 {
			t.Fatal(st)
		}
	}
	in.Reload(strings.Replace(conf(""), "service github", "service github\n\t\tservice extra {\n\t\t\tbase_url https://api.example.com/\n\t\t}", 1))
	if got := runtimeKeys(t, in); !slices.Equal(got, []string{"r1", "r2"}) {
		t.Fatalf("after reload: %v", got)
	}
	if st, m := api(t, in, "GET", "/manage/services/extra", ""); st != 200 || m["source"] != "config" {
		t.Fatalf("reload not applied: %d %v", st, m)
	}
	// The reloaded config changes services as before.
	if st, _ := api(t, in, "DELETE", "/manage/services/r1", ""); st != 200 {
		t.Fatal(st)
	}
	if got := runtimeKeys(t, in); !slices.Equal(got, []string{"r2"}) {
		t.Fatalf("after delete: %v", got)
	}
}

// TestProbe covers POST /manage/services/{key}/test: reachable, refused
// connection, TLS failure, unknown service.
func TestProbe(t *testing.T) {
	t.Parallel()
	var gotAuth, gotUA string
	var mu sync.Mutex
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		gotAuth, gotUA = r.Header.Get("Authorization"), r.Header.Get("User-Agent")
		mu.Unlock()
		w.WriteHeader(http.StatusTeapot)
	}))
	defer up.Close()
	tlsUp := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer tlsUp.Close()
	closed := httptest.NewServer(http.NotFoundHandler())
	closedURL := closed.URL
	closed.Close()

	in := startHere(t, conf(""))
	for key, u := range map[string]string{"up": up.URL, "down": closedURL, "tls": tlsUp.URL} {
		body := fmt.Sprintf(`{"key":%q,"config":{"baseUrl":%q,"headers":{"User-Agent":"probe-ua"},"auth":{"type":"bearer","tokenEnvVar":"CUSTOM_TOKEN"}}}`, key, u)
		if st, m := api(t, in, "POST", "/manage/services", body); st != 201 {
			t.Fatalf("add %s: %d %v", key, st, m)
		}
	}
	st, m := api(t, in, "POST", "/manage/services/up/test", "")
	if st != 200 || m["status"] != "reachable" || m["responseStatus"].(float64) != 418 || m["service"] != "up" ||
		!strings.HasSuffix(m["duration"].(string), "ms") || m["baseUrl"] != up.URL+"/" {
		t.Fatalf("reachable: %d %v", st, m)
	}
	mu.Lock()
	if gotAuth != "" || gotUA != "probe-ua" {
		t.Errorf("probe sent Authorization %q, User-Agent %q", gotAuth, gotUA)
	}
	mu.Unlock()

	st, m = api(t, in, "POST", "/manage/services/down/test", "")
	tr, _ := m["troubleshooting"].(map[string]any)
	if st != 502 || m["status"] != "unreachable" || !strings.Contains(fmt.Sprint(m["error"]), "connection refused") || tr == nil ||
		len(tr["suggestions"].([]any)) == 0 || tr["tlsHelp"] != nil {
		t.Fatalf("unreachable: %d %v", st, m)
	}
	st, m = api(t, in, "POST", "/manage/services/tls/test", "")
	tr, _ = m["troubleshooting"].(map[string]any)
	if st != 502 || m["status"] != "unreachable" || tr == nil || tr["tlsHelp"] == nil {
		t.Fatalf("TLS failure: %d %v", st, m)
	}
	if st, _ := api(t, in, "POST", "/manage/services/nope/test", ""); st != 404 {
		t.Fatalf("unknown: %d", st)
	}
	// Config-defined services are probed too (cfgsvc is a closed port).
	if st, m := api(t, in, "POST", "/manage/services/cfgsvc/test", ""); st != 502 || m["status"] != "unreachable" {
		t.Fatalf("cfgsvc: %d %v", st, m)
	}
}

func TestDiagnostics(t *testing.T) {
	t.Parallel()
	in := startHere(t, conf(""))
	st, m := api(t, in, "GET", "/manage/diagnostics", "")
	if st != 200 {
		t.Fatalf("%d %v", st, m)
	}
	sys := m["system"].(map[string]any)
	net := m["network"].(map[string]any)
	env := m["environment"].(map[string]any)
	if sys["goVersion"] == nil || sys["platform"] == nil || sys["uptime"] == nil || net["strictTLS"] != true ||
		net["timeout"].(float64) != 30000 || net["retries"].(float64) != 2 || env["timeZone"] == nil || env["currentTime"] == nil {
		t.Errorf("diagnostics: %v", m)
	}
	gh := m["authentication"].(map[string]any)["github"].(map[string]any)
	if gh["tokenConfigured"] != true || gh["envVar"] != "GITHUB_TOKEN" || gh["authType"] != "bearer" || len(gh) != 3 {
		t.Errorf("github: %v", gh)
	}
}

// TestRuntimeServiceProxies: a runtime service is served by the proxy
// exactly like a config-defined one: credential, version, headers, limit.
func TestRuntimeServiceProxies(t *testing.T) {
	t.Parallel()
	type seen struct{ path, auth, def, apiKey string }
	got := make(chan seen, 10)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- seen{r.URL.Path, r.Header.Get("Authorization"), r.Header.Get("X-Default"), r.Header.Get("X-Api-Key")}
		io.WriteString(w, `{"ok":true}`)
	}))
	defer up.Close()
	in := startHere(t, conf(""))
	body := `{"key":"rt","config":{"baseUrl":"` + up.URL + `/base/","versionedBaseUrls":{"v2":"` + up.URL + `/v2base/"},
		"headers":{"X-Default":"rt-default"},"rateLimit":{"maxRequests":2,"windowMs":60000},"auth":{"type":"bearer","tokenEnvVar":"CUSTOM_TOKEN"}}}`
	if st, m := api(t, in, "POST", "/manage/services", body); st != 201 {
		t.Fatalf("add: %d %v", st, m)
	}
	resp, raw := testutil.Do(t, "GET", in.URL("/proxy/services"), nil, "X-API-Key", proxyKey)
	if !strings.Contains(string(raw), `"key":"rt"`) {
		t.Fatalf("/proxy/services: %d %s", resp.StatusCode, raw)
	}
	resp, raw = testutil.Do(t, "GET", in.URL("/proxy/rt/v2/hello"), nil, "X-API-Key", proxyKey)
	if resp.StatusCode == 404 && strings.Contains(string(raw), "Endpoint not found") {
		t.Skip("byteproxy_services does not proxy yet")
	}
	if resp.StatusCode != 200 || resp.Header.Get("X-Proxy-Service") != "rt" {
		t.Fatalf("proxy: %d %v %s", resp.StatusCode, resp.Header, raw)
	}
	s := <-got
	if s.path != "/v2base/hello" || s.auth != "Bearer "+customToken || s.def != "rt-default" || s.apiKey != "" {
		t.Fatalf("upstream saw %+v", s)
	}
	testutil.Do(t, "GET", in.URL("/proxy/rt/x"), nil, "X-API-Key", proxyKey)
	resp, raw = testutil.Do(t, "GET", in.URL("/proxy/rt/x"), nil, "X-API-Key", proxyKey)
	if resp.StatusCode != 429 {
		t.Fatalf("third request within the runtime limit of 2: %d %s", resp.StatusCode, raw)
	}
}

// TestNoSecretInManagementResponses drives every management and
// informational endpoint with distinctive tokens and keys set, and scans
// every body and the whole log for them and for any 6-byte piece of them.
func TestNoSecretInManagementResponses(t *testing.T) {
	t.Parallel()
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer up.Close()
	in := startHere(t, conf(""))
	var bodies []string
	record := func(method, path, body string, hdr ...string) {
		hdr = append([]string{"X-API-Key", mgmtKey, "Content-Type", "application/json"}, hdr...)
		var b []byte
		if body != "" {
			b = []byte(body)
		}
		resp, raw := testutil.Do(t, method, in.URL(path), b, hdr...)
		var h strings.Builder
		for k, v := range resp.Header {
			fmt.Fprintf(&h, "%s: %v\n", k, v)
		}
		label, _, _ := strings.Cut(path, "?")
		bodies = append(bodies, method+" "+label+"\n"+h.String()+string(raw))
	}
	add := `{"key":"sec","config":{"baseUrl":"` + up.URL + `/?x=1","headers":{"X-Api-Key":"` + headerSecret + `","Authorization":"Bearer ` + headerSecret + `"},"auth":{"type":"query","headerName":"token","tokenEnvVar":"CUSTOM_TOKEN"}}}`
	record("POST", "/manage/services", add)
	add = strings.Replace(add, `/?x=1`, ``, 1)
	record("POST", "/manage/services", add)
	record("POST", "/manage/services", `{"key":"sec2","config":{"baseUrl":"`+up.URL+`","auth":{"type":"bearer","tokenEnvVar":"MANAGEMENT_API_KEY"}}}`)
	record("POST", "/manage/services", `{"key":"sec3","config":{"baseUrl":"https://x.example/","headers":{"X":"{env.GITHUB_TOKEN}"}}}`)
	for _, p := range []string{"/manage/services", "/manage/services/sec", "/manage/services/github", "/manage/services/discord",
		"/manage/diagnostics", "/manage/key-debug", "/", "/health", "/status", "/version", "/up", "/auth-status", "/nope",
		"/proxy/services", "/auth-status?api_key=" + mgmtKey} {
		record("GET", p, "")
	}
	record("GET", "/proxy/services", "", "X-API-Key", proxyKey)
	record("POST", "/manage/services/sec/test", "")
	record("POST", "/manage/services/github/test", "")
	record("PUT", "/manage/services/sec", `{"baseUrl":"`+up.URL+`","headers":{"X-Api-Key":"[REDACTED]"}}`)
	record("DELETE", "/manage/services/sec", "")
	record("GET", "/manage/services", "", "X-API-Key", "wrong-"+mgmtKey)

	secrets := []string{mgmtKey, proxyKey, customToken, discordToken, githubToken, headerSecret}
	hay := strings.Join(bodies, "\n----\n")
	logs := in.Logs()
	for _, s := range secrets {
		for i := 0; i+6 <= len(s); i++ {
			piece := s[i : i+6]
			if strings.Contains(hay, piece) {
				t.Errorf("a response contains %q, a piece of a secret:\n%s", piece, excerpt(hay, piece))
			}
			if strings.Contains(logs, piece) {
				t.Errorf("the log contains %q, a piece of a secret:\n%s", piece, excerpt(logs, piece))
			}
		}
	}
	if !strings.Contains(hay, `"[REDACTED]"`) || !strings.Contains(hay, `"tokenConfigured":true`) {
		t.Errorf("expected redacted headers and tokenConfigured in the bodies:\n%s", hay)
	}
}

func excerpt(s, piece string) string {
	i := strings.Index(s, piece)
	lo, hi := max(0, i-200), min(len(s), i+200)
	return s[lo:hi]
}
