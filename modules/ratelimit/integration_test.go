package ratelimit

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/byteproxy/byteproxy/internal/testutil"
	"github.com/byteproxy/byteproxy/internal/testutil/redistest"
)

// gatewayConfig is a Caddyfile whose /proxy/* route is the rate limiter in
// front of a plain "ok", so successes can be counted without an upstream.
// X-Client stands in for the key id that byteproxy_auth sets; requests
// without it are limited by client IP, taken from X-Forwarded-For because
// loopback is a trusted proxy.
func gatewayConfig(global string) string {
	return gatewayConfigWith(global, "")
}

// gatewayConfigWith adds site routes (e.g. manage's /status) to gatewayConfig.
func gatewayConfigWith(global, routes string) string {
	return `{
	servers {
		trusted_proxies static 127.0.0.1/32
		client_ip_headers X-Forwarded-For
	}
	byteproxy {
` + global + `
	}
}
:{{PORT}} {
` + routes + `
	route /proxy/* {
		vars byteproxy.client {header.X-Client}
		byteproxy_ratelimit
		respond "ok" 200
	}
}
`
}

type result struct {
	status int
	header http.Header
	body   []byte
}

var burstClient = &http.Client{
	Transport: &http.Transport{MaxIdleConnsPerHost: 400},
	Timeout:   30 * time.Second,
}

// burst sends n concurrent GETs, request i to urls[i%len(urls)] with the
// headers of hdr(i).
func burst(t *testing.T, urls []string, n int, hdr func(i int) []string) []result {
	t.Helper()
	out := make([]result, n)
	errs := make(chan error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest(http.MethodGet, urls[i%len(urls)], nil)
			if hdr != nil {
				h := hdr(i)
				for j := 0; j+1 < len(h); j += 2 {
					req.Header.Set(h[j], h[j+1])
				}
			}
			<-start
			resp, err := burstClient.Do(req)
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			out[i] = result{resp.StatusCode, resp.Header, b}
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return out
}

func count(rs []result, status int) int {
	n := 0
	for _, r := range rs {
		if r.status == status {
			n++
		}
	}
	return n
}

func get(t *testing.T, url string, headers ...string) result {
	t.Helper()
	resp, body := testutil.Do(t, http.MethodGet, url, nil, headers...)
	return result{resp.StatusCode, resp.Header, body}
}

func decode(t *testing.T, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("body is not JSON: %v\n%s", err, b)
	}
	return m
}

func headerInt(t *testing.T, h http.Header, name string) int {
	t.Helper()
	v := h.Get(name)
	n, err := strconv.Atoi(v)
	if err != nil {
		t.Fatalf("header %s = %q, want an integer (headers: %v)", name, v, h)
	}
	return n
}

func TestServiceLimitExactUnderConcurrency(t *testing.T) {
	in := testutil.Start(t, gatewayConfig(`
		service x {
			base_url http://127.0.0.1:1/
			rate_limit 100 1m
		}`), testutil.Options{})

	rs := burst(t, []string{in.URL("/proxy/x/some/path")}, 300, func(i int) []string {
		return []string{"X-Client", fmt.Sprint("c", i)}
	})
	if ok, refused := count(rs, 200), count(rs, 429); ok != 100 || refused != 200 {
		t.Fatalf("%d successes and %d refusals, want exactly 100 and 200\n%s", ok, refused, in.Logs())
	}

	seen := map[int]bool{}
	for _, r := range rs {
		noXRateLimit(t, r.header)
		if q, w := limitPolicy(t, r.header, "service"); q != 100 || w != 60 {
			t.Fatalf("RateLimit-Policy %q, want q=100;w=60", r.header.Get("RateLimit-Policy"))
		}
		remaining, reset := limitState(t, r.header, "service")
		if reset < 1 || reset > 60 {
			t.Fatalf("RateLimit %q, want t in 1..60", r.header.Get("RateLimit"))
		}
		if r.status == 200 {
			seen[remaining] = true
			if r.header.Get("Retry-After") != "" {
				t.Fatal("Retry-After on a success")
			}
			continue
		}
		checkServiceRefusal(t, r, "x", "/some/path", 60)
	}
	for i := range 100 {
		if !seen[i] {
			t.Fatalf("no success reported %d remaining: the 100 successes must count down 99..0 exactly (seen %v)", i, seen)
		}
	}

	// Only known services are limited.
	for _, p := range []string{"/proxy/nope/x", "/proxy/x"} {
		if r := get(t, in.URL(p)); r.status != 200 || r.header.Get("RateLimit-Policy") != "" {
			t.Fatalf("%s: status %d, RateLimit-Policy %q; want passed through unlimited", p, r.status, r.header.Get("RateLimit-Policy"))
		}
	}
}

