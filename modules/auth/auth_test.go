package auth

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/byteproxy/byteproxy/modules/gateway"
)

// Distinctive keys: easy to find in a body or a log if one ever leaks.
const (
	proxyKey  = "pk-LIVE-7f3a9c2e1b5d4e6f8a0b1c2d3e4f5a6b"
	proxyKey2 = "pk-NEXT-0c9b8a7f6e5d4c3b2a1f0e9d8c7b6a5f"
	mgmtKey   = "mk-ROOT-a1b2c3d4e5f60718293a4b5c6d7e8f90"
)

func TestKeyringMatch(t *testing.T) {
	t.Parallel()
	k := newKeyring([]string{proxyKey, proxyKey2})
	tests := []struct {
		name      string
		presented string
		want      int
	}{
		{"first key", proxyKey, 0},
		{"second key", proxyKey2, 1},
		{"empty", "", -1},
		{"prefix", proxyKey[:len(proxyKey)-1], -1},
		{"suffix", proxyKey[1:], -1},
		{"extra byte", proxyKey + "0", -1},
		{"upper case", strings.ToUpper(proxyKey), -1},
		{"lower case", strings.ToLower(proxyKey), -1},
		{"leading space", " " + proxyKey, -1},
		{"trailing space", proxyKey + " ", -1},
		{"trailing newline", proxyKey + "\n", -1},
		{"two keys joined", proxyKey + proxyKey2, -1},
		{"other scope's key", mgmtKey, -1},
		{"very long", strings.Repeat(proxyKey, 20), -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := k.match(tt.presented); got != tt.want {
				t.Errorf("match(%q) = %d, want %d", tt.name, got, tt.want)
			}
		})
	}
	if got := newKeyring(nil).match(proxyKey); got != -1 {
		t.Errorf("empty keyring matched: %d", got)
	}
	long := strings.Repeat("k", 1000)
	if got := newKeyring([]string{long}).match(long); got != 0 {
		t.Errorf("key longer than the stack buffer: match = %d, want 0", got)
	}
}

func TestKeyID(t *testing.T) {
	t.Parallel()
	id := keyID(proxyKey)
	if id != keyID(proxyKey) {
		t.Fatal("key id is not stable")
	}
	if id == keyID(proxyKey2) {
		t.Fatal("two keys share an id")
	}
	if !strings.HasPrefix(id, "key:") || len(id) != len("key:")+12 {
		t.Fatalf("id %q: want key: and 12 hex digits", id)
	}
	assertNoKeyMaterial(t, "key id", id, proxyKey)
}

