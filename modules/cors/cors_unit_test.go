package cors

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/byteproxy/byteproxy/modules/gateway"
)

func newHandler(t testing.TB, c *gateway.CORSConfig) *Handler {
	t.Helper()
	h := new(Handler)
	if err := h.setup(c, zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	return h
}

type nextFunc func(http.ResponseWriter, *http.Request) error

func (f nextFunc) ServeHTTP(w http.ResponseWriter, r *http.Request) error { return f(w, r) }

func TestSetupRejectsNonOrigins(t *testing.T) {
	t.Parallel()
	for _, o := range []string{"app.example.com", "https://app.example.com/path", "ftp://x", "https://user@x.example", "https://x.example?q"} {
		err := new(Handler).setup(&gateway.CORSConfig{Origins: []string{o}}, zap.NewNop())
		if err == nil || !strings.Contains(err.Error(), "cors origins") {
			t.Errorf("%q: want an error naming cors origins, got %v", o, err)
		}
	}
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
