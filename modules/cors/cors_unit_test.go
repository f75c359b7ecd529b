package cors

import (
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/byteproxy/byteproxy/modules/gateway"
)

func newHandler(t testing.TB, c *gateway.CORSConfig) *Handler {
	t.Helper()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	h := new(Handler)
	h.setup(c, zap.NewNop())
	return h
}

type nextFunc func(http.ResponseWriter, *http.Request) error

func (f nextFunc) ServeHTTP(w http.ResponseWriter, r *http.Request) error { return f(w, r) }

// TestSetupOrigins: listed origins match whatever their case; '*' in a
// list allows every origin. (gateway's TestCORSValidate: what is refused.)
func TestSetupOrigins(t *testing.T) {
	t.Parallel()
	h := newHandler(t, &gateway.CORSConfig{Origins: []string{"HTTPS://App.Example.com/", "null"}})
	if h.allowAll || h.allowOrigin("https://app.example.com") == "" || h.allowOrigin("HTTPS://APP.EXAMPLE.COM") != "https://app.example.com" || h.allowOrigin("null") == "" {
		t.Errorf("normalized origins: %v", h.origins)
	}
	if h := newHandler(t, &gateway.CORSConfig{Origins: []string{"https://a.example", "*"}}); !h.allowAll {
		t.Error("'*' in a list must allow every origin")
	}
}

// TestLaterHandlerMayDelete: a header a later handler deletes on purpose
// stays deleted; one it replaces with a conflicting value is restored.
func TestLaterHandlerMayDelete(t *testing.T) {
	t.Parallel()
	h := newHandler(t, &gateway.CORSConfig{Origins: []string{"https://a.example"}})
	run := func(edit func(http.Header)) http.Header {
		w := httptest.NewRecorder()
		r := httptest.NewRequest("GET", "/", nil)
		r.Header.Set("Origin", "https://a.example")
		err := h.ServeHTTP(w, r, nextFunc(func(w http.ResponseWriter, _ *http.Request) error {
			edit(w.Header())
			_, err := w.Write([]byte("x"))
			return err
		}))
		if err != nil {
			t.Fatal(err)
		}
		return w.Header()
	}
	if got := run(func(h http.Header) { h.Del("Access-Control-Allow-Origin") }); got.Get("Access-Control-Allow-Origin") != "" {
		t.Errorf("deleted ACAO came back: %v", got)
	}
	got := run(func(h http.Header) { h.Set("Access-Control-Allow-Origin", "*") })
	if v := got.Values("Access-Control-Allow-Origin"); len(v) != 1 || v[0] != "https://a.example" {
		t.Errorf("conflicting ACAO: %v", v)
	}
}

func TestMergeList(t *testing.T) {
	t.Parallel()
	got := mergeList("A, B", []string{"A, B", "b, C", ""})
	if len(got) != 1 || got[0] != "A, B, C" {
		t.Errorf("mergeList = %q", got)
	}
}

// TestInPlaceEditStaysLocal: Caddy's `header` replacements edit a value
// in place; that must not leak into the next response.
func TestInPlaceEditStaysLocal(t *testing.T) {
	t.Parallel()
	h := newHandler(t, nil)
	serve := func(edit bool) http.Header {
		w := httptest.NewRecorder()
		req := httptest.NewRequest("GET", "/", nil)
		req.Header.Set("Origin", "https://app.example")
		err := h.ServeHTTP(w, req, nextFunc(func(w http.ResponseWriter, _ *http.Request) error {
			if edit {
				w.Header()["Access-Control-Expose-Headers"][0] = "mutated"
				w.Header()["Access-Control-Allow-Origin"][0] = "mutated"
			}
			return nil
		}))
		if err != nil {
			t.Fatal(err)
		}
		return w.Header()
	}
	serve(true)
	got := serve(false)
	if got.Get("Access-Control-Allow-Origin") != "*" || got.Get("Access-Control-Expose-Headers") != h.expose {
		t.Errorf("an earlier response's edit leaked: %v", got)
	}
}

// TestUpstreamCORSNotDoubledWithoutOrigin: a request without Origin (a bot,
// curl) under origins * still gets one Access-Control-Allow-Origin when
// the next handler adds its own, as a proxy copying GitHub's headers does.
func TestUpstreamCORSNotDoubledWithoutOrigin(t *testing.T) {
	t.Parallel()
	h := newHandler(t, nil)
	w := httptest.NewRecorder()
	r := httptest.NewRequest("GET", "/proxy/github/user", nil)
	err := h.ServeHTTP(w, r, nextFunc(func(w http.ResponseWriter, _ *http.Request) error {
		w.Header().Add("Access-Control-Allow-Origin", "*")
		w.Header().Add("Access-Control-Allow-Credentials", "true")
		_, err := w.Write([]byte("x"))
		return err
	}))
	if err != nil {
		t.Fatal(err)
	}
	if v := w.Header().Values("Access-Control-Allow-Origin"); len(v) != 1 || v[0] != "*" {
		t.Errorf("Access-Control-Allow-Origin = %q, want exactly [*]", v)
	}
	if v := w.Header().Values("Access-Control-Allow-Credentials"); len(v) != 0 {
		t.Errorf("credentials with *: %q", v)
	}
}