func TestReadCredentials(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		headers  map[string]string
		query    string
		queryKey bool
		want     credentials
	}{
		{"none", nil, "", true, credentials{}},
		{"bearer", map[string]string{"Authorization": "Bearer " + proxyKey}, "", true, credentials{authz: proxyKey, scheme: "Bearer"}},
		{"lowercase bearer", map[string]string{"Authorization": "bearer " + proxyKey}, "", true, credentials{authz: proxyKey, scheme: "Bearer"}},
		{"BEARER", map[string]string{"Authorization": "BEARER " + proxyKey}, "", true, credentials{authz: proxyKey, scheme: "Bearer"}},
		{"bot", map[string]string{"Authorization": "Bot " + proxyKey}, "", true, credentials{authz: proxyKey, scheme: "Bot"}},
		{"token", map[string]string{"Authorization": "token " + proxyKey}, "", true, credentials{authz: proxyKey, scheme: "token"}},
		{"Token", map[string]string{"Authorization": "Token " + proxyKey}, "", true, credentials{authz: proxyKey, scheme: "token"}},
		{"bearer two spaces", map[string]string{"Authorization": "Bearer  " + proxyKey}, "", true, credentials{authz: proxyKey, scheme: "Bearer"}},
		{"bearer tab", map[string]string{"Authorization": "Bearer \t" + proxyKey}, "", true, credentials{authz: "\t" + proxyKey, scheme: "Bearer"}},
		{"kelvin sign", map[string]string{"Authorization": "to\u212aen " + proxyKey}, "", true, credentials{badAuthz: "The Authorization scheme is not one the gateway accepts (Bearer, Bot or token)."}},
		{"raw key", map[string]string{"Authorization": proxyKey}, "", true, credentials{badAuthz: "The Authorization header has no scheme: send 'Authorization: Bearer <key>'."}},
		{"basic", map[string]string{"Authorization": "Basic " + proxyKey}, "", true, credentials{badAuthz: "Basic authentication is not accepted: send the key as 'Authorization: Bearer <key>' or in X-API-Key."}},
		{"scheme only", map[string]string{"Authorization": "Bearer "}, "", true, credentials{badAuthz: "The Authorization header names a scheme but holds no key."}},
		{"empty", map[string]string{"Authorization": ""}, "", true, credentials{badAuthz: "The Authorization header is empty."}},
		{"x-api-key", map[string]string{"x-api-key": proxyKey}, "", true, credentials{header: proxyKey}},
		{"query", nil, "a=1&api_key=" + proxyKey + "&b=2", true, credentials{query: proxyKey}},
		{"query encoded name", nil, "api%5Fkey=" + proxyKey, true, credentials{query: proxyKey}},
		{"query encoded value", nil, "api_key=a%2Bb+c", true, credentials{query: "a+b c"}},
		{"query first wins", nil, "api_key=one&api_key=two", true, credentials{query: "one"}},
		{"query off", nil, "api_key=" + proxyKey, false, credentials{}},
		{"query bad escape", nil, "api_key=%zz", true, credentials{}},
		{"query after semicolon", nil, "x=1;api_key=" + proxyKey, true, credentials{query: proxyKey}},
		{"query encoded after semicolon", nil, "x=1&y=2;%61pi_key=" + proxyKey, true, credentials{query: proxyKey}},
		{"similar names", nil, "xapi_key=" + proxyKey + "&api_keys=" + proxyKey + "&API_KEY=" + proxyKey + "&apikey=" + proxyKey + "&api_key[]=" + proxyKey, true, credentials{}},
		{"all three", map[string]string{"Authorization": "Bearer a", "X-API-Key": "b"}, "api_key=c", true, credentials{authz: "a", scheme: "Bearer", header: "b", query: "c"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/proxy/x/y?"+tt.query, nil)
			for k, v := range tt.headers {
				r.Header.Set(k, v)
			}
			if got := readCredentials(r, tt.queryKey); got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"", "Proxy", "manage", "admin"} {
		if err := (&Handler{Scope: s}).Validate(); err == nil {
			t.Errorf("scope %q accepted", s)
		}
	}
	for _, s := range []string{gateway.ScopeProxy, gateway.ScopeManagement} {
		if err := (&Handler{Scope: s}).Validate(); err != nil {
			t.Errorf("scope %q: %v", s, err)
		}
	}
}

func TestPeerIsLoopback(t *testing.T) {
	t.Parallel()
	for addr, want := range map[string]bool{
		"127.0.0.1:4000":          true,
		"127.8.9.10:4000":         true,
		"[::1]:4000":              true,
		"[::ffff:127.0.0.1]:4000": true,
		"127.0.0.1":               true,
		"10.0.0.1:4000":           false,
		"192.168.1.2:4000":        false,
		"203.0.113.9:4000":        false,
		"[2001:db8::1]:4000":      false,
		"[::ffff:10.0.0.1]:4000":  false,
		"@":                       false,
		"":                        false,
		"localhost:4000":          false,
	} {
		if got := peerIsLoopback(addr); got != want {
			t.Errorf("peerIsLoopback(%q) = %v, want %v", addr, got, want)
		}
	}
}

// served is what the next handler saw.
type served struct {
	called bool
	req    *http.Request
}

func (s *served) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	s.called = true
	s.req = r
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func newHandler(scope string, sc gateway.Scope, queryKey bool) *Handler {
	h := &Handler{Scope: scope}
	sc.Name = scope
	h.setup(&sc, queryKey, zap.NewNop(), nil)
	return h
}

// serve runs one request through h with Caddy's request vars in place.
func serve(t *testing.T, h *Handler, r *http.Request) (*httptest.ResponseRecorder, *served, map[string]any) {
	t.Helper()
	vars := map[string]any{}
	r = r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, vars))
	w := httptest.NewRecorder()
	next := new(served)
	if err := h.ServeHTTP(w, r, next); err != nil {
		t.Fatalf("ServeHTTP: %v", err)
	}
	assertNoKeyMaterial(t, "response", dump(w), proxyKey, proxyKey2, mgmtKey)
	return w, next, vars
}

