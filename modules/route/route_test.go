package route

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

type mwFunc func(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error

func (f mwFunc) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	return f(w, r, next)
}

// record appends its name to the response header "Order" and goes on.
func record(name string) caddyhttp.MiddlewareHandler {
	return mwFunc(func(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
		w.Header().Add("Order", name)
		return next.ServeHTTP(w, r)
	})
}

func TestChainRunsInOrder(t *testing.T) {
	last := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.Header().Add("Order", "last")
		return nil
	})
	h := chain(last, record("a"), record("b"), record("c"))
	for range 2 { // built once, used many times
		w := httptest.NewRecorder()
		if err := h.ServeHTTP(w, httptest.NewRequest("GET", "/", nil)); err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(w.Header().Values("Order"), ","); got != "a,b,c,last" {
			t.Fatalf("order %q", got)
		}
	}
}

func TestPanicBecomesJSON500(t *testing.T) {
	core, logs := observer.New(zapcore.ErrorLevel)
	h := &Handler{
		logger:   zap.New(core),
		cors:     record("cors"),
		dispatch: caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { panic("boom") }),
	}
	w := httptest.NewRecorder()
	if err := h.ServeHTTP(w, httptest.NewRequest("GET", "/proxy/x/y", nil), nil); err != nil {
		t.Fatal(err)
	}
	var body map[string]string
	if w.Code != 500 || json.Unmarshal(w.Body.Bytes(), &body) != nil || body["error"] != "Internal Server Error" {
		t.Fatalf("got %d %q, want a JSON 500", w.Code, w.Body.String())
	}
	if strings.Contains(w.Body.String(), "boom") {
		t.Error("the panic value must not reach the client")
	}
	if logs.Len() != 1 || logs.All()[0].ContextMap()["panic"] != "boom" {
		t.Errorf("want one error log line with the panic, got %v", logs.All())
	}
}

func TestAbortHandlerStillAborts(t *testing.T) {
	h := &Handler{
		logger:   zap.NewNop(),
		cors:     record("cors"),
		dispatch: caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { panic(http.ErrAbortHandler) }),
	}
	defer func() {
		if rec := recover(); rec != http.ErrAbortHandler {
			t.Fatalf("recovered %v, want http.ErrAbortHandler passed on", rec)
		}
	}()
	_ = h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil), nil)
}
