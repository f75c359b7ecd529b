package manage_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/byteproxy/byteproxy/internal/testutil"
)

// Compatibility with the original ByteProxy's management clients (issue
// 13.7-13.9), through a running gateway.

// headerRecorder is an upstream that remembers, per path, the value of one
// request header.
type headerRecorder struct {
	srv  *httptest.Server
	mu   sync.Mutex
	seen map[string]string
}

func newHeaderRecorder(t *testing.T, header string) *headerRecorder {
	rec := &headerRecorder{seen: map[string]string{}}
	rec.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec.mu.Lock()
		rec.seen[r.URL.Path] = r.Header.Get(header)
		rec.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(rec.srv.Close)
	return rec
}

func (rec *headerRecorder) got(path string) (string, bool) {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	v, ok := rec.seen[path]
	return v, ok
}

// compatConf is conf with one config service in front of the recorder,
// whose credential is written with the original's type name.
func compatConf(upURL string) string {
	return strings.Replace(conf(""), "\t\tservice cfgsvc {", "\t\tservice orig-cfg {\n\t\t\tbase_url "+upURL+"/cfg/\n\t\t\tauth api-key X-Up-Key {env.CUSTOM_TOKEN}\n\t\t}\n\t\tservice cfgsvc {", 1)
}

// proxied sends a proxy request with the proxy key and checks it reached
// the upstream with the custom token in X-Up-Key.
func proxied(t *testing.T, in *testutil.Instance, rec *headerRecorder, path, upPath string) {
	t.Helper()
	resp, raw := testutil.DoAfterReload(t, "GET", in.URL(path), nil, "X-API-Key", proxyKey)
	if resp.StatusCode != 204 {
		t.Fatalf("%s: %d %s", path, resp.StatusCode, raw)
	}
	if v, ok := rec.got(upPath); !ok || v != customToken {
		t.Errorf("%s: upstream %s got the credential %v (seen %v)", path, upPath, v == customToken, ok)
	}
}

// TestAuthTypeAPIKeyAlias: "api-key", the original's name of the header
// credential, is accepted in the management API (POST and PUT), the
// Caddyfile and the JSON config, works as "header", and is shown as
// "header", so a GET → PUT round trip keeps working.
func TestAuthTypeAPIKeyAlias(t *testing.T) {
	t.Parallel()
	rec := newHeaderRecorder(t, "X-Up-Key")
	in := start(t, compatConf(rec.srv.URL), "")

	// The Caddyfile.
	proxied(t, in, rec, "/proxy/orig-cfg/a", "/cfg/a")
	st, m := api(t, in, "GET", "/manage/services/orig-cfg", "")
	if a, _ := m["config"].(map[string]any)["auth"].(map[string]any); st != 200 || a["type"] != "header" || a["headerName"] != "X-Up-Key" {
		t.Errorf("GET orig-cfg: %d %v", st, m)
	}

	// POST.
	st, m = api(t, in, "POST", "/manage/services", `{"key":"orig","config":{"baseUrl":"`+rec.srv.URL+`/rt/",
		"auth":{"type":"api-key","tokenEnvVar":"CUSTOM_TOKEN","headerName":"X-Up-Key"}}}`)
	if st != 201 {
		t.Fatalf("POST api-key: %d %v", st, m)
	}
	if a := m["config"].(map[string]any)["auth"].(map[string]any); a["type"] != "header" || a["headerName"] != "X-Up-Key" {
		t.Errorf("POST answer auth: %v", a)
	}
	proxied(t, in, rec, "/proxy/orig/b", "/rt/b")

	// GET → PUT round trip, and PUT with the alias.
	_, m = api(t, in, "GET", "/manage/services/orig", "")
	cfg, _ := json.Marshal(m["config"])
	if st, m := api(t, in, "PUT", "/manage/services/orig", string(cfg)); st != 200 {
		t.Fatalf("PUT the GET config back: %d %v", st, m)
	}
	if st, m := api(t, in, "PUT", "/manage/services/orig", `{"baseUrl":"`+rec.srv.URL+`/rt2/","auth":{"type":"api-key","tokenEnvVar":"CUSTOM_TOKEN","headerName":"X-Up-Key"}}`); st != 200 {
		t.Fatalf("PUT api-key: %d %v", st, m)
	}
	proxied(t, in, rec, "/proxy/orig/c", "/rt2/c")
	// Without a header name it is refused as header would be.
	if st, m := api(t, in, "POST", "/manage/services", `{"key":"orig2","config":{"baseUrl":"`+rec.srv.URL+`/","auth":{"type":"api-key","tokenEnvVar":"CUSTOM_TOKEN"}}}`); st != 400 || m["field"] != "auth.headerName" {
		t.Errorf("api-key without headerName: %d %v", st, m)
	}

	// The JSON config, through Caddy's admin API.
	svc := `{"base_url":"` + rec.srv.URL + `/json/","auth":{"type":"api-key","name":"X-Up-Key","token":"{env.CUSTOM_TOKEN}"}}`
	resp, raw := testutil.Do(t, "PUT", in.AdminURL("/config/apps/byteproxy/services/orig-json"), []byte(svc), "Content-Type", "application/json")
	if resp.StatusCode != 200 {
		t.Fatalf("admin API: %d %s", resp.StatusCode, raw)
	}
	proxied(t, in, rec, "/proxy/orig-json/d", "/json/d")
	st, m = api(t, in, "GET", "/manage/services/orig-json", "")
	if a, _ := m["config"].(map[string]any)["auth"].(map[string]any); st != 200 || a["type"] != "header" {
		t.Errorf("GET orig-json: %d %v", st, m)
	}
}

