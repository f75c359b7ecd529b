package pressure_test

// Integration tests with tiny thresholds: the real byteproxy binary where
// the test reads the process (goroutines, heap, GOGC), else the gateway in
// the test process (testutil.InProcess), which also runs under -short.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/byteproxy/byteproxy"
	"github.com/byteproxy/byteproxy/internal/testutil"
)

// client opens a new connection per request, so that no idle keep-alive
// connection holds a server goroutine during the leak test.
var client = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 30 * time.Second}

type result struct {
	status int
	header http.Header
	body   map[string]any
	raw    string
}

func get(t testing.TB, url string) result {
	t.Helper()
	r, err := tryGet(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return r
}

func tryGet(url string) (result, error) {
	resp, err := client.Get(url)
	if err != nil {
		return result{}, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	r := result{status: resp.StatusCode, header: resp.Header, raw: string(b)}
	_ = json.Unmarshal(b, &r.body)
	return r, nil
}

// until polls url until check accepts the answer, for at most 20s.
func until(t testing.TB, in *testutil.Instance, url, what string, check func(result) bool) result {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var r result
	var err error
	for time.Now().Before(deadline) {
		// A connection error is "not yet": right after a reload the old
		// server closes its idle keep-alive connections, and a GET that
		// picked one up meets EOF (CI saw it once).
		if r, err = tryGet(url); err == nil && check(r) {
			return r
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s; last answer %d %s (error %v)\nlogs:\n%s", what, r.status, r.raw, err, in.Logs())
	return r
}

func shedBy(typ string) func(result) bool {
	return func(r result) bool { return r.status == 503 && r.body["type"] == typ }
}

// site composes the pressure handler with fixed answers; /up and /health
// stand in for manage's endpoints.
const site = `
:{{PORT}} {
	route {
		byteproxy_pressure
		respond /up "up" 200
		respond /health "health" 200
		respond "ok" 200
	}
}
`

func pressureConfig(lines string) string {
	return "{\n\tbyteproxy {\n\t\tpressure " + lines + "\n\t}\n}\n" + site
}

// TestShedsEachThreshold triggers every sampled threshold with a tiny
// limit and checks the 503, Retry-After, and that /up and /health are
// never shed.
func TestShedsEachThreshold(t *testing.T) {
	closed := testutil.FreePort(t) // nothing listens here
	// Every other threshold is set far out of reach, so only the one
	// under test can fire on a loaded machine.
	const calm = "max_heap 64GiB\n max_rss 64GiB\n max_sched_latency 1h\n max_cpu 1\n"
	tests := []struct {
		name, typ, line string
		value           func(float64) bool
	}{
		{"heap", "heapUsed", "max_heap 1KiB", func(v float64) bool { return v > 1024 }},
		{"rss", "rssBytes", "max_rss 1KiB", func(v float64) bool { return v > 1<<20 }},
		{"scheduler latency", "eventLoopDelay", "max_sched_latency 1ns", func(v float64) bool { return v > 0 }},
		{"cpu", "cpu", "max_cpu 0.000001", func(v float64) bool { return v > 0.000001 }},
		{"health check", "healthCheck", fmt.Sprintf("health_check http://127.0.0.1:%d/ 50ms", closed), func(v float64) bool { return v == 0 }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			in := testutil.Start(t, pressureConfig("{\n"+calm+tc.line+"\n interval 50ms\n retry_after 7s\n}"), testutil.Options{})
			r := until(t, in, in.URL("/proxy/x/y"), tc.typ, shedBy(tc.typ))
			if r.body["error"] != "Server under pressure" || r.header.Get("Retry-After") != "7" ||
				!strings.HasPrefix(r.header.Get("Content-Type"), "application/json") {
				t.Errorf("503: %v %s", r.header, r.raw)
			}
			if v, ok := r.body["value"].(float64); !ok || !tc.value(v) {
				t.Errorf("value %v is implausible for %s", r.body["value"], tc.typ)
			}
			if msg, _ := r.body["message"].(string); !strings.Contains(msg, "Retry in 7 seconds") {
				t.Errorf("message %q", msg)
			}
			for _, p := range []string{"/up", "/health"} {
				if r := get(t, in.URL(p)); r.status != 200 {
					t.Errorf("%s shed under pressure: %d %s", p, r.status, r.raw)
				}
			}
		})
	}
}

// TestHealthCheckRecovers: a dependency that fails and recovers sheds and
// stops shedding.
func TestHealthCheckRecovers(t *testing.T) {
	var mu sync.Mutex
	status := 200
	dep := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		w.WriteHeader(status)
	}))
	defer dep.Close()
	setStatus := func(s int) { mu.Lock(); status = s; mu.Unlock() }

	in := testutil.InProcess(t, pressureConfig("{\n health_check "+dep.URL+"/ready 50ms\n interval 50ms\n}"), testutil.Options{})
	if r := get(t, in.URL("/proxy/x/y")); r.status != 200 {
		t.Fatalf("healthy dependency: %d %s", r.status, r.raw)
	}
	setStatus(500)
	r := until(t, in, in.URL("/proxy/x/y"), "healthCheck", shedBy("healthCheck"))
	if r.body["value"] != 500.0 {
		t.Errorf("value %v, want the probe's status 500", r.body["value"])
	}
	setStatus(204)
	until(t, in, in.URL("/proxy/x/y"), "recovery", func(r result) bool { return r.status == 200 })
}

