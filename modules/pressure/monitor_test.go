package pressure

// In-process tests of the monitor, the handler and Up. They share the
// package's monitor, so none of them runs in parallel with another.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/byteproxy/byteproxy/internal/metrics"
	"github.com/byteproxy/byteproxy/modules/gateway"
)

func testSettings(t testing.TB, c gateway.PressureConfig) *settings {
	t.Helper()
	if c.Interval == 0 {
		c.Interval = caddy.Duration(10 * time.Millisecond)
	}
	s := mustResolve(t, &c)
	s.metrics = new(metrics.Recorder)
	s.logger = zap.NewNop()
	return s
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitGoroutines waits until no more than want goroutines are alive.
func waitGoroutines(t testing.TB, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > want {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines, want <= %d:\n%s", runtime.NumGoroutine(), want, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// openMonitor opens the process's monitor for a test.
func openMonitor(t *testing.T) *Monitor {
	t.Helper()
	m, err := Open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}

func TestMonitorLeases(t *testing.T) {
	mon := openMonitor(t)
	base := runtime.NumGoroutine()
	a := testSettings(t, gateway.PressureConfig{})
	la := mon.acquire(a)
	if snap := mon.snap.Load(); snap == nil || snap.s != a || snap.heap == 0 {
		t.Fatalf("acquire did not publish a first snapshot: %+v", snap)
	}

	// A newer config's settings apply at once...
	b := testSettings(t, gateway.PressureConfig{MaxHeap: 1})
	lb := mon.acquire(b)
	waitFor(t, "the newer settings", func() bool {
		s := mon.snap.Load()
		return s.s == b && s.exceeded != nil && s.exceeded.Type == TypeHeap
	})
	// ...and when it goes away (a failed reload), the older ones return.
	mon.release(lb)
	waitFor(t, "the older settings", func() bool {
		s := mon.snap.Load()
		return s.s == a && s.exceeded == nil
	})
	mon.release(la)
	if mon.snap.Load() != nil {
		t.Fatal("snapshot survives the last lease")
	}
	waitGoroutines(t, base)

	// Reloads: new lease first, then the old one released.
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer srv.Close()
	base = runtime.NumGoroutine()
	old := mon.acquire(a)
	for i := range 25 {
		s := testSettings(t, gateway.PressureConfig{
			HealthCheckURL:      srv.URL,
			HealthCheckInterval: caddy.Duration(time.Duration(10+i) * time.Millisecond),
		})
		l := mon.acquire(s)
		mon.release(old)
		old = l
	}
	waitFor(t, "the last settings", func() bool { return mon.snap.Load().s == old.s })
	mon.release(old)
	waitGoroutines(t, base)
}

func TestMonitorHealthCheck(t *testing.T) {
	mon := openMonitor(t)
	base := runtime.NumGoroutine()
	var status atomic.Int32
	status.Store(http.StatusOK)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(int(status.Load()))
	}))
	s := testSettings(t, gateway.PressureConfig{HealthCheckURL: srv.URL, HealthCheckInterval: caddy.Duration(10 * time.Millisecond)})
	l := mon.acquire(s)
	waitFor(t, "a first healthy probe", func() bool { return mon.snap.Load().healthCode == 200 })
	if e := mon.snap.Load().exceeded; e != nil {
		t.Fatalf("healthy dependency: %+v", e)
	}

	status.Store(http.StatusInternalServerError)
	waitFor(t, "healthCheck 500", func() bool {
		e := mon.snap.Load().exceeded
		return e != nil && e.Type == TypeHealthCheck && e.Value == 500
	})
	srv.Close()
	waitFor(t, "healthCheck unreachable", func() bool {
		e := mon.snap.Load().exceeded
		return e != nil && e.Type == TypeHealthCheck && e.Value == 0
	})
	if ok, typ := mon.UnderPressure(); !ok || typ != TypeHealthCheck {
		t.Errorf("UnderPressure = %v, %q", ok, typ)
	}
	mon.release(l)
	waitGoroutines(t, base)
}

