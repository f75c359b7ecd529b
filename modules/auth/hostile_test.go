package auth

// Integration tests of the attacks of issue 11 against the real byteproxy
// binary: a web page driving keyless management (CSRF, DNS rebinding), a
// proxy on the gateway's host opening it, a key line that resolves to
// nothing, and key guessing.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/byteproxy/byteproxy/internal/testutil"
)

// send is one request with an explicit Host (net/http ignores a Host in
// the header map) and headers as name/value pairs.
func send(t *testing.T, method, url, host, body string, headers ...string) (int, http.Header, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

// keylessConfig has a proxy key and no management key: the default of
// Caddyfile.example. Runtime services may point at loopback so that the
// test's own upstreams can stand for the bot's API and the attacker's.
const keylessConfig = `{
	byteproxy {
		auth proxy {
			key {env.BP_TEST_PROXY_KEY}
		}
		auth management {
			key {env.BP_TEST_UNSET_KEY}
			required false
		}
		runtime_services {
			allow_private_upstreams
		}
		%s
	}
	%s
}

:{{PORT}} {
	byteproxy
}
`

func baseURLOf(t *testing.T, in *testutil.Instance, key string) string {
	t.Helper()
	st, _, body := send(t, "GET", in.URL("/manage/services/"+key), "", "")
	var got struct {
		Config struct {
			BaseURL string `json:"baseUrl"`
		}
	}
	if st != 200 || json.Unmarshal([]byte(body), &got) != nil {
		t.Fatalf("GET /manage/services/%s: %d %s", key, st, body)
	}
	return got.Config.BaseURL
}

// TestKeylessManagementRefusesWebPages (issue 11.1): a page in the
// operator's browser cannot change a service of a keyless gateway, neither
// as a cross-site request nor through DNS rebinding; curl on the machine
// still can.
func TestKeylessManagementRefusesWebPages(t *testing.T) {
	bot, attacker := newRecorder(t), newRecorder(t)
	in := testutil.Start(t, fmt.Sprintf(keylessConfig, "", ""), testutil.Options{Env: keyEnv})
	json := "application/json"
	botURL := fmt.Sprintf("http://127.0.0.1:%d/", bot.port())
	evil := fmt.Sprintf(`{"name":"Payments","baseUrl":"http://127.0.0.1:%d/"}`, attacker.port())

	// The operator, with curl on the machine.
	if st, _, body := send(t, "POST", in.URL("/manage/services"), "", fmt.Sprintf(`{"key":"payments","config":{"name":"Payments","baseUrl":%q}}`, botURL),
		"Content-Type", json); st != 201 {
		t.Fatalf("local curl POST: %d %s", st, body)
	}
	page := []string{"Origin", "https://evil.example", "Sec-Fetch-Site", "cross-site", "Sec-Fetch-Mode", "cors"}
	rebindHost := fmt.Sprintf("attacker.example:%d", in.Port)
	attacks := []struct {
		name, method, path, host, ctype string
		headers                         []string
		want                            int
	}{
		{"forged PUT", "PUT", "/manage/services/payments", "", json, page, 403},
		{"forged DELETE", "DELETE", "/manage/services/payments", "", "", page, 403},
		{"form POST", "POST", "/manage/services", "", "application/x-www-form-urlencoded", page, 403},
		{"text/plain POST", "POST", "/manage/services", "", "text/plain", page, 403},
		{"text/plain POST, old browser without Origin", "POST", "/manage/services", "", "text/plain", nil, 415},
		{"POST without Content-Type", "POST", "/manage/services", "", "", nil, 415},
		{"sandboxed page (Origin: null)", "PUT", "/manage/services/payments", "", json, []string{"Origin", "null"}, 403},
		{"DNS rebinding", "PUT", "/manage/services/payments", rebindHost, json, []string{"Origin", "http://" + rebindHost}, 403},
		{"DNS rebinding, GET", "GET", "/manage/diagnostics", rebindHost, "", nil, 403},
		{"cross-site read", "GET", "/manage/services", "", "", page, 403},
	}
	for _, a := range attacks {
		t.Run(a.name, func(t *testing.T) {
			h := append([]string{}, a.headers...)
			if a.ctype != "" {
				h = append(h, "Content-Type", a.ctype)
			}
			body := ""
			if a.method == "PUT" || a.method == "POST" {
				body = evil
			}
			st, hdr, rb := send(t, a.method, in.URL(a.path), a.host, body, h...)
			if st != a.want {
				t.Errorf("status %d, want %d: %s", st, a.want, rb)
			}
			if !strings.Contains(hdr.Get("Content-Type"), "application/json") || !strings.Contains(rb, `"error"`) {
				t.Errorf("not a JSON error: %v %s", hdr, rb)
			}
			if v := hdr.Values("Access-Control-Allow-Origin"); len(v) != 0 {
				t.Errorf("Access-Control-Allow-Origin %q on a keyless management answer", v)
			}
		})
	}
	// The page's preflight is refused too, so a browser never sends the PUT.
	st, hdr, body := send(t, "OPTIONS", in.URL("/manage/services/payments"), "", "",
		"Origin", "https://evil.example", "Access-Control-Request-Method", "PUT", "Access-Control-Request-Headers", "content-type")
	if st != 403 || hdr.Get("Access-Control-Allow-Origin") != "" || hdr.Get("Access-Control-Allow-Methods") != "" {
		t.Errorf("preflight: %d %v %s", st, hdr, body)
	}

	if got := baseURLOf(t, in, "payments"); got != botURL {
		t.Fatalf("the attack repointed the service to %s", got)
	}
	// The bot's next call still goes to its API, with nothing for the attacker.
	if st, _, body := send(t, "GET", in.URL("/proxy/payments/charge"), "", "", "X-API-Key", proxyKey); st != 200 {
		t.Fatalf("proxy: %d %s", st, body)
	}
	if bot.take() == nil || attacker.take() != nil {
		t.Fatal("the bot's call did not reach its own API")
	}

	// What the operator does keeps working: curl by each loopback name, a
	// charset parameter, and a page served from this machine.
	for _, c := range []struct {
		host    string
		headers []string
	}{
		{"", []string{"Content-Type", "application/json"}},
		{fmt.Sprintf("localhost:%d", in.Port), []string{"Content-Type", "application/json; charset=utf-8"}},
		{fmt.Sprintf("[::1]:%d", in.Port), []string{"Content-Type", "Application/JSON"}},
		{"", []string{"Content-Type", "application/json", "Origin", fmt.Sprintf("http://localhost:%d", in.Port)}},
	} {
		if st, _, body := send(t, "PUT", in.URL("/manage/services/payments"), c.host, fmt.Sprintf(`{"name":"Payments","baseUrl":%q}`, botURL), c.headers...); st != 200 {
			t.Errorf("local PUT (Host %q, %q): %d %s", c.host, c.headers, st, body)
		}
	}
	if st, _, body := send(t, "DELETE", in.URL("/manage/services/payments"), "", ""); st != 200 {
		t.Errorf("local DELETE without Content-Type: %d %s", st, body)
	}
}

// TestKeylessManagementRefusesProxies (issue 11.2): a reverse proxy on the
// gateway's host connects from loopback; keyless management must not
// trust it, whatever trusted_proxies says.
func TestKeylessManagementRefusesProxies(t *testing.T) {
	in := testutil.Start(t, fmt.Sprintf(keylessConfig, "", `servers {
		trusted_proxies static 127.0.0.1/8 ::1/128
		client_ip_headers X-Forwarded-For X-Envoy-External-Address
	}`), testutil.Options{Env: keyEnv})
	for _, h := range [][]string{
		{"X-Forwarded-For", "8.8.8.8"},
		{"X-Forwarded-For", "127.0.0.1"},
		{"Forwarded", "for=8.8.8.8"},
		{"X-Real-IP", "8.8.8.8"},
		{"Via", "1.1 nginx"},
		{"X-Envoy-External-Address", "8.8.8.8"}, // Caddy's client IP is 8.8.8.8
	} {
		st, _, body := send(t, "GET", in.URL("/manage/diagnostics"), "", "", h...)
		if st != 403 || !strings.Contains(body, "management key") {
			t.Errorf("%q: %d %s", h, st, body)
		}
	}
	if st, _, body := send(t, "GET", in.URL("/manage/diagnostics"), "", ""); st != 200 {
		t.Fatalf("direct local client: %d %s", st, body)
	}

	// `byteproxy reverse-proxy` in front, as in the report: a remote client
	// of the proxy must not add a service.
	front := testutil.FreePort(t)
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, testutil.Binary(t), "reverse-proxy", "--from", fmt.Sprintf(":%d", front), "--to", fmt.Sprintf("127.0.0.1:%d", in.Port))
	cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = cmd.Wait() })
	frontURL := fmt.Sprintf("http://127.0.0.1:%d", front)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", front), time.Second); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("reverse-proxy did not start:\n%s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if st, _, body := send(t, "GET", frontURL+"/health", "", ""); st != 200 {
		t.Fatalf("through the proxy, /health: %d %s", st, body)
	}
	st, _, body := send(t, "POST", frontURL+"/manage/services", "", `{"key":"evil","config":{"baseUrl":"http://127.0.0.1:9/"}}`, "Content-Type", "application/json")
	if st != 403 || !strings.Contains(body, "proxy") {
		t.Errorf("adding a service through the proxy: %d %s", st, body)
	}
	if st, _, body := send(t, "GET", frontURL+"/manage/diagnostics", "", ""); st != 403 {
		t.Errorf("diagnostics through the proxy: %d %s", st, body)
	}
	if st, _, _ := send(t, "GET", in.URL("/manage/services/evil"), "", ""); st != 404 {
		t.Errorf("the service was added: GET answered %d", st)
	}
}