var resetIn = regexp.MustCompile(`^Rate limit exceeded for (\S+)\. Reset in (\d+) seconds\.$`)

func checkServiceRefusal(t *testing.T, r result, service, path string, window int) {
	t.Helper()
	if remaining, _ := limitState(t, r.header, "service"); remaining != 0 {
		t.Fatalf("429 with RateLimit %q, want r=0", r.header.Get("RateLimit"))
	}
	retry := headerInt(t, r.header, "Retry-After")
	if retry < 1 || retry > window {
		t.Fatalf("Retry-After %d, want 1..%d", retry, window)
	}
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Fatalf("429 Content-Type %q", ct)
	}
	m := decode(t, r.body)
	sm := resetIn.FindStringSubmatch(fmt.Sprint(m["error"]))
	if sm == nil || sm[1] != service || sm[2] != strconv.Itoa(retry) {
		t.Fatalf("429 error %q, want 'Rate limit exceeded for %s. Reset in %d seconds.'", m["error"], service, retry)
	}
	if m["service"] != service || m["path"] != path {
		t.Fatalf("429 body %s: want service %q and path %q", r.body, service, path)
	}
	ts, _ := m["troubleshooting"].(map[string]any)
	if ts["hint"] == "" || ts["hint"] == nil || !strings.HasPrefix(fmt.Sprint(ts["documentation"]), "https://") {
		t.Fatalf("429 troubleshooting %v", m["troubleshooting"])
	}
}

func TestRateLimitEndpoint(t *testing.T) {
	in := testutil.Start(t, gatewayConfig(`
		service x {
			base_url http://127.0.0.1:1/
			rate_limit 5 1m
		}
		service y {
			base_url http://127.0.0.1:1/
		}`), testutil.Options{})
	info := func() map[string]any {
		r := get(t, in.URL("/proxy/services/x/rate-limit"))
		if r.status != 200 {
			t.Fatalf("rate-limit endpoint: %d %s", r.status, r.body)
		}
		return decode(t, r.body)
	}

	m := info()
	if m["service"] != "x" || m["limit"] != 5.0 || m["remaining"] != 5.0 || m["resetTime"] != 0.0 || m["resetIn"] != 0.0 {
		t.Fatalf("before any request: %v", m)
	}
	before := time.Now()
	for range 2 {
		if r := get(t, in.URL("/proxy/x/a")); r.status != 200 {
			t.Fatalf("request: %d %s", r.status, r.body)
		}
	}
	for range 2 { // reading does not count
		m = info()
		reset := time.UnixMilli(int64(m["resetTime"].(float64)))
		if m["remaining"] != 2.0+1 || reset.Before(before.Add(59*time.Second)) || reset.After(time.Now().Add(time.Minute)) {
			t.Fatalf("after 2 requests: %v (reset %v)", m, reset)
		}
		if in := m["resetIn"].(float64); in < 50 || in > 60 {
			t.Fatalf("resetIn %v, want about 60", in)
		}
	}

	r := get(t, in.URL("/proxy/services/nope/rate-limit"))
	if m := decode(t, r.body); r.status != 404 || m["error"] != "Service 'nope' not configured" {
		t.Fatalf("unknown service: %d %s", r.status, r.body)
	}
	r = get(t, in.URL("/proxy/services/y/rate-limit"))
	m = decode(t, r.body)
	if v, present := m["limit"]; r.status != 200 || !present || v != nil || m["service"] != "y" || m["message"] == nil {
		t.Fatalf("service without a limit: %d %s", r.status, r.body)
	}
	if r := get(t, in.URL("/proxy/y/a")); r.status != 200 || r.header.Get("RateLimit-Policy") != "" || r.header.Get("RateLimit") != "" {
		t.Fatalf("a service without a limit was limited: %d %v", r.status, r.header)
	}
}