func TestUp(t *testing.T) {
	mon := openMonitor(t)
	// Without a handler, Up measures once.
	code, body := mon.Up()
	b := body.(UpBody)
	if code != 200 || b.Status != "ok" || b.HeapUsed == 0 || b.Goroutines == 0 || !b.Healthy {
		t.Fatalf("Up without a monitor: %d %+v", code, b)
	}

	l := mon.acquire(testSettings(t, gateway.PressureConfig{MaxHeap: 1}))
	code, body = mon.Up()
	raw, _ := json.Marshal(body)
	var m map[string]any
	_ = json.Unmarshal(raw, &m)
	for _, k := range []string{"status", "eventLoopDelay", "heapUsed", "rssBytes", "eventLoopUtilized", "healthy", "goroutines", "inFlight", "exceeded"} {
		if _, ok := m[k]; !ok {
			t.Errorf("/up body lacks %q: %s", k, raw)
		}
	}
	if code != 200 || m["status"] != "under_pressure" || m["exceeded"].(map[string]any)["type"] != TypeHeap {
		t.Errorf("under pressure: %d %s", code, raw)
	}
	if ok, typ := mon.UnderPressure(); !ok || typ != TypeHeap {
		t.Errorf("UnderPressure = %v, %q", ok, typ)
	}
	mon.release(l)

	// The in-flight cap counts as pressure once it is reached.
	l = mon.acquire(testSettings(t, gateway.PressureConfig{MaxInFlight: 1}))
	defer mon.release(l)
	if ok, _ := mon.UnderPressure(); ok {
		t.Fatal("calm process under pressure")
	}
	mon.inFlight.Add(1)
	defer mon.inFlight.Add(-1)
	_, body = mon.Up()
	if b := body.(UpBody); b.Status != "under_pressure" || b.Exceeded.Type != TypeInFlight || b.InFlight != 1 {
		t.Errorf("at the in-flight cap: %+v", b)
	}
}

// TestHandler drives ServeHTTP directly with a fake next handler.
func TestHandler(t *testing.T) {
	mon := openMonitor(t)
	h := &Handler{app: new(gateway.App), mon: mon, logger: zap.NewNop()}
	serve := func(path string) (*httptest.ResponseRecorder, bool) {
		called := false
		next := nextFunc(func(http.ResponseWriter, *http.Request) error { called = true; return nil })
		w := httptest.NewRecorder()
		if err := h.ServeHTTP(w, httptest.NewRequest("GET", path, nil), next); err != nil {
			t.Fatal(err)
		}
		return w, called
	}

	l := mon.acquire(testSettings(t, gateway.PressureConfig{MaxHeap: 1, RetryAfter: caddy.Duration(3 * time.Second)}))
	w, called := serve("/proxy/x/y")
	var body map[string]any
	_ = json.Unmarshal(w.Body.Bytes(), &body)
	if called || w.Code != 503 || w.Header().Get("Retry-After") != "3" || body["error"] != "Server under pressure" ||
		body["type"] != TypeHeap || body["value"].(float64) <= 1 || body["message"] == "" {
		t.Errorf("over max_heap: called=%v %d %v %s", called, w.Code, w.Header(), w.Body)
	}
	for _, p := range []string{"/up", "/health", "/ready"} {
		if _, called := serve(p); !called {
			t.Errorf("%s was shed", p)
		}
	}
	mon.release(l)

	l = mon.acquire(testSettings(t, gateway.PressureConfig{Disabled: true, MaxHeap: 1}))
	if _, called := serve("/proxy/x/y"); !called {
		t.Error("pressure off still sheds")
	}
	mon.release(l)
}

type nextFunc func(http.ResponseWriter, *http.Request) error

func (f nextFunc) ServeHTTP(w http.ResponseWriter, r *http.Request) error { return f(w, r) }

// TestReserve: what requests hold at once stays within the reservable
// share; a lone request is always admitted; release is idempotent;
// `pressure off` admits everything (issue 15.2).
func TestReserve(t *testing.T) {
	mon := openMonitor(t)
	l := mon.acquire(testSettings(t, gateway.PressureConfig{MaxHeap: 8 << 20})) // reservable 1 MiB
	defer mon.release(l)
	const kib = 1 << 10
	r1, ok := mon.Reserve(600 * kib)
	if !ok {
		t.Fatal("the first reservation was refused")
	}
	if _, ok := mon.Reserve(600 * kib); ok {
		t.Fatal("1.2 MiB reserved against 1 MiB")
	}
	r2, ok := mon.Reserve(400 * kib)
	if !ok {
		t.Fatal("1000 KiB refused against 1 MiB")
	}
	r1()
	r1() // a second release gives back nothing
	if got := mon.reserved.Load(); got != 400*kib {
		t.Fatalf("reserved %d after releasing 600 KiB twice, want %d", got, 400*kib)
	}
	r2()
	big, ok := mon.Reserve(4 << 20)
	if !ok {
		t.Fatal("a lone 4 MiB reservation was refused")
	}
	big()

	off := mon.acquire(testSettings(t, gateway.PressureConfig{Disabled: true, MaxHeap: 8 << 20}))
	hold, _ := mon.Reserve(1 << 20)
	if _, ok := mon.Reserve(1 << 30); !ok {
		t.Error("pressure off refused a reservation")
	}
	hold()
	mon.release(off)
	if got := mon.reserved.Load(); got != 0 {
		t.Errorf("reserved %d after every release", got)
	}
}