// TestPressureOffAndReload: `pressure off` stops shedding at once after a
// reload, and turning it on again sheds again.
func TestPressureOffAndReload(t *testing.T) {
	on := pressureConfig("{\n max_heap 1KiB\n interval 50ms\n}")
	off := pressureConfig("off {\n max_heap 1KiB\n interval 50ms\n}")
	// A process of its own: in process, a connection was once reset
	// right after the load (not understood yet).
	in := testutil.Start(t, on, testutil.Options{})
	until(t, in, in.URL("/proxy/x/y"), "heapUsed", shedBy("heapUsed"))
	in.Reload(off)
	until(t, in, in.URL("/proxy/x/y"), "pressure off", func(r result) bool { return r.status == 200 })
	in.Reload(on)
	until(t, in, in.URL("/proxy/x/y"), "heapUsed again", shedBy("heapUsed"))
}

// TestInFlight caps concurrent requests with an upstream that holds them
// until the test releases it.
func TestInFlight(t *testing.T) {
	arrived := make(chan struct{}, 10)
	release := make(chan struct{})
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
		}
		_, _ = io.WriteString(w, "slow")
	}))
	defer upstream.Close()
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()

	caddyfile := `{
	byteproxy {
		pressure {
			max_in_flight 2
			retry_after 3s
		}
	}
}
:{{PORT}} {
	route /proxy/* {
		byteproxy_pressure
		reverse_proxy ` + strings.TrimPrefix(upstream.URL, "http://") + `
	}
	route /manage/* {
		byteproxy_pressure
		respond "manage" 200
	}
	respond "other" 200
}
`
	in := testutil.InProcess(t, caddyfile, testutil.Options{})
	var wg sync.WaitGroup
	statuses := make(chan int, 2)
	for i := range 2 {
		wg.Go(func() {
			resp, err := client.Get(in.URL(fmt.Sprintf("/proxy/slow/%d", i)))
			if err != nil {
				statuses <- -1
				return
			}
			resp.Body.Close()
			statuses <- resp.StatusCode
		})
	}
	for range 2 {
		select {
		case <-arrived:
		case <-time.After(20 * time.Second):
			t.Fatalf("the slow requests did not reach the upstream\n%s", in.Logs())
		}
	}

	r := get(t, in.URL("/proxy/slow/third"))
	if r.status != 503 || r.body["type"] != "inFlight" || r.body["value"] != 2.0 || r.header.Get("Retry-After") != "3" {
		t.Errorf("third request over max_in_flight 2: %d %v %s", r.status, r.header, r.raw)
	}
	if r := get(t, in.URL("/manage/services")); r.status != 200 || r.raw != "manage" {
		t.Errorf("management is not counted against max_in_flight: %d %s", r.status, r.raw)
	}

	close(release)
	wg.Wait()
	close(statuses)
	for s := range statuses {
		if s != 200 {
			t.Errorf("held request: %d", s)
		}
	}
	// The slots are free again.
	if r := get(t, in.URL("/proxy/slow/after")); r.status != 200 || r.raw != "slow" {
		t.Errorf("after release: %d %s", r.status, r.raw)
	}
}

var goroutineTotal = regexp.MustCompile(`goroutine profile: total (\d+)`)