func dump(w *httptest.ResponseRecorder) string {
	var b strings.Builder
	_ = w.Result().Header.Write(&b)
	b.WriteString(w.Body.String())
	return b.String()
}

func TestServeHTTPDecisions(t *testing.T) {
	t.Parallel()
	keyed := gateway.Scope{Keys: []string{proxyKey, proxyKey2}, Required: true}
	optional := gateway.Scope{Keys: []string{proxyKey}}
	tests := []struct {
		name    string
		scope   string
		sc      gateway.Scope
		remote  string
		target  string
		headers []string
		status  int // 0: passed to next
		client  string
	}{
		{"bearer", "proxy", keyed, "", "/proxy/svc/x", []string{"Authorization", "Bearer " + proxyKey}, 0, keyID(proxyKey)},
		{"x-api-key second key", "proxy", keyed, "", "/proxy/svc/x", []string{"X-API-Key", proxyKey2}, 0, keyID(proxyKey2)},
		{"query", "proxy", keyed, "", "/proxy/svc/x?api_key=" + proxyKey, nil, 0, keyID(proxyKey)},
		{"wrong bearer right header", "proxy", keyed, "", "/proxy/svc/x", []string{"Authorization", "Bearer nope", "X-API-Key", proxyKey}, 0, keyID(proxyKey)},
		{"missing", "proxy", keyed, "", "/proxy/svc/x", nil, 401, ""},
		{"wrong", "proxy", keyed, "", "/proxy/svc/x", []string{"X-API-Key", proxyKey + "x"}, 401, ""},
		{"basic carrying key", "proxy", keyed, "", "/proxy/svc/x", []string{"Authorization", "Basic " + proxyKey}, 401, ""},
		{"optional, none", "proxy", optional, "", "/proxy/svc/x", nil, 0, ""},
		{"optional, wrong", "proxy", optional, "", "/proxy/svc/x", []string{"X-API-Key", "nope"}, 401, ""},
		{"optional, right", "proxy", optional, "", "/proxy/svc/x", []string{"X-API-Key", proxyKey}, 0, keyID(proxyKey)},
		{"open proxy ignores credentials", "proxy", gateway.Scope{}, "203.0.113.9:1234", "/proxy/svc/x", []string{"X-API-Key", "anything"}, 0, ""},
		{"open management, remote", "management", gateway.Scope{}, "203.0.113.9:1234", "/manage/services", nil, 403, ""},
		{"open management, remote forged XFF", "management", gateway.Scope{}, "203.0.113.9:1234", "/manage/services", []string{"X-Forwarded-For", "127.0.0.1", "X-Real-IP", "127.0.0.1", "Forwarded", "for=127.0.0.1"}, 403, ""},
		{"open management, remote with a key", "management", gateway.Scope{}, "203.0.113.9:1234", "/manage/services", []string{"X-API-Key", mgmtKey}, 403, ""},
		{"open management, loopback v4", "management", gateway.Scope{}, "127.0.0.1:1234", "/manage/services", nil, 0, ""},
		{"open management, loopback v6", "management", gateway.Scope{}, "[::1]:1234", "/manage/services", nil, 0, ""},
		{"optional management, remote without key", "management", gateway.Scope{Keys: []string{mgmtKey}}, "203.0.113.9:1234", "/manage/services", nil, 403, ""},
		{"optional management, remote with key", "management", gateway.Scope{Keys: []string{mgmtKey}}, "203.0.113.9:1234", "/manage/services", []string{"X-API-Key", mgmtKey}, 0, keyID(mgmtKey)},
		{"required management, remote with key", "management", gateway.Scope{Keys: []string{mgmtKey}, Required: true}, "203.0.113.9:1234", "/manage/services", []string{"Authorization", "Bearer " + mgmtKey}, 0, keyID(mgmtKey)},
		{"required management, loopback without key", "management", gateway.Scope{Keys: []string{mgmtKey}, Required: true}, "127.0.0.1:1234", "/manage/services", nil, 401, ""},
		{"proxy key on management", "management", gateway.Scope{Keys: []string{mgmtKey}, Required: true}, "127.0.0.1:1234", "/manage/services", []string{"X-API-Key", proxyKey}, 401, ""},
		{"required without keys fails closed", "proxy", gateway.Scope{Required: true}, "127.0.0.1:1234", "/proxy/svc/x", []string{"X-API-Key", proxyKey}, 401, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHandler(tt.scope, tt.sc, true)
			r := httptest.NewRequest(http.MethodGet, tt.target, nil)
			r.Host = "localhost:3420" // what curl sends to a local gateway
			if tt.remote != "" {
				r.RemoteAddr = tt.remote
			}
			for i := 0; i+1 < len(tt.headers); i += 2 {
				r.Header.Set(tt.headers[i], tt.headers[i+1])
			}
			w, next, vars := serve(t, h, r)
			if tt.status == 0 {
				if !next.called {
					t.Fatalf("refused with %d: %s", w.Code, w.Body)
				}
				got, _ := vars[gateway.VarClient].(string)
				if got != tt.client {
					t.Errorf("client var = %q, want %q", got, tt.client)
				}
				assertStripped(t, next.req)
				return
			}
			if next.called {
				t.Fatal("request passed, want refusal")
			}
			if w.Code != tt.status {
				t.Fatalf("status %d, want %d: %s", w.Code, tt.status, w.Body)
			}
			if _, ok := vars[gateway.VarClient]; ok {
				t.Error("client var set on a refused request")
			}
			if tt.status == 401 && w.Header().Get("WWW-Authenticate") != `Bearer realm="byteproxy"` {
				t.Errorf("WWW-Authenticate = %q", w.Header().Get("WWW-Authenticate"))
			}
		})
	}
}