// TestEmptyKeyLineFailsClosed (issue 11.6): `key {env.X}` with X unset
// stops the config from loading unless `required false` is written, and
// the error names the variable.
func TestEmptyKeyLineFailsClosed(t *testing.T) {
	cfg := func(block string) string {
		return fmt.Sprintf("{\n\tadmin off\n\tbyteproxy {\n\t\t%s\n\t\tservice github\n\t}\n}\n\n:%d {\n\tbyteproxy\n}\n", block, testutil.FreePort(t))
	}
	out, err := runBinary(t, 30*time.Second, cfg("auth proxy {\n\t\t\tkey {env.BP_TEST_UNSET_KEY}\n\t\t}"), "validate")
	if err == nil {
		t.Fatalf("a proxy key line resolving to nothing was accepted (open proxy):\n%s", out)
	}
	for _, want := range []string{"auth proxy", "{env.BP_TEST_UNSET_KEY}", "environment variable BP_TEST_UNSET_KEY is not set", "required false"} {
		if !strings.Contains(out, want) {
			t.Errorf("error does not say %q:\n%s", want, out)
		}
	}
	if out, err := runBinary(t, 30*time.Second, cfg("auth management {\n\t\t\tkey {env.BP_TEST_UNSET_KEY}\n\t\t}"), "validate"); err == nil {
		t.Errorf("a management key line resolving to nothing was accepted:\n%s", out)
	}
	for _, ok := range []string{
		"auth proxy {\n\t\t\tkey {env.BP_TEST_UNSET_KEY}\n\t\t\trequired false\n\t\t}",
		"auth proxy {\n\t\t\tkey {env.BP_TEST_UNSET_KEY}\n\t\t\tkey {env.BP_TEST_PROXY_KEY}\n\t\t}", // rotation slot left empty
	} {
		if out, err := runBinary(t, 30*time.Second, cfg(ok), "validate"); err != nil {
			t.Errorf("refused %q: %v\n%s", ok, err, out)
		}
	}
}

