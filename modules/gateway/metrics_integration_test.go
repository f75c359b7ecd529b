package gateway_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/byteproxy/byteproxy/internal/testutil"
)

// metricsCaddyfile: one reachable service with a limit of 3 per minute, one
// whose upstream refuses connections, both scopes keyed, and an access
// log in JSON to a file.
const metricsCaddyfile = `{
	byteproxy {
		auth proxy {
			key proxy-key-1
		}
		auth management {
			key mgmt-key-1
		}
		runtime_services {
			allow_private_upstreams
		}
		pressure {
			interval 100ms
		}
		service fake {
			base_url {{UPSTREAM}}
			rate_limit 3 1m
		}
		service down {
			base_url {{DOWN}}
			retries 0
		}
	}
}

:{{PORT}} {
	bind 127.0.0.1
	metrics /prom
	log {
		output file {{LOG}}
		format filter {
			wrap json
			fields {
				request>headers>X-Api-Key delete
				request>uri query {
					delete api_key
				}
			}
		}
	}
	byteproxy
}
`

type gatewayEnv struct {
	in       *testutil.Instance
	caddy    string
	logFile  string
	upstream *httptest.Server
}

func startGateway(t *testing.T) *gatewayEnv {
	t.Helper()
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprint(w, "ok "+r.URL.Path)
	}))
	t.Cleanup(up.Close)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := "http://" + l.Addr().String() + "/"
	l.Close() // nothing listens: every dial is refused
	logFile := filepath.Join(t.TempDir(), "access.log")
	cf := strings.NewReplacer("{{UPSTREAM}}", up.URL+"/", "{{DOWN}}", down, "{{LOG}}", logFile).Replace(metricsCaddyfile)
	return &gatewayEnv{in: testutil.Start(t, cf, testutil.Options{}), caddy: cf, logFile: logFile, upstream: up}
}

// scrape reads the admin endpoint's /metrics into "name{k=v,...}" -> value
// (labels sorted).
func scrape(t *testing.T, in *testutil.Instance) map[string]float64 {
	t.Helper()
	return scrapeURL(t, in.AdminURL("/metrics"))
}

func scrapeURL(t *testing.T, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("/metrics: %d", resp.StatusCode)
	}
	labelRE := regexp.MustCompile(`(\w+)="((?:[^"\\]|\\.)*)"`)
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		series := line[:i]
		name, labels, _ := strings.Cut(series, "{")
		var pairs []string
		for _, m := range labelRE.FindAllStringSubmatch(labels, -1) {
			pairs = append(pairs, m[1]+"="+m[2])
		}
		out[key(name, pairs...)] = v
	}
	return out
}

func key(name string, pairs ...string) string {
	sort.Strings(pairs)
	return name + "{" + strings.Join(pairs, ",") + "}"
}

// series builds a key from name and label pairs: series("x", "a", "1").
func series(name string, kv ...string) string {
	var pairs []string
	for i := 0; i+1 < len(kv); i += 2 {
		pairs = append(pairs, kv[i]+"="+kv[i+1])
	}
	return key(name, pairs...)
}

func do(t *testing.T, e *gatewayEnv, method, path string, headers ...string) int {
	t.Helper()
	resp, _ := testutil.Do(t, method, e.in.URL(path), nil, headers...)
	return resp.StatusCode
}