func TestClientLimit(t *testing.T) {
	in := testutil.Start(t, gatewayConfig(`
		client_rate_limit 3 1m
		service x {
			base_url http://127.0.0.1:1/
			rate_limit 100 1m
		}
		service free {
			base_url http://127.0.0.1:1/
		}`), testutil.Options{})

	for i := range 3 {
		if r := get(t, in.URL("/proxy/x/a"), "X-Client", "alice"); r.status != 200 {
			t.Fatalf("alice request %d: %d %s", i+1, r.status, r.body)
		}
	}
	r := get(t, in.URL("/proxy/x/a"), "X-Client", "alice")
	if r.status != 429 {
		t.Fatalf("alice's 4th request: %d, want 429", r.status)
	}
	m := decode(t, r.body)
	retry := headerInt(t, r.header, "Retry-After")
	if !strings.HasPrefix(fmt.Sprint(m["error"]), "Client rate limit exceeded") || m["limitType"] != "client" || m["service"] != "x" || m["path"] != "/a" {
		t.Fatalf("client 429 body: %s", r.body)
	}
	if q, _ := limitPolicy(t, r.header, "client"); retry < 1 || retry > 20 || q != 3 {
		t.Fatalf("client 429 headers: %v", r.header)
	}
	if remaining, _ := limitState(t, r.header, "client"); remaining != 0 {
		t.Fatalf("client 429: RateLimit %q, want r=0", r.header.Get("RateLimit"))
	}
	if _, ok := ietfMember(t, r.header, "RateLimit", "service"); ok {
		t.Fatalf("client 429: RateLimit %q names the service window, which it did not read", r.header.Get("RateLimit"))
	}
	noXRateLimit(t, r.header)
	// Across services: alice is out of tokens for the unlimited service too.
	if r := get(t, in.URL("/proxy/free/a"), "X-Client", "alice"); r.status != 429 {
		t.Fatalf("alice on another service: %d, want 429", r.status)
	}
	// Only the client limit applies there, so its figures are the headers.
	if r := get(t, in.URL("/proxy/free/a"), "X-Client", "bob"); r.status != 200 || r.header.Get("RateLimit-Policy") != `"client";q=3;w=60` {
		t.Fatalf("bob: %d %v", r.status, r.header)
	} else if remaining, _ := limitState(t, r.header, "client"); remaining != 2 {
		t.Fatalf("bob: RateLimit %q, want r=2", r.header.Get("RateLimit"))
	}
	if r := get(t, in.URL("/proxy/x/a"), "X-Client", "bob"); r.status != 200 {
		t.Fatalf("bob on x: %d", r.status)
	}
	// alice's refusals did not count against the service: 3 + 1 counted.
	m = decode(t, get(t, in.URL("/proxy/services/x/rate-limit")).body)
	if m["remaining"] != 96.0 {
		t.Fatalf("service remaining %v, want 96 (refused requests must not count)", m["remaining"])
	}

	// Without a key id, the client IP (here from X-Forwarded-For).
	for i := range 3 {
		if r := get(t, in.URL("/proxy/x/a"), "X-Forwarded-For", "203.0.113.7"); r.status != 200 {
			t.Fatalf("IP request %d: %d", i+1, r.status)
		}
	}
	if r := get(t, in.URL("/proxy/x/a"), "X-Forwarded-For", "203.0.113.7"); r.status != 429 {
		t.Fatalf("4th request of one IP: %d, want 429", r.status)
	}
	if r := get(t, in.URL("/proxy/x/a"), "X-Forwarded-For", "203.0.113.8"); r.status != 200 {
		t.Fatalf("another IP: %d, want 200", r.status)
	}
}

// goroutines reads the gateway's goroutine count from the admin pprof
// endpoint.
func goroutines(t *testing.T, in *testutil.Instance) int {
	t.Helper()
	r := get(t, in.AdminURL("/debug/pprof/goroutine?debug=1"))
	var n int
	if _, err := fmt.Sscanf(string(r.body), "goroutine profile: total %d", &n); err != nil {
		t.Fatalf("goroutine profile: %v\n%.200s", err, r.body)
	}
	return n
}