// TestServiceKeysOfTheOriginal: keys with capitals and dots, as the
// original accepted and the OpenAPI document advertises, are stored,
// routed exactly (/proxy/MyAPI/ is MyAPI, not myapi) and survive a
// restart; reserved names stay reserved in any letter case, keys that
// differ from another only in case are refused, and nothing with ".." is
// accepted (runtime services are stored as byteproxy/services/<key>.json).
func TestServiceKeysOfTheOriginal(t *testing.T) {
	t.Parallel()
	rec := newHeaderRecorder(t, "Authorization")
	data := t.TempDir()
	in := start(t, conf(""), data)
	for _, key := range []string{"MyAPI", "my.api", "v1.2_beta-3"} {
		if st, m := api(t, in, "POST", "/manage/services", addBody(key, rec.srv.URL+"/"+key+"/")); st != 201 || m["key"] != key {
			t.Fatalf("POST %s: %d %v", key, st, m)
		}
	}
	check := func(in *testutil.Instance) {
		t.Helper()
		for _, key := range []string{"MyAPI", "my.api", "v1.2_beta-3"} {
			resp, raw := testutil.Do(t, "GET", in.URL("/proxy/"+key+"/x"), nil, "X-API-Key", proxyKey)
			if _, seen := rec.got("/" + key + "/x"); resp.StatusCode != 204 || !seen || resp.Header.Get("X-Proxy-Service") != key {
				t.Errorf("/proxy/%s/x: %d %s (upstream saw it: %v)", key, resp.StatusCode, raw, seen)
			}
			if st, m := api(t, in, "GET", "/manage/services/"+key, ""); st != 200 || m["key"] != key {
				t.Errorf("GET %s: %d %v", key, st, m)
			}
		}
		// Exact: no service myapi or MYAPI.
		for _, p := range []string{"/proxy/myapi/x", "/proxy/MYAPI/x", "/proxy/My.Api/x"} {
			resp, raw := testutil.Do(t, "GET", in.URL(p), nil, "X-API-Key", proxyKey)
			if resp.StatusCode != 404 || !strings.Contains(string(raw), "not configured") {
				t.Errorf("%s: %d %s", p, resp.StatusCode, raw)
			}
		}
	}
	check(in)
	if _, err := os.Stat(filepath.Join(data, "caddy", "byteproxy", "services", "MyAPI.json")); err != nil {
		t.Errorf("record of MyAPI: %v", err)
	}

	for key, want := range map[string]int{
		"myapi": 409, "MYAPI": 409, "My.Api": 409, // only the letter case differs
		"Services": 400, "AUTH-TEST": 400, "Key-Debug": 400, // reserved in any case
		".": 400, "..": 400, "a..b": 400, "...": 400, ".hidden": 400, "a/b": 400, "a\\b": 400,
	} {
		st, m := api(t, in, "POST", "/manage/services", addBody(key, rec.srv.URL+"/"))
		if st != want || m["field"] != "key" {
			t.Errorf("POST %q: %d %v, want %d naming the key", key, st, m, want)
		}
	}
	// /proxy/services and the other reserved paths still answer as before.
	resp, raw := testutil.Do(t, "GET", in.URL("/proxy/services"), nil, "X-API-Key", proxyKey)
	if resp.StatusCode != 200 || !strings.Contains(string(raw), `"key":"MyAPI"`) {
		t.Errorf("/proxy/services: %d %s", resp.StatusCode, raw)
	}

	// After a restart on the same storage.
	in.Kill()
	in = start(t, conf(""), data)
	check(in)
	if st, m := api(t, in, "DELETE", "/manage/services/MyAPI", ""); st != 200 {
		t.Fatalf("DELETE MyAPI: %d %v", st, m)
	}
	if st, m := api(t, in, "POST", "/manage/services", addBody("myapi", rec.srv.URL+"/")); st != 201 {
		t.Errorf("POST myapi once MyAPI is gone: %d %v", st, m)
	}
}