// TestMetricsAfterTraffic sends known traffic through the real gateway and
// reads the counts back from the admin endpoint's /metrics; a reload keeps
// them.
func TestMetricsAfterTraffic(t *testing.T) {
	e := startGateway(t)
	auth := []string{"Authorization", "Bearer proxy-key-1"}
	for i := range 3 {
		if c := do(t, e, "GET", fmt.Sprintf("/proxy/fake/ok/%d", i), auth...); c != 200 {
			t.Fatalf("request %d: %d", i, c)
		}
	}
	if c := do(t, e, "GET", "/proxy/fake/ok/4", auth...); c != 429 {
		t.Fatalf("4th request: %d, want 429", c)
	}
	for range 2 {
		if c := do(t, e, "GET", "/proxy/down/x", auth...); c != 502 {
			t.Fatalf("down: %d, want 502", c)
		}
	}
	if c := do(t, e, "GET", "/proxy/fake/ok"); c != 401 {
		t.Fatalf("no key: %d", c)
	}
	if c := do(t, e, "GET", "/proxy/fake/ok", "X-API-Key", "wrong"); c != 401 {
		t.Fatalf("wrong key: %d", c)
	}
	if c := do(t, e, "GET", "/manage/services", "X-API-Key", "proxy-key-1"); c != 401 {
		t.Fatalf("proxy key on /manage: %d", c)
	}
	body := []byte(fmt.Sprintf(`{"key":"rt","config":{"name":"RT","baseUrl":%q}}`, e.upstream.URL+"/"))
	if resp, b := testutil.Do(t, "POST", e.in.URL("/manage/services"), body, "X-API-Key", "mgmt-key-1", "Content-Type", "application/json"); resp.StatusCode != 201 {
		t.Fatalf("adding a runtime service: %d %s", resp.StatusCode, b)
	}

	want := map[string]float64{
		series("byteproxy_requests_total", "service", "fake", "code", "200"):         3,
		series("byteproxy_requests_total", "service", "down", "code", "502"):         2,
		series("byteproxy_upstream_errors_total", "service", "down", "kind", "dial"): 2,
		series("byteproxy_rate_limited_total", "service", "fake", "kind", "service"): 1,
		series("byteproxy_auth_failures_total", "scope", "proxy"):                    2,
		series("byteproxy_auth_failures_total", "scope", "management"):               1,
		series("byteproxy_request_duration_seconds_count", "service", "fake"):        3,
		series("byteproxy_upstream_duration_seconds_count", "service", "fake"):       3,
		series("byteproxy_services", "source", "config"):                             2,
		series("byteproxy_services", "source", "runtime"):                            1,
		series("byteproxy_redis_fallback"):                                           0,
	}
	check := func(when string) map[string]float64 {
		t.Helper()
		got := scrape(t, e.in)
		for k, v := range want {
			if g, ok := got[k]; !ok || g != v {
				t.Errorf("%s: %s = %v (present %v), want %v", when, k, g, ok, v)
			}
		}
		return got
	}
	got := check("after traffic")
	// No label for a service that does not exist.
	if c := do(t, e, "GET", "/proxy/nope/x", auth...); c != 404 {
		t.Fatalf("unknown service: %d", c)
	}
	for k := range scrape(t, e.in) {
		if strings.Contains(k, "service=nope") {
			t.Errorf("unknown service became a label value: %s", k)
		}
	}
	// The same counts through the `metrics` directive of the site.
	site := scrapeURL(t, e.in.URL("/prom"))
	for k, v := range want {
		if site[k] != v {
			t.Errorf("metrics directive: %s = %v, want %v", k, site[k], v)
		}
	}
	// Caddy's own metrics share the endpoint.
	if _, ok := got[series("caddy_config_last_reload_successful")]; !ok {
		t.Error("caddy's own metrics missing from /metrics")
	}

	// Pressure readings are published by the monitor.
	deadline := time.Now().Add(5 * time.Second)
	for scrape(t, e.in)[series("byteproxy_pressure_goroutines")] <= 0 {
		if time.Now().After(deadline) {
			t.Fatal("byteproxy_pressure_goroutines never set")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if g := scrape(t, e.in)[series("byteproxy_pressure_heap_bytes")]; g <= 0 {
		t.Errorf("byteproxy_pressure_heap_bytes = %v", g)
	}

	// A config reload neither resets the counters nor registers twice.
	e.in.Reload(e.caddy)
	check("after reload")
}

// TestAccessLogFields checks that the fields byteproxy handlers add with
// gateway.AddLogField reach Caddy's access log: the service and the
// consumer id on a proxied request, the limit kind on a 429. The key
// itself never appears.
func TestAccessLogFields(t *testing.T) {
	e := startGateway(t)
	auth := []string{"Authorization", "Bearer proxy-key-1"}
	if c := do(t, e, "GET", "/proxy/fake/logged", auth...); c != 200 {
		t.Fatalf("proxy: %d", c)
	}
	for range 3 {
		do(t, e, "GET", "/proxy/fake/limited", auth...)
	}
	// The other two transports: with the documented log filter, neither
	// key reaches the log (entry() fails on any occurrence).
	if c := do(t, e, "GET", "/proxy/auth-test", "X-API-Key", "proxy-key-1"); c != 200 {
		t.Fatalf("X-API-Key: %d", c)
	}
	if c := do(t, e, "GET", "/proxy/auth-test?x=1&api_key=proxy-key-1"); c != 200 {
		t.Fatalf("api_key: %d", c)
	}
	entry := func(uri string) map[string]any {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			b, _ := os.ReadFile(e.logFile)
			if strings.Contains(string(b), "proxy-key-1") {
				t.Fatal("the API key appears in the access log")
			}
			var found map[string]any
			for line := range strings.SplitSeq(string(b), "\n") {
				var m map[string]any
				if json.Unmarshal([]byte(line), &m) != nil {
					continue
				}
				if req, _ := m["request"].(map[string]any); req != nil && req["uri"] == uri {
					found = m
				}
			}
			if found != nil {
				return found
			}
			if time.Now().After(deadline) {
				t.Fatalf("no access log entry for %s in:\n%s", uri, b)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	ok := entry("/proxy/fake/logged")
	if ok["service"] != "fake" {
		t.Errorf("service field = %v in %v", ok["service"], ok)
	}
	if c, _ := ok["client"].(string); c == "" {
		t.Errorf("client field missing in %v", ok)
	}
	// The upstream's status is the logged status (passed through); the
	// gateway's duration and the remaining quota are logged response
	// headers.
	rh, _ := ok["resp_headers"].(map[string]any)
	for _, h := range []string{"X-Proxy-Duration", "Ratelimit", "X-Proxy-Service"} {
		if v, _ := rh[h].([]any); len(v) != 1 {
			t.Errorf("resp_headers[%s] = %v", h, rh[h])
		}
	}
	if rem, _ := rh["Ratelimit"].([]any); len(rem) == 1 && !strings.HasPrefix(fmt.Sprint(rem[0]), `"service";r=2;`) {
		t.Errorf("RateLimit = %v, want service r=2 after the first of 3", rem[0])
	}
	if ok["upstream_status"] != float64(200) || ok["rate_limit_remaining"] != float64(2) {
		t.Errorf("upstream_status %v, rate_limit_remaining %v in %v", ok["upstream_status"], ok["rate_limit_remaining"], ok)
	}
	if d, isNum := ok["upstream_duration"].(float64); !isNum || d <= 0 {
		t.Errorf("upstream_duration = %v, want a positive number", ok["upstream_duration"])
	}
	if q := entry("/proxy/auth-test?x=1"); q["client"] != ok["client"] {
		t.Errorf("the same key gave client ids %v and %v", q["client"], ok["client"])
	}
	limited := entry("/proxy/fake/limited") // the last one: the 4th request of fake
	if limited["status"] != float64(429) || limited["rate_limited"] != "service" {
		t.Errorf("429 entry: status %v, rate_limited %v in %v", limited["status"], limited["rate_limited"], limited)
	}
}

// TestMetricsShedAndRedisFallback: a heap limit every reading exceeds sheds
// requests, and a Redis that refuses connections puts rate limits in
// fallback; both show in /metrics.
func TestMetricsShedAndRedisFallback(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	redisAddr := l.Addr().String()
	l.Close() // no Redis here
	in := testutil.Start(t, `{
	byteproxy {
		redis redis://`+redisAddr+`/0
		pressure {
			max_heap 1KiB
			interval 100ms
		}
		service fake {
			base_url http://127.0.0.1:9/
			rate_limit 10 1m
		}
	}
}

:{{PORT}} {
	bind 127.0.0.1
	byteproxy
}
`, testutil.Options{})
	deadline := time.Now().Add(10 * time.Second)
	shed := 0
	for shed < 2 {
		if resp, _ := testutil.Do(t, "GET", in.URL("/proxy/fake/x"), nil); resp.StatusCode == 503 {
			shed++
		} else if time.Now().After(deadline) {
			t.Fatalf("never shed: %d", resp.StatusCode)
		} else {
			time.Sleep(50 * time.Millisecond)
		}
	}
	for {
		m := scrape(t, in)
		if m[series("byteproxy_shed_requests_total", "type", "heapUsed")] == float64(shed) &&
			m[series("byteproxy_redis_fallback")] == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("shed %v (want %d), redis fallback %v (want 1)",
				m[series("byteproxy_shed_requests_total", "type", "heapUsed")], shed, m[series("byteproxy_redis_fallback")])
		}
		time.Sleep(100 * time.Millisecond)
	}
}