// exchange writes one request on a kept-alive connection and reads the
// answer; it reports io.EOF once the server closed the connection.
func exchange(c net.Conn, br *bufio.Reader, port int, key string) (*http.Response, error) {
	fmt.Fprintf(c, "GET /proxy/auth-test HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nX-API-Key: %s\r\n\r\n", port, key)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return nil, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp, nil
}

// TestKeyGuessingThrottled (issue 11.11): on one connection, as in the
// report, the default lets 20 wrong keys through, then answers 429 with
// Retry-After and closes the connection; the throttle survives a reload
// and does not look at keys while it holds.
func TestKeyGuessingThrottled(t *testing.T) {
	g := startGateway(t, "")
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", g.in.Port), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	br := bufio.NewReader(c)
	start := time.Now()
	unauthorized := 0
	var throttled *http.Response
	for i := 0; i < 100 && throttled == nil; i++ {
		resp, err := exchange(c, br, g.in.Port, fmt.Sprintf("guess-%04d", i))
		if err != nil {
			t.Fatalf("guess %d: %v", i, err)
		}
		switch resp.StatusCode {
		case 401:
			unauthorized++
		case 429:
			throttled = resp
		default:
			t.Fatalf("guess %d: status %d", i, resp.StatusCode)
		}
	}
	// The default is 20 a minute: one more comes back every 3s.
	if extra := int(time.Since(start)/(3*time.Second)) + 1; throttled == nil || unauthorized < 20 || unauthorized > 20+extra {
		t.Fatalf("%d wrong keys answered 401 before a 429 (%v), want 20", unauthorized, throttled != nil)
	}
	if ra, _ := strconv.Atoi(throttled.Header.Get("Retry-After")); ra < 1 || ra > 3 {
		t.Errorf("Retry-After %q, want 1..3 s", throttled.Header.Get("Retry-After"))
	}
	if !throttled.Close {
		t.Error("429 does not close the connection")
	}
	if _, err := exchange(c, br, g.in.Port, "guess-next"); err == nil {
		t.Error("the connection stayed open after the 429")
	}
	assertMetric(t, g.in, `byteproxy_auth_throttled_total{scope="proxy"}`, 1)
	g.do("GET", "/health") // for the key-material scan of g's responses

	// A long window, so that nothing refills during the rest of the test.
	slow := startGateway(t, "auth_failures 3 1h")
	for range 3 {
		slow.expect(401, "/proxy/auth-test", "X-API-Key", "wrong")
	}
	// Blocked: the right key is not even checked, on either scope.
	slow.expect(429, "/proxy/auth-test", "X-API-Key", proxyKey)
	slow.expect(429, "/manage/key-debug", "X-API-Key", mgmtKey)
	// A reload (same throttle, one more setting) keeps the count.
	slow.in.Reload(config(slow.upstream, false, "auth_failures 3 1h\n\t\tquery_key off"))
	slow.expect(429, "/proxy/auth-test", "X-API-Key", proxyKey)

	off := startGateway(t, "auth_failures off")
	for range 30 {
		off.expect(401, "/proxy/auth-test", "X-API-Key", "wrong")
	}
	off.expect(200, "/proxy/auth-test", "X-API-Key", proxyKey)
}