// TestCopiedConfigAccepted: a service description copied from GET
// /manage/services/{key} — ours whole, its config alone, or the
// original's with id, description and timeout — is accepted by POST and
// PUT through a running gateway; a truly unknown field is still a 400
// naming it.
func TestCopiedConfigAccepted(t *testing.T) {
	t.Parallel()
	rec := newHeaderRecorder(t, "X-Up-Key")
	in := start(t, conf(""), "")
	if st, m := api(t, in, "POST", "/manage/services", `{"key":"src","config":{"name":"Src","baseUrl":"`+rec.srv.URL+`/src/",
		"headers":{"X-Team":"bots"},"rateLimit":{"maxRequests":9,"windowMs":60000},
		"auth":{"type":"header","tokenEnvVar":"CUSTOM_TOKEN","headerName":"X-Up-Key"}}}`); st != 201 {
		t.Fatalf("POST src: %d %v", st, m)
	}
	resp, got := testutil.Do(t, "GET", in.URL("/manage/services/src"), nil, "X-API-Key", mgmtKey)
	if resp.StatusCode != 200 || !strings.Contains(string(got), `"source":"runtime"`) || !strings.Contains(string(got), `"tokenConfigured":true`) {
		t.Fatalf("GET src: %d %s", resp.StatusCode, got)
	}
	var whole map[string]json.RawMessage
	if err := json.Unmarshal(got, &whole); err != nil {
		t.Fatal(err)
	}

	// Our GET answer, whole, PUT back; its config alone PUT back.
	if st, m := api(t, in, "PUT", "/manage/services/src", string(got)); st != 200 {
		t.Errorf("PUT the GET answer: %d %v", st, m)
	}
	if st, m := api(t, in, "PUT", "/manage/services/src", string(whole["config"])); st != 200 {
		t.Errorf("PUT the GET config: %d %v", st, m)
	}
	// POSTed under another key.
	copied := strings.Replace(string(got), `"key":"src"`, `"key":"copy"`, 1)
	if st, m := api(t, in, "POST", "/manage/services", copied); st != 201 {
		t.Fatalf("POST a copy of the GET answer: %d %v", st, m)
	}
	proxied(t, in, rec, "/proxy/copy/x", "/src/x")
	_, m := api(t, in, "GET", "/manage/services/copy", "")
	c := m["config"].(map[string]any)
	if c["name"] != "Src" || c["rateLimit"].(map[string]any)["maxRequests"].(float64) != 9 || c["headers"].(map[string]any)["X-Team"] != "bots" {
		t.Errorf("the copy differs: %v", c)
	}

	// The original's GET answer: config with id, description and timeout.
	orig := `{"key":"orig","config":{"id":"svc_1718000000000","name":"Orig","baseUrl":"` + rec.srv.URL + `/orig/",
		"description":"copied from ByteProxy 0.1","timeout":30000,"headers":{"X-Team":"bots"},
		"rateLimit":{"maxRequests":5,"windowMs":60000},
		"auth":{"type":"api-key","tokenEnvVar":"CUSTOM_TOKEN","headerName":"X-Up-Key","tokenConfigured":true}}}`
	if st, m := api(t, in, "POST", "/manage/services", orig); st != 201 {
		t.Fatalf("POST the original's GET answer: %d %v", st, m)
	}
	proxied(t, in, rec, "/proxy/orig/y", "/orig/y")
	if st, m := api(t, in, "PUT", "/manage/services/orig", orig); st != 200 {
		t.Errorf("PUT the original's GET answer: %d %v", st, m)
	}

	for body, field := range map[string]string{
		`{"key":"bad","config":{"baseUrl":"` + rec.srv.URL + `/","bogus":true}}`:                       "bogus",
		`{"key":"bad","config":{"baseUrl":"` + rec.srv.URL + `/","auth":{"type":"bot","secret":"x"}}}`: "secret",
		`{"key":"bad","config":{"baseUrl":"` + rec.srv.URL + `/"},"extra":1}`:                          "extra",
	} {
		if st, m := api(t, in, "POST", "/manage/services", body); st != 400 || m["field"] != field {
			t.Errorf("unknown field %s: %d %v", field, st, m)
		}
	}
}