// TestRefuse: the 503 of a refused reservation reaches a client that is
// still sending a large body, every time, and the server reads the rest of
// the body only to drop it (no client sees a reset connection).
func TestRefuse(t *testing.T) {
	mon := openMonitor(t)
	l := mon.acquire(testSettings(t, gateway.PressureConfig{}))
	defer mon.release(l)
	var discarded atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = countingBody{r.Body, &discarded}
		_ = mon.Refuse(w, r, 1<<20)
	}))
	defer srv.Close()
	body := bytes.Repeat([]byte("x"), 1<<20)
	for i := range 20 {
		resp, err := srv.Client().Post(srv.URL, "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var got map[string]any
		_ = json.Unmarshal(raw, &got)
		if resp.StatusCode != 503 || resp.Header.Get("Retry-After") != "1" || got["error"] != "Server under pressure" ||
			got["type"] != TypeReserved || !strings.Contains(got["message"].(string), "Retry in 1 second") {
			t.Fatalf("refusal: %d %v %s", resp.StatusCode, resp.Header, raw)
		}
	}
	if discarded.Load() == 0 {
		t.Error("no body was read after the answer")
	}
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (c countingBody) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// TestReady: /ready is 200 when calm, 503 with Retry-After while a
// threshold is exceeded, at the in-flight cap, and while the health check
// fails, even with pressure off (issue 15.5); /up stays 200 throughout.
func TestReady(t *testing.T) {
	mon := openMonitor(t)
	check := func(name string, wantStatus int, wantType string) {
		t.Helper()
		status, retryAfter, b := mon.Ready()
		if upStatus, _ := mon.Up(); upStatus != 200 {
			t.Errorf("%s: /up %d, want 200 (liveness)", name, upStatus)
		}
		if status != wantStatus {
			t.Errorf("%s: /ready %d, want %d: %+v", name, status, wantStatus, b)
			return
		}
		if wantStatus == 200 {
			if retryAfter != "" || b.Status != "ok" || b.Exceeded != nil {
				t.Errorf("%s: ready, yet Retry-After %q, body %+v", name, retryAfter, b)
			}
			return
		}
		if retryAfter != "7" || b.Status != "under_pressure" || b.Exceeded == nil || b.Exceeded.Type != wantType {
			t.Errorf("%s: Retry-After %q, body %+v, want 7 and %s", name, retryAfter, b, wantType)
		}
	}
	retry := caddy.Duration(7 * time.Second)

	l := mon.acquire(testSettings(t, gateway.PressureConfig{RetryAfter: retry, MaxInFlight: 1}))
	check("calm", 200, "")
	mon.inFlight.Add(1)
	check("at max_in_flight", 503, TypeInFlight)
	mon.inFlight.Add(-1)
	mon.release(l)

	l = mon.acquire(testSettings(t, gateway.PressureConfig{RetryAfter: retry, MaxHeap: 1}))
	check("over max_heap", 503, TypeHeap)
	mon.release(l)

	var status atomic.Int32
	status.Store(http.StatusServiceUnavailable)
	dep := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(int(status.Load())) }))
	defer dep.Close()
	for _, off := range []bool{false, true} {
		l = mon.acquire(testSettings(t, gateway.PressureConfig{Disabled: off, RetryAfter: retry, HealthCheckURL: dep.URL, HealthCheckInterval: caddy.Duration(10 * time.Millisecond)}))
		waitFor(t, "a failing probe", func() bool { return mon.snap.Load().healthCode == http.StatusServiceUnavailable })
		check(fmt.Sprintf("health check failing, pressure off %v", off), 503, TypeHealthCheck)
		status.Store(http.StatusOK)
		waitFor(t, "a passing probe", func() bool { return mon.snap.Load().healthCode == http.StatusOK })
		check(fmt.Sprintf("health check passing, pressure off %v", off), 200, "")
		status.Store(http.StatusServiceUnavailable)
		mon.release(l)
	}
}