func runPreflight(t *testing.T, h *Handler, path string, requested ...string) *httptest.ResponseRecorder {
	t.Helper()
	w := httptest.NewRecorder()
	r := httptest.NewRequest("OPTIONS", path, nil)
	r.Header.Set("Origin", "https://app.example")
	r.Header.Set("Access-Control-Request-Method", "GET")
	for _, v := range requested {
		r.Header.Add("Access-Control-Request-Headers", v)
	}
	if err := h.ServeHTTP(w, r, nextFunc(func(http.ResponseWriter, *http.Request) error {
		t.Error("a preflight went on to the next handler")
		return nil
	})); err != nil {
		t.Fatal(err)
	}
	return w
}

// TestPreflightAllowsRequestedHeaders: without configured headers, a
// preflight allows the defaults plus the valid header names asked for
// (octokit's If-None-Match and X-GitHub-Api-Version); configured headers
// are exactly what is allowed; the management API keeps the list.
func TestPreflightAllowsRequestedHeaders(t *testing.T) {
	t.Parallel()
	const defaults = "Authorization, X-API-Key, Content-Type, X-Requested-With"
	h := newHandler(t, nil)
	cases := []struct {
		requested []string
		want      string
	}{
		{nil, defaults},
		{[]string{"authorization, x-api-key, content-type"}, defaults},
		{[]string{"authorization,if-none-match,x-github-api-version"}, defaults + ", if-none-match, x-github-api-version"},
		{[]string{"if-none-match", "X-GitHub-Api-Version, IF-NONE-MATCH"}, defaults + ", if-none-match, X-GitHub-Api-Version"},
		{[]string{"bad header, x(y), x-ok, , \"q\", x\ty"}, defaults + ", x-ok"},
		{[]string{strings.Repeat("x", 200) + ", x-ok"}, defaults + ", x-ok"},
	}
	for _, c := range cases {
		w := runPreflight(t, h, "/proxy/github/user", c.requested...)
		if w.Code != 204 {
			t.Fatalf("%q: status %d", c.requested, w.Code)
		}
		if got := w.Header().Values("Access-Control-Allow-Headers"); len(got) != 1 || got[0] != c.want {
			t.Errorf("%q: Access-Control-Allow-Headers %q, want %q", c.requested, got, c.want)
		}
		if !slices.Contains(w.Header().Values("Vary"), "Access-Control-Request-Headers") {
			t.Errorf("%q: no Vary: Access-Control-Request-Headers", c.requested)
		}
	}
	var many []string
	for i := range 100 {
		many = append(many, "x-h"+strconv.Itoa(i))
	}
	got := runPreflight(t, h, "/proxy/x/y", strings.Join(many, ",")).Header().Get("Access-Control-Allow-Headers")
	if n := strings.Count(got, ","); n != 3+maxRequestedHeaders {
		t.Errorf("%d names allowed for 100 requested, want the %d defaults + %d", n+1, 4, maxRequestedHeaders)
	}

	configured := newHandler(t, &gateway.CORSConfig{AllowHeaders: []string{"Authorization", "X-Custom"}})
	if got := runPreflight(t, configured, "/proxy/x/y", "if-none-match").Header().Get("Access-Control-Allow-Headers"); got != "Authorization, X-Custom" {
		t.Errorf("configured headers: %q", got)
	}
	if got := runPreflight(t, h, "/manage/services", "if-none-match").Header().Get("Access-Control-Allow-Headers"); got != defaults {
		t.Errorf("management preflight with a key: %q, want the list only", got)
	}
}

// TestManagementWithoutKeyHasNoCORS: while the management scope has no
// key, /manage/* gets no CORS headers and its preflights are refused.
func TestManagementWithoutKeyHasNoCORS(t *testing.T) {
	t.Parallel()
	for _, c := range []*gateway.CORSConfig{nil, {Origins: []string{"https://app.example"}}} {
		h := newHandler(t, c)
		h.manageKeyless = true
		for _, p := range []string{"/manage/services/payments", "/manage", "/MANAGE/services", "/proxy/../manage/services"} {
			w := httptest.NewRecorder()
			r := httptest.NewRequest("OPTIONS", p, nil)
			r.Header.Set("Origin", "https://app.example")
			r.Header.Set("Access-Control-Request-Method", "PUT")
			if err := h.ServeHTTP(w, r, nextFunc(func(http.ResponseWriter, *http.Request) error {
				t.Errorf("%s: preflight went on", p)
				return nil
			})); err != nil {
				t.Fatal(err)
			}
			if w.Code != 403 || !strings.Contains(w.Body.String(), `"error"`) || len(w.Header().Values("Access-Control-Allow-Origin")) != 0 {
				t.Errorf("%s preflight: %d %v %s", p, w.Code, w.Header(), w.Body)
			}

			w = httptest.NewRecorder()
			r = httptest.NewRequest("GET", p, nil)
			r.Header.Set("Origin", "https://app.example")
			called := false
			if err := h.ServeHTTP(w, r, nextFunc(func(w http.ResponseWriter, _ *http.Request) error {
				called = true
				_, err := w.Write([]byte("{}"))
				return err
			})); err != nil {
				t.Fatal(err)
			}
			for k := range w.Header() {
				if strings.HasPrefix(k, "Access-Control-") {
					t.Errorf("%s: %s on a keyless management answer", p, k)
				}
			}
			if !called {
				t.Errorf("%s: GET did not go on", p)
			}
		}
		// The rest of the gateway keeps its CORS.
		if w := runPreflight(t, h, "/proxy/github/user"); w.Code != 204 {
			t.Errorf("proxy preflight: %d", w.Code)
		}
	}
}