// assertStripped checks that no credential transport survived.
func assertStripped(t *testing.T, r *http.Request) {
	t.Helper()
	if v := r.Header.Get("X-Api-Key"); v != "" {
		t.Error("X-API-Key not removed")
	}
	if strings.HasPrefix(r.Header.Get("Authorization"), "Bearer ") {
		t.Error("bearer Authorization not removed")
	}
	if strings.Contains(r.URL.RawQuery, "api_key") || strings.Contains(r.RequestURI, "api_key") {
		t.Errorf("api_key not removed: %q / %q", r.URL.RawQuery, r.RequestURI)
	}
}

func TestStripKeepsTheRest(t *testing.T) {
	t.Parallel()
	h := newHandler("proxy", gateway.Scope{Keys: []string{proxyKey}, Required: true}, true)
	r := httptest.NewRequest(http.MethodGet, "/proxy/svc/p%2Fq?a=1&b=%2F&flag&api_key="+proxyKey+"&y=2;y=3&API_KEY=nokey", nil)
	r.Header.Set("Authorization", "Bearer nope")
	r.Header.Set("X-Other", "kept")
	_, next, _ := serve(t, h, r)
	if !next.called {
		t.Fatal("refused")
	}
	const wantQuery = "a=1&b=%2F&flag&y=2;y=3" // API_KEY is no key, and stripped all the same
	if next.req.URL.RawQuery != wantQuery {
		t.Errorf("query %q, want %q", next.req.URL.RawQuery, wantQuery)
	}
	if want := "/proxy/svc/p%2Fq?" + wantQuery; next.req.RequestURI != want {
		t.Errorf("RequestURI %q, want %q", next.req.RequestURI, want)
	}
	if next.req.Header.Get("Authorization") != "" || next.req.Header.Get("X-Other") != "kept" {
		t.Errorf("headers after strip: %v", next.req.Header)
	}

	// With query_key off, ?api_key= is no credential but still never travels on.
	h = newHandler("proxy", gateway.Scope{Keys: []string{proxyKey}, Required: true}, false)
	r = httptest.NewRequest(http.MethodGet, "/proxy/svc/x?api_key="+proxyKey, nil)
	w, next, _ := serve(t, h, r)
	if next.called || w.Code != 401 || !strings.Contains(w.Body.String(), "No authentication provided") {
		t.Fatalf("query_key off: %d %s", w.Code, w.Body)
	}
	r = httptest.NewRequest(http.MethodGet, "/proxy/svc/x?api_key="+proxyKey2+"&z=1", nil)
	r.Header.Set("X-API-Key", proxyKey)
	_, next, _ = serve(t, h, r)
	if !next.called || next.req.URL.RawQuery != "z=1" {
		t.Fatalf("query_key off with header: called=%v query=%q", next.called, next.req.URL.RawQuery)
	}
}