func goroutines(t testing.TB, in *testutil.Instance) int {
	t.Helper()
	r := get(t, in.AdminURL("/debug/pprof/goroutine?debug=1"))
	m := goroutineTotal.FindStringSubmatch(r.raw)
	if m == nil {
		t.Fatalf("no goroutine total in %d %.200s", r.status, r.raw)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// TestReloadsDoNotLeak reloads 25 times between two pressure configs (with
// different intervals and health checks) and checks that the goroutine
// count comes back to what it was, and that the newest settings apply.
func TestReloadsDoNotLeak(t *testing.T) {
	dep := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer dep.Close()
	calm := pressureConfig("{\n interval 20ms\n health_check " + dep.URL + "/ 30ms\n}")
	tight := pressureConfig("{\n interval 30ms\n max_heap 1KiB\n health_check " + dep.URL + "/other 40ms\n}")
	configs := []string{calm, tight}

	in := testutil.Start(t, calm, testutil.Options{})
	in.Reload(tight) // warm up whatever a first reload creates once
	in.Reload(calm)
	until(t, in, in.URL("/proxy/x/y"), "calm", func(r result) bool { return r.status == 200 })
	base := settledGoroutines(t, in, 0)

	for i := range 25 {
		in.Reload(configs[i%2])
	}
	// 25 reloads end on configs[0]: calm.
	until(t, in, in.URL("/proxy/x/y"), "the newest settings (calm)", func(r result) bool { return r.status == 200 })
	in.Reload(tight)
	until(t, in, in.URL("/proxy/x/y"), "the newest settings (tight)", shedBy("heapUsed"))
	in.Reload(calm)
	until(t, in, in.URL("/proxy/x/y"), "calm again", func(r result) bool { return r.status == 200 })

	const tolerance = 4
	if n := settledGoroutines(t, in, base+tolerance); n > base+tolerance {
		r := get(t, in.AdminURL("/debug/pprof/goroutine?debug=1"))
		t.Fatalf("goroutines: %d before 28 reloads, %d after (tolerance %d)\n%s", base, n, tolerance, r.raw)
	}
}

// settledGoroutines polls the goroutine count for a few seconds until it
// is at most want (or, with want 0, until two readings agree) and returns
// the last reading.
func settledGoroutines(t testing.TB, in *testutil.Instance, want int) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	prev := -1
	for {
		n := goroutines(t, in)
		if (want > 0 && n <= want) || (want == 0 && n == prev) || ctx.Err() != nil {
			return n
		}
		prev = n
		time.Sleep(100 * time.Millisecond)
	}
}

// TestStandardSite: in the `byteproxy` route, /up and /health report the
// pressure (never shed) while /proxy/* and /manage/* are shed.
func TestStandardSite(t *testing.T) {
	in := testutil.InProcess(t, `{
	byteproxy {
		pressure {
			max_heap 1KiB
			interval 50ms
			retry_after 5s
		}
	}
}
:{{PORT}} {
	byteproxy
}
`, testutil.Options{})
	until(t, in, in.URL("/proxy/services"), "/proxy shed", shedBy("heapUsed"))
	if r := get(t, in.URL("/manage/services")); r.status != 503 || r.body["type"] != "heapUsed" || r.header.Get("Retry-After") != "5" {
		t.Errorf("/manage/services: %d %v %s", r.status, r.header, r.raw)
	}

	r := get(t, in.URL("/up"))
	if r.status != 200 || r.body["status"] != "under_pressure" {
		t.Fatalf("/up: %d %s", r.status, r.raw)
	}
	for _, k := range []string{"eventLoopDelay", "heapUsed", "rssBytes", "eventLoopUtilized", "healthy", "goroutines", "inFlight"} {
		if _, ok := r.body[k]; !ok {
			t.Errorf("/up lacks %q: %s", k, r.raw)
		}
	}
	if ex, _ := r.body["exceeded"].(map[string]any); ex["type"] != "heapUsed" || ex["limit"] != 1024.0 {
		t.Errorf("/up exceeded: %s", r.raw)
	}
	if h, _ := r.body["heapUsed"].(float64); h <= 1024 {
		t.Errorf("/up heapUsed %v", r.body["heapUsed"])
	}

	r = get(t, in.URL("/health"))
	if r.status != 200 || !strings.Contains(r.raw, "heapUsed") {
		t.Errorf("/health under pressure: %d %s", r.status, r.raw)
	}
}

// TestSheddingStopsAfterBurst (issue 15.1): a burst of 1 MB management
// bodies leaves garbage past max_heap (or max_rss), then the gateway idles.
// The heap reading counts garbage not yet collected, and an idle process
// may not collect for two minutes, so the monitor must collect before it
// judges a memory reading: shedding stops within 2 intervals of the last
// answer of the burst. GOGC=off makes "no collection after the burst"
// certain; at the default GOGC it happens in some runs only (the heap
// after a burst sits anywhere below the next GC's goal).
func TestSheddingStopsAfterBurst(t *testing.T) {
	const interval = time.Second
	tests := []struct {
		name, limits string
		limit        uint64
	}{
		{"heap", "max_heap 48MiB\n max_rss 64GiB", 48 << 20},
		{"rss", "max_heap 64GiB\n max_rss 192MiB", 192 << 20},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			in := testutil.Start(t, `{
	byteproxy {
		pressure {
			`+tc.limits+`
			max_sched_latency 1h
			max_cpu 1
			interval 1s
			retry_after 1s
		}
	}
}
:{{PORT}} {
	byteproxy
}
`, testutil.Options{Env: []string{"GOGC=off"}})
			before := memStats(t, in)
			began := time.Now()
			decoded, shed := burst(t, in, tc.limit+64<<20)
			ended := time.Now()
			after := memStats(t, in)
			if garbage := after.TotalAlloc - before.TotalAlloc; garbage < tc.limit {
				t.Fatalf("the burst (%d bodies decoded) allocated only %d MiB, not enough to test a %d MiB limit", decoded, garbage>>20, tc.limit>>20)
			}

			// Poll /up (never shed) until the monitor judges the process calm.
			var last result
			for {
				last = get(t, in.URL("/up"))
				if last.body["status"] == "ok" {
					break
				}
				if time.Since(ended) > 5*interval {
					t.Fatalf("still shedding %s after the burst (interval %s): %s", time.Since(ended).Round(time.Millisecond), interval, last.raw)
				}
				time.Sleep(10 * time.Millisecond)
			}
			took := time.Since(ended)
			forced := memStats(t, in).NumForcedGC - before.NumForcedGC
			t.Logf("%s: burst of %s: %d 1 MB bodies decoded, %d shed, %d MiB allocated; shedding stopped %s after it (interval %s); %d forced collections; /up now heap %.0f MiB, RSS %.0f MiB",
				tc.name, ended.Sub(began).Round(time.Millisecond), decoded, shed, (after.TotalAlloc-before.TotalAlloc)>>20, took.Round(time.Millisecond), interval, forced,
				last.body["heapUsed"].(float64)/(1<<20), last.body["rssBytes"].(float64)/(1<<20))
			if took > 2*interval {
				t.Errorf("shedding stopped %s after the burst, want within 2 intervals (%s)", took, 2*interval)
			}
			if forced == 0 {
				t.Errorf("the monitor never collected, yet the heap held %d MiB of garbage", (after.TotalAlloc-before.TotalAlloc)>>20)
			}
			if r := get(t, in.URL("/manage/services")); r.status != 200 {
				t.Errorf("/manage/services after the burst: %d %s", r.status, r.raw)
			}
		})
	}
}