// TestOriginalInformationalFields: the informational answers keep the
// original's fields that carry no secret (issue 13.10), with one "v"
// prefix for the version everywhere, and OPTIONS on a known endpoint
// without Origin answers 204 with Allow.
func TestOriginalInformationalFields(t *testing.T) {
	t.Parallel()
	get := func(in *testutil.Instance, path string) map[string]any {
		t.Helper()
		resp, raw := testutil.Do(t, "GET", in.URL(path), nil)
		if resp.StatusCode != 200 {
			t.Fatalf("GET %s: %d %s", path, resp.StatusCode, raw)
		}
		return decode(t, resp, raw)
	}
	in := start(t, conf(""), "") // a proxy key is required
	health := get(in, "/health")
	version := get(in, "/version")["version"]
	check := get(in, "/version/check")["currentVersion"]
	welcome := get(in, "/")["version"]
	if v, _ := health["version"].(string); !strings.HasPrefix(v, "v") || v != version || v != check || v != welcome {
		t.Errorf("versions: /health %v, /version %v, /version/check %v, / %v", health["version"], version, check, welcome)
	}
	cfg := obj(health["config"])
	if cfg["port"] != float64(in.Port) {
		t.Errorf("/health config.port %v, want %d", cfg["port"], in.Port)
	}
	if l := obj(cfg["logging"]); l["enabled"] != true || l["level"] != "info" {
		t.Errorf("/health config.logging %v", l)
	}
	if c := obj(cfg["cors"]); c["enabled"] != true || fmt.Sprint(c["origins"]) != "[*]" {
		t.Errorf("/health config.cors %v", c)
	}

	status := get(in, "/status")
	conf := obj(status["configuration"])
	if conf["port"] != float64(in.Port) || obj(conf["logging"])["level"] != "info" || conf["baseUrlsHidden"] != true {
		t.Errorf("/status configuration %v", conf)
	}
	for _, s := range list(conf["services"]) {
		if _, shown := obj(s)["baseUrl"]; shown {
			t.Errorf("/status shows a base URL while the proxy needs a key: %v", s)
		}
	}
	if rss, _ := obj(obj(status["runtime"])["memory"])["rss"].(float64); rss <= 0 && runtime.GOOS == "linux" {
		t.Errorf("/status runtime.memory.rss %v", rss)
	}

	// OPTIONS without Origin: 204 and Allow on every known endpoint.
	for path, allow := range map[string]string{
		"/": "GET, HEAD, OPTIONS", "/health": "GET, HEAD, OPTIONS", "/version/check": "GET, HEAD, OPTIONS",
		"/docs/openapi.json": "GET, HEAD, OPTIONS",
	} {
		resp, raw := testutil.Do(t, "OPTIONS", in.URL(path), nil)
		if resp.StatusCode != 204 || resp.Header.Get("Allow") != allow || len(raw) != 0 {
			t.Errorf("OPTIONS %s: %d Allow %q %s", path, resp.StatusCode, resp.Header.Get("Allow"), raw)
		}
	}
	resp, raw := testutil.Do(t, "OPTIONS", in.URL("/manage/services"), nil, "X-API-Key", mgmtKey)
	if resp.StatusCode != 204 || resp.Header.Get("Allow") != "GET, HEAD, POST, OPTIONS" {
		t.Errorf("OPTIONS /manage/services: %d %q %s", resp.StatusCode, resp.Header.Get("Allow"), raw)
	}
	if resp, raw := testutil.Do(t, "OPTIONS", in.URL("/nope"), nil); resp.StatusCode != 404 {
		t.Errorf("OPTIONS /nope: %d %s", resp.StatusCode, raw)
	}
	if resp, raw := testutil.Do(t, "POST", in.URL("/"), nil); resp.StatusCode != 405 || resp.Header.Get("Allow") != "GET, HEAD, OPTIONS" || resp.Header.Get("X-Proxy-Error") != "true" {
		t.Errorf("POST /: %d %v %s", resp.StatusCode, resp.Header, raw)
	}
	// A preflight (with Origin) is still CORS's.
	resp, _ = testutil.Do(t, "OPTIONS", in.URL("/"), nil, "Origin", "https://app.example", "Access-Control-Request-Method", "GET")
	if resp.StatusCode != 204 || resp.Header.Get("Access-Control-Allow-Origin") != "*" {
		t.Errorf("preflight: %d %v", resp.StatusCode, resp.Header)
	}

	// Without a proxy key, /proxy/services shows base URLs to anyone, and so
	// does /status; the log level follows Caddy's.
	open := testutil.Start(t, `{
	log {
		level DEBUG
	}
	byteproxy {
		cors off
		service cfgsvc {
			base_url http://127.0.0.1:9/api/
		}
	}
}
:{{PORT}} {
	byteproxy
}
`, testutil.Options{})
	status = get(open, "/status")
	conf = obj(status["configuration"])
	if s := obj(first(list(conf["services"]))); s["baseUrl"] != "http://127.0.0.1:9/api/" || conf["baseUrlsHidden"] != nil {
		t.Errorf("/status without a proxy key: %v", conf)
	}
	cfg = obj(get(open, "/health")["config"])
	if obj(cfg["logging"])["level"] != "debug" || obj(cfg["cors"])["enabled"] != false {
		t.Errorf("/health config %v", cfg)
	}
}

// obj, list and first read decoded JSON without panicking on a missing or
// mistyped field (the test then fails on the value instead).
func obj(v any) map[string]any {
	m, _ := v.(map[string]any)
	return m
}

func list(v any) []any {
	l, _ := v.([]any)
	return l
}

func first(l []any) any {
	if len(l) == 0 {
		return nil
	}
	return l[0]
}