func TestReloadKeepsCounters(t *testing.T) {
	base := `
		client_rate_limit 1000 1m
		service x {
			base_url http://127.0.0.1:1/
			rate_limit 100 1m
		}`
	in := testutil.Start(t, gatewayConfig(base), testutil.Options{})
	remaining := func() float64 {
		return decode(t, get(t, in.URL("/proxy/services/x/rate-limit")).body)["remaining"].(float64)
	}
	for range 10 {
		if r := get(t, in.URL("/proxy/x/a")); r.status != 200 {
			t.Fatalf("request: %d", r.status)
		}
	}
	resetBefore := decode(t, get(t, in.URL("/proxy/services/x/rate-limit")).body)["resetTime"]

	// A reload that changes something else keeps the counters and the window.
	in.Reload(gatewayConfig(base + `
		service other {
			base_url http://127.0.0.1:1/
			rate_limit 7 1m
		}`))
	if m := decode(t, get(t, in.URL("/proxy/services/x/rate-limit")).body); m["remaining"] != 90.0 || m["resetTime"] != resetBefore {
		t.Fatalf("after a reload: %v, want remaining 90 and the same resetTime %v", m, resetBefore)
	}
	r := get(t, in.URL("/proxy/x/a"))
	if remaining, _ := limitState(t, r.header, "service"); remaining != 89 {
		t.Fatalf("first request after the reload: RateLimit %q, want service r=89", r.header.Get("RateLimit"))
	}
	// The client bucket survived too: 11 of 1000 spent.
	r = get(t, in.URL("/proxy/x/a"))
	if remaining, _ := limitState(t, r.header, "service"); remaining != 88 {
		t.Fatalf("RateLimit %q, want service r=88", r.header.Get("RateLimit"))
	}

	// A changed limit starts afresh.
	in.Reload(gatewayConfig(strings.Replace(base, "rate_limit 100 1m", "rate_limit 50 1m", 1)))
	if got := remaining(); got != 50 {
		t.Fatalf("after changing the limit to 50: remaining %v, want 50", got)
	}

	// Reloads do not leak goroutines (sweepers of released client limits
	// stop): alternate two client limits.
	alt := []string{base, strings.Replace(base, "client_rate_limit 1000 1m", "client_rate_limit 999 30s", 1)}
	in.Reload(gatewayConfig(alt[0]))
	get(t, in.URL("/proxy/x/a"))
	g0 := goroutines(t, in)
	for i := range 8 {
		in.Reload(gatewayConfig(alt[(i+1)%2]))
		get(t, in.URL("/proxy/x/a"))
	}
	var g1 int
	deadline := time.Now().Add(10 * time.Second)
	for g1 = goroutines(t, in); g1 > g0+3 && time.Now().Before(deadline); g1 = goroutines(t, in) {
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("goroutines %d -> %d", g0, g1)
	if g1 > g0+3 {
		t.Fatalf("goroutines grew from %d to %d over 8 reloads", g0, g1)
	}
}

func TestClusterSharesRedis(t *testing.T) {
	url := redistest.URL(t)
	x, y := uniqueName("x"), uniqueName("y")
	cfg := gatewayConfig(fmt.Sprintf(`
		redis %s
		client_rate_limit 10 1m
		service %s {
			base_url http://127.0.0.1:1/
			rate_limit 100 1m
		}
		service %s {
			base_url http://127.0.0.1:1/
		}`, url, x, y))
	var urls, ys []string
	var ins []*testutil.Instance
	for range 3 {
		in := testutil.Start(t, cfg, testutil.Options{})
		ins = append(ins, in)
		urls = append(urls, in.URL("/proxy/"+x+"/a"))
		ys = append(ys, in.URL("/proxy/"+y+"/a"))
	}

	// 300 clients, each once, against a service limit of 100.
	rs := burst(t, urls, 300, func(i int) []string { return []string{"X-Client", fmt.Sprint("c", i)} })
	if ok, refused := count(rs, 200), count(rs, 429); ok != 100 || refused != 200 {
		t.Fatalf("3 instances: %d successes and %d refusals, want exactly 100 and 200", ok, refused)
	}
	for _, in := range ins {
		m := decode(t, get(t, in.URL("/proxy/services/"+x+"/rate-limit")).body)
		if m["remaining"] != 0.0 || m["resetIn"].(float64) < 1 {
			t.Fatalf("instance %d reports %v, want the shared window: remaining 0", in.Port, m)
		}
	}

	// One client, 40 requests spread over the instances: 10 tokens in all.
	rs = burst(t, ys, 40, func(int) []string { return []string{"X-Client", "carol"} })
	if ok := count(rs, 200); ok != 10 || count(rs, 429) != 30 {
		t.Fatalf("client limit across instances: %d successes, want exactly 10", ok)
	}
	for _, in := range ins {
		if strings.Contains(in.Logs(), "redis unreachable") {
			t.Fatalf("an instance fell back to memory:\n%s", in.Logs())
		}
	}
}

func TestRedisOutageFallsBackAndRecovers(t *testing.T) {
	srv := redistest.Start(t, redistest.FreePort(t))
	in := testutil.Start(t, gatewayConfigWith(fmt.Sprintf(`
		redis %s
		service x {
			base_url http://127.0.0.1:1/
			rate_limit 1000 1m
		}`, srv.URL), "handle /status {\n\t\tbyteproxy_manage\n\t}"), testutil.Options{})
	redisStatus := func() map[string]any {
		t.Helper()
		r := get(t, in.URL("/status"))
		comps, _ := decode(t, r.body)["components"].(map[string]any)
		st, _ := comps["redis"].(map[string]any)
		if r.status != 200 || st == nil || st["configured"] != true {
			t.Fatalf("/status: %d, components.redis %v", r.status, comps["redis"])
		}
		if strings.Contains(string(r.body), "redis://") {
			t.Fatalf("/status shows the Redis URL: %s", r.body)
		}
		return st
	}
	if st := redisStatus(); st["connected"] != true || st["fallback"] != false {
		t.Fatalf("redis status before the outage: %v", st)
	}
	counted := func() int {
		opt, _ := redis.ParseURL(srv.URL)
		c := redis.NewClient(opt)
		defer c.Close()
		n, err := c.Get(context.Background(), redisServiceKey("x", 1000, time.Minute)).Int()
		if err != nil && err != redis.Nil {
			t.Fatal(err)
		}
		return n
	}
	send := func(n int) {
		t.Helper()
		for range n {
			start := time.Now()
			r := get(t, in.URL("/proxy/x/a"))
			if r.status != 200 {
				t.Fatalf("status %d %s\n%s", r.status, r.body, in.Logs())
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Fatalf("a request took %v during the outage", d)
			}
		}
	}
	send(20)
	if n := counted(); n != 20 {
		t.Fatalf("Redis counted %d requests, want 20", n)
	}

	srv.Kill()
	send(50)
	rs := burst(t, []string{in.URL("/proxy/x/a")}, 50, nil)
	if count(rs, 200) != 50 {
		t.Fatalf("during the outage: %d of 50 concurrent requests succeeded", count(rs, 200))
	}
	if n := strings.Count(in.Logs(), "redis unreachable"); n != 1 {
		t.Fatalf("outage logged %d times, want once:\n%s", n, in.Logs())
	}
	if st := redisStatus(); st["connected"] != false || st["fallback"] != true || st["lastError"] == nil {
		t.Fatalf("redis status during the outage: %v", st)
	}
	// The fallback counts in memory.
	if m := decode(t, get(t, in.URL("/proxy/services/x/rate-limit")).body); m["remaining"].(float64) > 1000-100 {
		t.Fatalf("fallback window %v, want the 100 outage requests counted", m)
	}

	redistest.Start(t, srv.Port) // empty: the old server kept nothing
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(in.Logs(), "redis reachable again") {
		if time.Now().After(deadline) {
			t.Fatalf("no recovery within 15s:\n%s", in.Logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if st := redisStatus(); st["connected"] != true || st["fallback"] != false {
		t.Fatalf("redis status after recovery: %v", st)
	}
	// The restarted Redis lost the window; the instance restored it (20
	// counted before the outage) and carried back the 100 of the outage.
	send(5)
	if n := counted(); n != 20+100+5 {
		t.Fatalf("after recovery Redis counted %d requests, want 125 (20 before the outage, 100 during, 5 after)", n)
	}
	if n := strings.Count(in.Logs(), "redis unreachable"); n != 1 {
		t.Fatalf("outage logged %d times in all, want once", n)
	}
	if n := strings.Count(in.Logs(), "redis reachable again"); n != 1 {
		t.Fatalf("recovery logged %d times, want once", n)
	}
}