// burst POSTs 1 MB service bodies from 4 clients until the gateway has
// allocated at least garbage bytes (at most for 60 s). Each body that is
// admitted is decoded in full and refused for lacking a baseUrl (400). It
// returns how many bodies were decoded and how many were shed (503, or the
// connection closed before the body was sent).
func burst(t *testing.T, in *testutil.Instance, garbage uint64) (decoded, shed int64) {
	t.Helper()
	prefix, suffix := `{"key":"burst","config":{"name":"`, `"}}`
	body := []byte(prefix + strings.Repeat("x", 1<<20-len(prefix)-len(suffix)) + suffix)
	var nDecoded, nShed atomic.Int64
	var failed atomic.Value
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() {
		defer cancel()
		start := memStats(t, in).TotalAlloc
		for ctx.Err() == nil && memStats(t, in).TotalAlloc-start < garbage {
			time.Sleep(50 * time.Millisecond)
		}
	})
	for range 4 {
		wg.Go(func() {
			for ctx.Err() == nil {
				req, _ := http.NewRequest(http.MethodPost, in.URL("/manage/services"), bytes.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				resp, err := client.Do(req)
				if err != nil {
					// A shed request's body is not read: the client may see
					// the connection closed before it sent the whole body.
					nShed.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				switch resp.StatusCode {
				case http.StatusBadRequest:
					nDecoded.Add(1)
				case http.StatusServiceUnavailable:
					nShed.Add(1)
				default:
					failed.Store(fmt.Sprintf("status %d", resp.StatusCode))
					cancel()
					return
				}
			}
		})
	}
	wg.Wait()
	if f := failed.Load(); f != nil {
		t.Fatalf("burst: %v\n%s", f, in.Logs())
	}
	return nDecoded.Load(), nShed.Load()
}

// memStats reads the gateway's runtime.MemStats from the admin endpoint's
// /debug/vars.
func memStats(t *testing.T, in *testutil.Instance) runtime.MemStats {
	t.Helper()
	r := get(t, in.AdminURL("/debug/vars"))
	var vars struct {
		Memstats runtime.MemStats `json:"memstats"`
	}
	if err := json.Unmarshal([]byte(r.raw), &vars); err != nil || vars.Memstats.TotalAlloc == 0 {
		t.Fatalf("/debug/vars: %v %d %.200s", err, r.status, r.raw)
	}
	return vars.Memstats
}

// TestReadiness (issue 15.5): in the standard site, /ready answers 503
// with Retry-After while the gateway sheds load or its health check fails,
// and 200 otherwise, with /up's body; /up stays 200 (liveness) throughout,
// and the 404 body lists /ready.
func TestReadiness(t *testing.T) {
	var depStatus atomic.Int32
	depStatus.Store(http.StatusOK)
	dep := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(int(depStatus.Load()))
	}))
	defer dep.Close()
	conf := func(extra string) string {
		return `{
	byteproxy {
		pressure {
			health_check ` + dep.URL + `/ 50ms
			interval 50ms
			retry_after 4s
			` + extra + `
		}
	}
}
:{{PORT}} {
	byteproxy
}
`
	}
	in := testutil.InProcess(t, conf(""), testutil.Options{})
	upFields := []string{"status", "eventLoopDelay", "heapUsed", "rssBytes", "eventLoopUtilized", "healthy", "goroutines", "inFlight"}
	notReady := func(typ string) func(result) bool {
		return func(r result) bool {
			ex, _ := r.body["exceeded"].(map[string]any)
			return r.status == 503 && ex["type"] == typ
		}
	}
	checkNotReady := func(r result, typ string) {
		t.Helper()
		if r.header.Get("Retry-After") != "4" || r.body["status"] != "under_pressure" {
			t.Errorf("not ready (%s): %v %s", typ, r.header, r.raw)
		}
		for _, k := range upFields {
			if _, ok := r.body[k]; !ok {
				t.Errorf("/ready lacks /up's %q: %s", k, r.raw)
			}
		}
		if up := get(t, in.URL("/up")); up.status != 200 || up.body["status"] != "under_pressure" {
			t.Errorf("/up while not ready (%s): %d %s, want 200 (liveness)", typ, up.status, up.raw)
		}
	}

	r := until(t, in, in.URL("/ready"), "ready", func(r result) bool { return r.status == 200 })
	if r.header.Get("Retry-After") != "" || r.header.Get("Cache-Control") != "no-store" || r.body["status"] != "ok" || r.body["healthy"] != true {
		t.Errorf("ready: %v %s", r.header, r.raw)
	}
	for _, k := range upFields {
		if _, ok := r.body[k]; !ok {
			t.Errorf("/ready lacks /up's %q: %s", k, r.raw)
		}
	}

	depStatus.Store(http.StatusInternalServerError)
	r = until(t, in, in.URL("/ready"), "not ready: health check", notReady("healthCheck"))
	checkNotReady(r, "healthCheck")
	depStatus.Store(http.StatusOK)
	until(t, in, in.URL("/ready"), "ready again", func(r result) bool { return r.status == 200 })

	in.Reload(conf("max_heap 1KiB"))
	r = until(t, in, in.URL("/ready"), "not ready: shedding", notReady("heapUsed"))
	checkNotReady(r, "heapUsed")
	if p := get(t, in.URL("/proxy/services")); p.status != 503 {
		t.Errorf("/ready says shedding, /proxy/services answers %d", p.status)
	}
	resp, err := client.Head(in.URL("/ready"))
	if err != nil || resp.StatusCode != 503 || resp.Header.Get("Retry-After") != "4" {
		t.Errorf("HEAD /ready while shedding: %v %v", resp, err)
	}
	if resp, err := client.Post(in.URL("/ready"), "application/json", nil); err != nil || resp.StatusCode != 405 {
		t.Errorf("POST /ready: %v %v", resp, err)
	}

	nf := get(t, in.URL("/nope"))
	if nf.status != 404 || !strings.Contains(nf.raw, `"GET /ready"`) {
		t.Errorf("the 404 body does not list /ready: %s", nf.raw)
	}
}