func TestManagementKeepsForeignAuthorization(t *testing.T) {
	t.Parallel()
	// On the management scope, an Authorization header that is not a bearer
	// credential is not ours to remove (a custom composition may need it).
	h := newHandler("management", gateway.Scope{Keys: []string{mgmtKey}, Required: true}, true)
	r := httptest.NewRequest(http.MethodGet, "/manage/services", nil)
	r.Header.Set("X-API-Key", mgmtKey)
	r.Header.Set("Authorization", "Basic dXNlcjpwYXNz")
	_, next, _ := serve(t, h, r)
	if !next.called || next.req.Header.Get("Authorization") != "Basic dXNlcjpwYXNz" {
		t.Fatalf("called=%v Authorization=%q", next.called, next.req.Header.Get("Authorization"))
	}
}

func TestUnauthorizedBodies(t *testing.T) {
	t.Parallel()
	for _, scope := range []string{"proxy", "management"} {
		h := newHandler(scope, gateway.Scope{Keys: []string{proxyKey}, Required: true}, true)
		r := httptest.NewRequest(http.MethodGet, "/x", nil)
		w, _, _ := serve(t, h, r)
		want := "No authentication provided. API key required for " + scope + " routes."
		if !strings.Contains(w.Body.String(), want) || !strings.Contains(w.Body.String(), `"howToAuthenticate":[`) {
			t.Errorf("%s missing: %s", scope, w.Body)
		}
		if ct := w.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
			t.Errorf("Content-Type %q", ct)
		}
		r = httptest.NewRequest(http.MethodGet, "/x?api_key="+proxyKey[:10], nil)
		w, _, _ = serve(t, h, r)
		want = "Authentication failed. Invalid API key for " + scope + " routes."
		if !strings.Contains(w.Body.String(), want) {
			t.Errorf("%s invalid: %s", scope, w.Body)
		}
	}
}

// assertNoKeyMaterial fails if text contains any key, or its first or last
// six characters.
func assertNoKeyMaterial(t testing.TB, what, text string, keys ...string) {
	t.Helper()
	for _, k := range keys {
		for _, frag := range []string{k, k[:6], k[len(k)-6:]} {
			if strings.Contains(text, frag) {
				t.Errorf("%s contains key material %q", what, frag)
			}
		}
	}
}

func TestParseCaddyfile(t *testing.T) {
	t.Parallel()
	for input, want := range map[string]string{
		"byteproxy_auth proxy":               "proxy",
		"byteproxy_auth management":          "management",
		"byteproxy_auth":                     "",
		"byteproxy_auth admin":               "",
		"byteproxy_auth proxy management":    "",
		"byteproxy_auth proxy {\n\tkey x\n}": "",
	} {
		h, err := parseCaddyfile(httpcaddyfile.Helper{Dispenser: caddyfile.NewTestDispenser(input)})
		if want == "" {
			if err == nil {
				t.Errorf("%q: accepted", input)
			}
			continue
		}
		if err != nil || h.(*Handler).Scope != want {
			t.Errorf("%q: %v, %v", input, h, err)
		}
	}
}

func TestStatusBody(t *testing.T) {
	t.Parallel()
	r := httptest.NewRequest(http.MethodGet, "/auth-status?x=1&api_key="+proxyKey, nil)
	r.Header.Set("Authorization", "Bearer "+mgmtKey)
	r.Header.Set("X-API-Key", proxyKey2)
	b, err := json.Marshal(Status(nil, r))
	if err != nil {
		t.Fatal(err)
	}
	assertNoKeyMaterial(t, "status", string(b), proxyKey, proxyKey2, mgmtKey)
	var got struct {
		Path        string
		AuthConfig  map[string]bool
		RequestInfo struct {
			Method                                      string
			HasAuthHeader, HasAPIKeyHeader, HasQueryKey bool
			PathSegments                                []string
		}
	}
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	ri := got.RequestInfo
	if got.Path != "/auth-status" || ri.Method != "GET" || !ri.HasAuthHeader || !ri.HasAPIKeyHeader || !ri.HasQueryKey ||
		fmt.Sprint(ri.PathSegments) != "[auth-status]" || len(got.AuthConfig) != 4 {
		t.Errorf("status %s", b)
	}
	if strings.Contains(string(b), "fullUrl") {
		t.Error("status echoes the URL")
	}
}
