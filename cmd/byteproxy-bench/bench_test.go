package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestMain lets the test binary act as the upstream when re-executed by
// startUpstream, exactly as the command does.
func TestMain(m *testing.M) {
	if os.Getenv(roleEnv) == "upstream" {
		runUpstream()
		return
	}
	dir, err := os.MkdirTemp("", "byteproxy-bench-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

var (
	binOnce sync.Once
	binDir  string
	binPath string
	binErr  error
)

const wrkOutput = `Running 10s test @ http://127.0.0.1:8080/proxy/bench/ping
  2 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.31ms    1.20ms  20.00ms   80.00%
    Req/Sec    10.95k     1.02k   13.01k    70.00%
  Latency Distribution
     50%    2.10ms
     75%    2.80ms
     90%    3.50ms
     99%    9.03ms
  219000 requests in 10.00s, 30.00MB read
  Socket errors: connect 1, read 2, write 3, timeout 4
  Non-2xx or 3xx responses: 12
Requests/sec:  21900.45
Transfer/sec:      3.00MB
`

func TestParseWrk(t *testing.T) {
	r, err := parseWrk(wrkOutput)
	if err != nil {
		t.Fatal(err)
	}
	want := loadResult{
		Requests: 219000, Elapsed: 10 * time.Second, ReqPerSec: 21900.45,
		P50: 2100 * time.Microsecond, P99: 9030 * time.Microsecond,
		Non2xx: 12, Errors: 10, Socket: socketErrors{Connect: 1, Read: 2, Write: 3, Timeout: 4}, BytesRead: 30 * 1024 * 1024,
	}
	if r != want {
		t.Errorf("parseWrk:\n got %+v\nwant %+v", r, want)
	}
}

func TestParseWrkUnitsAndClean(t *testing.T) {
	out := strings.NewReplacer(
		"     50%    2.10ms", "     50%  812.00us",
		"     99%    9.03ms", "     99%    1.50s",
		"  Socket errors: connect 1, read 2, write 3, timeout 4\n", "",
		"  Non-2xx or 3xx responses: 12\n", "",
		"30.00MB read", "512.00B read",
	).Replace(wrkOutput)
	r, err := parseWrk(out)
	if err != nil {
		t.Fatal(err)
	}
	if r.P50 != 812*time.Microsecond || r.P99 != 1500*time.Millisecond {
		t.Errorf("p50 %v p99 %v, want 812µs 1.5s", r.P50, r.P99)
	}
	if r.Non2xx != 0 || r.Errors != 0 || r.BytesRead != 512 {
		t.Errorf("non2xx %d errors %d bytes %d, want 0 0 512", r.Non2xx, r.Errors, r.BytesRead)
	}
}

func TestParseWrkRejectsIncompleteOutput(t *testing.T) {
	noDist := strings.Replace(wrkOutput, "99%    9.03ms", "", 1)
	for name, out := range map[string]string{
		"empty":             "",
		"no latency dist":   noDist,
		"no requests/sec":   strings.Replace(wrkOutput, "Requests/sec:", "Reqs:", 1),
		"garbage":           "unable to connect to 127.0.0.1:1 Connection refused\n",
		"bad duration unit": strings.Replace(wrkOutput, "2.10ms", "2.10xs", 1),
	} {
		if _, err := parseWrk(out); err == nil {
			t.Errorf("%s: parseWrk accepted it", name)
		}
	}
}

func TestParseProcStat(t *testing.T) {
	// The command name may contain spaces and ')'; utime=1234, stime=56.
	stat := "4242 (weird) name) S 1 4242 4242 0 -1 4194560 2000 0 0 0 1234 56 0 0 20 0 12 0 100 800000000 5000 18446744073709551615"
	got, err := parseProcStat(stat)
	if err != nil {
		t.Fatal(err)
	}
	if got.User != 12340*time.Millisecond || got.System != 560*time.Millisecond {
		t.Errorf("got %+v, want user 12.34s system 560ms", got)
	}
	for _, bad := range []string{"", "1 (x S 1 2", "1 (x) S 1 2 3", "1 (x) S 1 1 1 0 -1 0 0 0 0 0 abc 5 0"} {
		if _, err := parseProcStat(bad); err == nil {
			t.Errorf("parseProcStat(%q) accepted it", bad)
		}
	}
}

func TestCPUPerRequest(t *testing.T) {
	before := cpuTimes{User: 10 * time.Second, System: 2 * time.Second}
	after := cpuTimes{User: 13 * time.Second, System: 3 * time.Second} // +4s
	if got := cpuPerRequest(before, after, 100000); got != 40*time.Microsecond {
		t.Errorf("4s over 100000 requests = %v, want 40µs", got)
	}
	if got := cpuPerRequest(before, after, 0); got != 0 {
		t.Errorf("zero requests: %v, want 0", got)
	}
	if got := cpuPerRequest(after, before, 10); got != 0 {
		t.Errorf("negative delta: %v, want 0", got)
	}
}

func TestMachineBusy(t *testing.T) {
	before, err := parseMachineStat("cpu  100 0 100 700 100 0 0 0 50 0\ncpu0 1 2 3 4 5\n")
	if err != nil {
		t.Fatal(err)
	}
	// +300 busy (user, system, irq), +100 idle, +0 iowait; guest ignored.
	after, err := parseMachineStat("cpu  300 0 150 800 100 50 0 0 999 0\n")
	if err != nil {
		t.Fatal(err)
	}
	if got := busyFraction(before, after); got != 0.75 {
		t.Errorf("busy = %v, want 0.75", got)
	}
	if got := busyFraction(after, after); got != -1 {
		t.Errorf("no time passed: %v, want -1", got)
	}
	for _, bad := range []string{"", "intr 1 2 3", "cpu 1 x 3 4 5"} {
		if _, err := parseMachineStat(bad); err == nil {
			t.Errorf("parseMachineStat(%q) accepted it", bad)
		}
	}
}

// TestReadCPUSelf checks the /proc reading against this process's own work.
func TestReadCPUSelf(t *testing.T) {
	before, err := readCPU(os.Getpid())
	if err != nil {
		t.Skipf("no /proc here: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	x := 0
	for time.Now().Before(deadline) {
		for i := 0; i < 1e6; i++ {
			x += i
		}
		after, err := readCPU(os.Getpid())
		if err != nil {
			t.Fatal(err)
		}
		if after.total() >= before.total()+50*time.Millisecond {
			return
		}
	}
	t.Fatalf("CPU time did not grow by 50ms in 5s of busy loop (%d)", x)
}

func TestPercentileAndMedian(t *testing.T) {
	var s []time.Duration
	for i := 1; i <= 100; i++ {
		s = append(s, time.Duration(i)*time.Millisecond)
	}
	if p := percentile(s, 0.5); p != 50*time.Millisecond {
		t.Errorf("p50 = %v", p)
	}
	if p := percentile(s, 0.99); p != 99*time.Millisecond {
		t.Errorf("p99 = %v", p)
	}
	if p := percentile(nil, 0.99); p != 0 {
		t.Errorf("empty p99 = %v", p)
	}
	if m := median([]float64{3, 1, 2}); m != 2 {
		t.Errorf("median odd = %v", m)
	}
	if m := median([]float64{4, 1, 3, 2}); m != 2.5 {
		t.Errorf("median even = %v", m)
	}
}

func TestValidate(t *testing.T) {
	good := targetReport{Name: "a", Requests: 1000, BytesPerReq: 200}
	cases := map[string]struct {
		t  targetReport
		ok bool
	}{
		"good":          {good, true},
		"1% non-2xx ok": {with(good, func(t *targetReport) { t.Non2xx = 10 }), true},
		"2% non-2xx":    {with(good, func(t *targetReport) { t.Non2xx = 20 }), false},
		"errors":        {with(good, func(t *targetReport) { t.Errors = 50 }), false},
		"wrong body":    {with(good, func(t *targetReport) { t.WrongBody = 1 }), false},
		"short bodies":  {with(good, func(t *targetReport) { t.BytesPerReq = 5 }), false},
		"no requests":   {with(good, func(t *targetReport) { t.Requests = 0 }), false},
		"preflight":     {with(good, func(t *targetReport) { t.Preflight = "404" }), false},
	}
	for name, c := range cases {
		r := &report{Upstreams: []upstreamReport{{Kind: kindHTTPS, Targets: []targetReport{good, c.t}}}}
		err := r.validate(0.01)
		if (err == nil) != c.ok || r.Valid != c.ok {
			t.Errorf("%s: err %v valid %v, want ok=%v", name, err, r.Valid, c.ok)
		}
		if err != nil && !errors.Is(err, errInvalid) {
			t.Errorf("%s: error %v does not wrap errInvalid", name, err)
		}
		if err != nil && !strings.Contains(err.Error(), "https/a") {
			t.Errorf("%s: error %v does not name the upstream kind and target", name, err)
		}
	}
}

func with(t targetReport, f func(*targetReport)) targetReport {
	f(&t)
	return t
}

// TestUpstream checks the minimal upstream server against Go's client:
// keep-alive, request bodies, pipelining, Connection: close.
func TestUpstream(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go serveUpstreamConn(c)
		}
	}()
	url := "http://" + ln.Addr().String() + "/x"
	tr := &http.Transport{Proxy: nil, MaxConnsPerHost: 1}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	for i := 0; i < 3; i++ {
		var resp *http.Response
		if i == 1 {
			resp, err = client.Post(url, "text/plain", strings.NewReader(strings.Repeat("b", 10000)))
		} else {
			resp, err = client.Get(url)
		}
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != upstreamBody || resp.Header.Get("Content-Type") != "application/json" {
			t.Fatalf("request %d: %d %q %q", i, resp.StatusCode, resp.Header, body)
		}
	}

	// Two pipelined requests, the second with Connection: close.
	c, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprint(c, "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	all, err := io.ReadAll(c) // returns at EOF: the server closed as asked
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(all), upstreamBody); n != 2 {
		t.Fatalf("pipelined: got %d bodies in %q", n, all)
	}
	br := bufio.NewReader(strings.NewReader(string(all)))
	for i := 0; i < 2; i++ {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
	}
}

func TestParseFlags(t *testing.T) {
	c, err := parseFlags([]string{"-c", "20", "-d", "3s", "-runs", "3", "-limits", "-json", "-env", "GOGC=400", "-env", "A=b=c"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.Conns != 20 || c.Duration != 3*time.Second || c.Runs != 3 || !c.Limits || !c.JSON || c.Warmup != 2*time.Second {
		t.Errorf("parsed %+v", c)
	}
	if strings.Join(c.Env, " ") != "GOGC=400 A=b=c" {
		t.Errorf("env %q", c.Env)
	}
	if c.Upstream != "both" || c.UpstreamProto != "both" || c.Pipeline || strings.Join(c.kinds(), ",") != "http,https" {
		t.Errorf("defaults: upstream %q proto %q pipeline %v kinds %v", c.Upstream, c.UpstreamProto, c.Pipeline, c.kinds())
	}
	if c.Budgets {
		t.Error("-budgets is off by default")
	}
	c, err = parseFlags([]string{"-upstream", "https", "-upstream-proto", "h1", "-pipeline", "-budgets",
		"-service-options", "timeout 5s", "-caddy-transport", "versions 1.1"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(c.kinds(), ",") != "https" || c.UpstreamProto != "h1" || !c.Pipeline || !c.Budgets ||
		c.ServiceExtra != "timeout 5s" || c.CaddyExtra != "versions 1.1" {
		t.Errorf("parsed %+v", c)
	}
	c, err = parseFlags([]string{"-reloads", "20", "-global-options", "grace_period 10s", "-upstream-delay", "5ms"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.Reloads != 20 || c.Global != "grace_period 10s" || c.UpstreamDelay != 5*time.Millisecond {
		t.Errorf("parsed %+v", c)
	}
	for _, bad := range [][]string{
		{"-c", "0"}, {"-t", "60"}, {"-runs", "0"}, {"-gen", "ab"}, {"-path", "x"}, {"-d", "0s"}, {"extra"}, {"-env", "novalue"},
		{"-upstream", "ftp"}, {"-upstream-proto", "h3"}, {"-upstream", "http", "-upstream-proto", "h2"},
		{"-reloads", "-1"}, {"-reloads", "5", "-gen", "go"}, {"-reloads", "5", "-profile", "gw.pprof"},
		{"-upstream-delay", "-1ms"}, {"-upstream-delay", "1m"},
	} {
		if _, err := parseFlags(bad, io.Discard); err == nil {
			t.Errorf("parseFlags(%v) accepted it", bad)
		}
	}
}

func TestProfilePath(t *testing.T) {
	for _, c := range []struct{ base, kind, name, want string }{
		{"gw.pprof", "http", nameGateway, "gw-http.pprof"},
		{"/tmp/x/gw.pprof", "https", namePipeline, "/tmp/x/gw-https-pipeline.pprof"},
		{"gw.pprof", "http", nameBudgets, "gw-http-budgets.pprof"},
		{"gw", "https", nameGateway, "gw-https"},
	} {
		if got := profilePath(c.base, c.kind, c.name); got != c.want {
			t.Errorf("profilePath(%q, %q, %q) = %q, want %q", c.base, c.kind, c.name, got, c.want)
		}
	}
}

func TestUpstreamConnLines(t *testing.T) {
	u := &upstream{}
	for _, line := range []string{"conn h1 false", "conn h2 true", "conn h2 false", "listening x", "conn", "conn h3 false"} {
		u.count(line)
	}
	if got := u.conns(); got != (connCounts{H1: 1, H2: 2, Resumed: 1}) {
		t.Errorf("counts %+v", got)
	}
	if s := u.conns().String(); s != "1 h1 + 2 h2, 1 resumed" {
		t.Errorf("String() = %q", s)
	}
	if s := (connCounts{}).String(); s != "none" {
		t.Errorf("empty String() = %q", s)
	}
}

func TestRatios(t *testing.T) {
	ts := []targetReport{
		{Name: nameCaddy, ReqPerSec: 1000, P99Ms: 10, CPUPerReqUs: 100},
		{Name: nameGateway, ReqPerSec: 2000, P99Ms: 5, CPUPerReqUs: 50},
		{Name: namePipeline, ReqPerSec: 1800, P99Ms: 6, CPUPerReqUs: -1},
	}
	got := ratios(ts)
	want := []ratioReport{
		{Of: nameGateway, To: nameCaddy, Throughput: 2, P99: 0.5, CPUPerReq: 0.5},
		{Of: namePipeline, To: nameCaddy, Throughput: 1.8, P99: 0.6},
		{Of: namePipeline, To: nameGateway, Throughput: 0.9, P99: 1.2},
	}
	if len(got) != len(want) {
		t.Fatalf("ratios %+v", got)
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.Of != w.Of || g.To != w.To || !near(g.Throughput, w.Throughput) || !near(g.P99, w.P99) || !near(g.CPUPerReq, w.CPUPerReq) {
			t.Errorf("ratio %d = %+v, want %+v", i, g, w)
		}
	}
	if got := ratios(ts[:2]); len(got) != 1 {
		t.Errorf("without the pipeline: %+v", got)
	}
	got = ratios(append(ts[:2:2], targetReport{Name: nameBudgets, ReqPerSec: 1900, P99Ms: 5.5, CPUPerReqUs: 55}))
	if len(got) != 3 || got[2].Of != nameBudgets || got[2].To != nameGateway || !near(got[2].Throughput, 0.95) || !near(got[2].CPUPerReq, 1.1) {
		t.Errorf("with -budgets: %+v, want budgets/caddy and budgets/byteproxy", got)
	}
}

func near(a, b float64) bool { return a-b < 1e-9 && b-a < 1e-9 }

// startTLSUpstream serves the HTTPS upstream in this process and returns
// its address, its certificate and the connection counts it announces.
func startTLSUpstream(t *testing.T, proto string) (string, *x509.Certificate, *upstream) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	counts := &upstream{kind: kindHTTPS, proto: proto}
	srv, err := newTLSUpstream(ln.Addr(), proto, func(p string, resumed bool) {
		counts.count(fmt.Sprintf("conn %s %t", p, resumed))
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.h2.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go srv.serve(c)
		}
	}()
	return ln.Addr().String(), srv.config.Certificates[0].Leaf, counts
}

// TestTLSUpstream checks the HTTPS upstream against Go's clients: the
// certificate (ECDSA P-256, valid for 127.0.0.1), the protocol each
// -upstream-proto offers to an HTTP/2-capable and an HTTP/1.1-only
// client, request bodies and keep-alive on both protocols.
func TestTLSUpstream(t *testing.T) {
	cases := []struct {
		proto          string
		h2Client       string // resp.Proto the HTTP/2-capable client gets
		h1Client       string // resp.Proto the HTTP/1.1-only client gets; "" = refused
		wantH1, wantH2 int64  // connections announced
	}{
		{protoBoth, "HTTP/2.0", "HTTP/1.1", 1, 1},
		{protoH1, "HTTP/1.1", "HTTP/1.1", 2, 0},
		{protoH2, "HTTP/2.0", "", 0, 1},
	}
	for _, c := range cases {
		t.Run(c.proto, func(t *testing.T) {
			addr, cert, counts := startTLSUpstream(t, c.proto)
			key, ok := cert.PublicKey.(*ecdsa.PublicKey)
			if !ok || key.Curve != elliptic.P256() {
				t.Fatalf("certificate key %T, want ECDSA P-256", cert.PublicKey)
			}
			roots := x509.NewCertPool()
			roots.AddCert(cert)
			url := "https://" + addr + "/x"

			h2 := &http.Transport{Proxy: nil, ForceAttemptHTTP2: true,
				TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "127.0.0.1"}}
			defer h2.CloseIdleConnections()
			if got := exchangeTwice(t, h2, url); got != c.h2Client {
				t.Errorf("HTTP/2-capable client spoke %q, want %q", got, c.h2Client)
			}

			// A non-nil empty TLSNextProto turns HTTP/2 off in the client.
			h1 := &http.Transport{Proxy: nil, TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{},
				TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "127.0.0.1"}}
			defer h1.CloseIdleConnections()
			if c.h1Client == "" {
				resp, err := (&http.Client{Transport: h1, Timeout: 5 * time.Second}).Get(url)
				if err == nil {
					resp.Body.Close()
					t.Errorf("HTTP/1.1-only client got %s from the h2-only upstream, want the connection refused", resp.Proto)
				}
			} else if got := exchangeTwice(t, h1, url); got != c.h1Client {
				t.Errorf("HTTP/1.1-only client spoke %q, want %q", got, c.h1Client)
			}
			if got := counts.conns(); got.H1 != c.wantH1 || got.H2 != c.wantH2 {
				t.Errorf("announced connections %+v, want %d h1 and %d h2 (one per client: keep-alive)", got, c.wantH1, c.wantH2)
			}
		})
	}
}

// exchangeTwice sends a POST with a body and a GET through tr, checks both
// answers are the upstream's, and returns the protocol spoken.
func exchangeTwice(t *testing.T, tr *http.Transport, url string) string {
	t.Helper()
	client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	proto := ""
	for i := 0; i < 2; i++ {
		var resp *http.Response
		var err error
		if i == 0 {
			resp, err = client.Post(url, "text/plain", strings.NewReader(strings.Repeat("b", 10000)))
		} else {
			resp, err = client.Get(url)
		}
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != upstreamBody || resp.Header.Get("Content-Type") != "application/json" {
			t.Fatalf("request %d: %d %q %q", i, resp.StatusCode, resp.Header, body)
		}
		if proto != "" && resp.Proto != proto {
			t.Fatalf("request %d spoke %s after %s", i, resp.Proto, proto)
		}
		proto = resp.Proto
	}
	return proto
}

// gatewayBinary is $BYTEPROXY_BENCH_BIN when set, else ./cmd/byteproxy
// built once for this test process.
func gatewayBinary(t *testing.T) string {
	t.Helper()
	if b := os.Getenv("BYTEPROXY_BENCH_BIN"); b != "" {
		return b
	}
	binOnce.Do(func() { binPath, binErr = buildGateway(context.Background(), binDir) })
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// TestCaddyfilesAdapt checks that every variant of the generated
// Caddyfiles (upstream kinds, limits, metrics, the pipeline, extra
// options) is accepted by the binary and says what it should.
func TestCaddyfilesAdapt(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the gateway")
	}
	bin := gatewayBinary(t)
	const key = "0123456789abcdef0123456789abcdef"
	cfg := config{Limits: true, Metrics: true, Extra: "cors off\npressure off"}
	bare := config{ServiceExtra: "timeout 7s", CaddyExtra: "versions 1.1"}
	reload := config{Reloads: 1, Global: "grace_period 3s\nservers {\nkeepalive_interval 5s\n}"}
	cases := []struct {
		name, caddyfile string
		want, not       []string
		limits          int // occurrences of the limit, 100000000
	}{
		{"gateway", caddyfileGateway(1234, 1235, "http://127.0.0.1:1236", cfg, ""),
			[]string{`"metrics"`, `"127.0.0.1:1235"`, `"http://127.0.0.1:1236/"`, `"required":false`},
			[]string{`tls_insecure_skip_verify`}, 2},
		{"reverse", caddyfileReverse(1234, 1235, "http://127.0.0.1:1236", cfg),
			[]string{`"metrics"`, `"127.0.0.1:1235"`, `"dial":"127.0.0.1:1236"`},
			[]string{`insecure_skip_verify`, `"tls"`}, 0},
		{"gateway https", caddyfileGateway(1234, 1235, "https://127.0.0.1:1236", bare, ""),
			[]string{`"https://127.0.0.1:1236/"`, `"tls_insecure_skip_verify":true`, `"timeout":7000000000`},
			[]string{`"metrics"`}, 0},
		{"reverse https", caddyfileReverse(1234, 1235, "https://127.0.0.1:1236", bare),
			[]string{`"dial":"127.0.0.1:1236"`, `"insecure_skip_verify":true`, `"versions":["1.1"]`},
			[]string{`"metrics"`}, 0},
		{"pipeline https", caddyfileGateway(1234, 1235, "https://127.0.0.1:1236", bare, key),
			[]string{`"metrics"`, `"tls_insecure_skip_verify":true`, key, `"required":true`},
			[]string{`"upstream_limits"`}, 2},
		{"budgets", caddyfileGateway(1234, 1235, "http://127.0.0.1:1236", withBudget(bare), ""),
			[]string{`"upstream_limits":{}`, `"timeout":7000000000`},
			[]string{`"metrics"`}, 0},
		// The reload mode: -global-options on every target, a route per
		// generation that no request takes.
		{"gateway reload", withReloadRoute(caddyfileGateway(1234, 1235, "http://127.0.0.1:1236", reload, ""), 7),
			[]string{`"grace_period":3000000000`, `"keepalive_interval":5000000000`, `"` + reloadRoutePrefix + `7"`, `"http://127.0.0.1:1236/"`},
			nil, 0},
		{"reverse reload", withReloadRoute(caddyfileReverse(1234, 1235, "http://127.0.0.1:1236", reload), 8),
			[]string{`"grace_period":3000000000`, `"keepalive_interval":5000000000`, `"` + reloadRoutePrefix + `8"`, `"dial":"127.0.0.1:1236"`},
			nil, 0},
	}
	for _, c := range cases {
		js := checkAdapted(t, bin, c.name, c.caddyfile, c.want, c.not)
		if n := strings.Count(js, "100000000"); n != c.limits {
			t.Errorf("%s: %d rate limits, want %d in:\n%s", c.name, n, c.limits, js)
		}
	}
}

// checkAdapted adapts caddyfile with the binary and checks that the JSON
// has every string of want and none of not; it returns the JSON.
func checkAdapted(t *testing.T, bin, name, caddyfile string, want, not []string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(path, []byte(caddyfile), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "adapt", "--config", path, "--adapter", "caddyfile").CombinedOutput()
	if err != nil {
		t.Fatalf("%s: adapt: %v\n%s\n%s", name, err, out, caddyfile)
	}
	js := string(out)
	for _, w := range want {
		if !strings.Contains(js, w) {
			t.Errorf("%s: adapted JSON lacks %s:\n%s", name, w, js)
		}
	}
	for _, n := range not {
		if strings.Contains(js, n) {
			t.Errorf("%s: adapted JSON has %s:\n%s", name, n, js)
		}
	}
	return js
}

// smokeConfig is a whole benchmark of ~1s per target with the built-in
// generator.
func smokeConfig(t *testing.T) config {
	return config{
		Bin: gatewayBinary(t), Conns: 4, Threads: 1, Duration: time.Second, Warmup: 200 * time.Millisecond,
		Runs: 1, Gen: "go", Path: "/proxy/bench/ping", MaxErrors: 0.01, ProfileSec: 1,
		Upstream: protoBoth, UpstreamProto: protoBoth,
	}
}

// runSmoke runs the benchmark and checks that the figures are valid and
// plausible, with one table per upstream kind holding the wanted targets.
func runSmoke(t *testing.T, cfg config, kinds, names []string) *report {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var log strings.Builder
	rep, err := run(ctx, cfg, &log)
	if err != nil {
		t.Fatalf("benchmark failed: %v\n%s", err, log.String())
	}
	if !rep.Valid || len(rep.Upstreams) != len(kinds) {
		t.Fatalf("report: %+v", rep)
	}
	for i, u := range rep.Upstreams {
		if u.Kind != kinds[i] {
			t.Errorf("table %d is %q, want %q", i, u.Kind, kinds[i])
		}
		if len(u.Targets) != len(names) {
			t.Fatalf("%s: %d targets, want %v", u.Kind, len(u.Targets), names)
		}
		if u.UpstreamCPUPerReqUs <= 0 {
			t.Errorf("%s: upstream cpu/req %v", u.Kind, u.UpstreamCPUPerReqUs)
		}
		var opened int64
		for j, tr := range u.Targets {
			if tr.Name != names[j] {
				t.Errorf("%s: target %d is %q, want %q", u.Kind, j, tr.Name, names[j])
			}
			if tr.ReqPerSec < 50 || tr.P50Ms <= 0 || tr.P99Ms < tr.P50Ms || tr.Requests < 50 {
				t.Errorf("%s/%s: implausible figures %+v", u.Kind, tr.Name, tr)
			}
			if tr.CPUPerReqUs <= 0 || tr.GenCPUPerReqUs <= 0 {
				t.Errorf("%s/%s: no CPU time measured: %+v", u.Kind, tr.Name, tr)
			}
			if tr.MachineBusy <= 0 || tr.MachineBusy > 1 {
				t.Errorf("%s/%s: machine busy %v", u.Kind, tr.Name, tr.MachineBusy)
			}
			opened += tr.UpstreamConns.H1 + tr.UpstreamConns.H2
		}
		// The upstream reports each connection on its output, read as it
		// comes: one opened as a target's phase ends may be counted in the
		// next target's, so the count is asserted for the upstream kind.
		if opened == 0 {
			t.Errorf("%s: no upstream connection counted", u.Kind)
		}
		if len(u.Ratios) == 0 || u.Ratios[0].Throughput <= 0 || u.Ratios[0].P99 <= 0 {
			t.Errorf("%s: ratios missing: %+v", u.Kind, u.Ratios)
		}
	}
	var table strings.Builder
	rep.printTable(&table)
	for _, kind := range kinds {
		if !strings.Contains(table.String(), "upstream "+kind) {
			t.Errorf("table lacks the %s upstream:\n%s", kind, table.String())
		}
	}
	for _, want := range []string{"caddy-reverse", "byteproxy", "ratio byteproxy/caddy-reverse: throughput"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}
	t.Logf("%s\n%s", log.String(), table.String())
	return rep
}

// TestSmoke runs the default benchmark (both upstream kinds, the HTTPS one
// offering h2 and http/1.1) with -profile.
func TestSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the whole benchmark")
	}
	cfg := smokeConfig(t)
	cfg.Profile = filepath.Join(t.TempDir(), "gw.pprof")
	rep := runSmoke(t, cfg, []string{kindHTTP, kindHTTPS}, []string{nameCaddy, nameGateway})
	if got := rep.Upstreams[1].Offered; got != "h2+http/1.1" {
		t.Errorf("https upstream offered %q", got)
	}
	for _, kind := range []string{kindHTTP, kindHTTPS} {
		for _, f := range []string{"gw-" + kind + ".pprof", "gw-" + kind + ".pprof.allocs"} {
			if fi, err := os.Stat(filepath.Join(filepath.Dir(cfg.Profile), f)); err != nil || fi.Size() == 0 {
				t.Errorf("no profile %s written: %v", f, err)
			}
		}
	}
	// Nobody speaks HTTP/2 to the plain upstream; plain Caddy (which
	// prefers h2 when offered) speaks it to the HTTPS one, so the HTTP/2
	// side of the upstream works through a real proxy. Which protocol the
	// gateway picks when both are offered is its own choice (issue 16).
	for _, tr := range rep.Upstreams[0].Targets {
		if tr.UpstreamConns.H2 != 0 {
			t.Errorf("http/%s: h2 connections to the plain upstream: %+v", tr.Name, tr.UpstreamConns)
		}
	}
	if c := rep.Upstreams[1].Targets[0].UpstreamConns; c.H1 != 0 || c.H2 == 0 {
		t.Errorf("https/%s: want HTTP/2 only: %+v", nameCaddy, c)
	}
}

// TestSmokeModes runs the other modes: the full pipeline next to the bare
// gateway (plain-http upstream), and the HTTPS upstream offering HTTP/1.1
// only and HTTP/2 only, checking that every target spoke what was offered.
func TestSmokeModes(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the whole benchmark")
	}
	t.Run("pipeline", func(t *testing.T) {
		cfg := smokeConfig(t)
		cfg.Upstream, cfg.Pipeline = kindHTTP, true
		rep := runSmoke(t, cfg, []string{kindHTTP}, []string{nameCaddy, nameGateway, namePipeline})
		rs := rep.Upstreams[0].Ratios
		if len(rs) != 3 || rs[2].Of != namePipeline || rs[2].To != nameGateway || rs[2].Throughput <= 0 {
			t.Errorf("pipeline ratios: %+v", rs)
		}
	})
	t.Run("budgets", func(t *testing.T) {
		cfg := smokeConfig(t)
		cfg.Upstream, cfg.Budgets = kindHTTP, true
		rep := runSmoke(t, cfg, []string{kindHTTP}, []string{nameCaddy, nameGateway, nameBudgets})
		rs := rep.Upstreams[0].Ratios
		if len(rs) != 3 || rs[2].Of != nameBudgets || rs[2].To != nameGateway || rs[2].Throughput <= 0 {
			t.Errorf("budgets ratios: %+v", rs)
		}
	})
	// The gateway's http_version auto speaks HTTP/1.1 (the lean path) to an
	// upstream that agrees to it by ALPN; the h2-only upstream declines in
	// the handshake, so the gateway must reach it in HTTP/2 alone, with no
	// request failed (modules/services, TestAutoTLSFallsBackToHTTP2).
	for _, proto := range []string{protoH1, protoH2} {
		t.Run("https-"+proto, func(t *testing.T) {
			cfg := smokeConfig(t)
			cfg.Upstream, cfg.UpstreamProto = kindHTTPS, proto
			rep := runSmoke(t, cfg, []string{kindHTTPS}, []string{nameCaddy, nameGateway})
			// No target may speak the protocol that was not offered. Opened
			// connections are counted per target from the upstream's total,
			// and a connection one target opens as its phase ends may be
			// counted in the next one's, so "some" is asserted for the run.
			var opened int64
			for _, tr := range rep.Upstreams[0].Targets {
				c := tr.UpstreamConns
				if (proto == protoH1 && c.H2 != 0) || (proto == protoH2 && c.H1 != 0) {
					t.Errorf("%s: upstream offered %s only, target opened %+v", tr.Name, proto, c)
				}
				opened += c.H1 + c.H2
			}
			if opened == 0 {
				t.Errorf("upstream offered %s only, and no target opened a connection", proto)
			}
		})
	}
}

// TestPreflight checks the answer check, and that a target given a proxy
// key must refuse the request without it (else the "full pipeline" would
// be measured without its key check).
func TestPreflight(t *testing.T) {
	var checksKey atomic.Bool
	checksKey.Store(true)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if checksKey.Load() && r.Header.Get(proxyKeyHeader) != "k" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		_, _ = io.WriteString(w, upstreamBody)
	}))
	defer srv.Close()
	ctx := context.Background()
	withKey := endpoint{URL: srv.URL + "/p", Headers: []string{proxyKeyHeader + ": k"}}
	if err := preflight(ctx, withKey); err != nil {
		t.Errorf("key checked and sent: %v", err)
	}
	if err := preflight(ctx, endpoint{URL: srv.URL}); err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("key checked, not sent: %v, want the 401 reported", err)
	}
	checksKey.Store(false)
	if err := preflight(ctx, withKey); err == nil || !strings.Contains(err.Error(), "not checked") {
		t.Errorf("key not checked: %v, want an error", err)
	}
	if err := preflight(ctx, endpoint{URL: srv.URL}); err != nil {
		t.Errorf("no key, none checked: %v", err)
	}
}

// TestUpstreamSimDiscord checks -upstream-sim discord: the flag's checks,
// the generated Caddyfiles (the discord preset with the bot token from the
// gateway's environment, upstream_limits off or with a global limit that
// never binds, plain Caddy mapping the path onto /api/), and a short run
// through the simulator: every answer 2xx, the simulator saw the gateway's
// bot token on the gateway targets' requests and sent no 429.
func TestUpstreamSimDiscord(t *testing.T) {
	c, err := parseFlags([]string{"-upstream-sim", "discord", "-budgets"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.UpstreamSim != simDiscord || c.Path != simPath || strings.Join(c.kinds(), ",") != kindHTTP || !c.Budgets {
		t.Errorf("parsed %+v, kinds %v", c, c.kinds())
	}
	if c, err = parseFlags([]string{"-upstream-sim", "discord", "-path", "/proxy/bench/v10/users/@me", "-upstream", "http"}, io.Discard); err != nil || c.Path != "/proxy/bench/v10/users/@me" {
		t.Errorf("-path with -upstream-sim: %q, %v", c.Path, err)
	}
	for _, bad := range [][]string{{"-upstream-sim", "github"}, {"-upstream-sim", "discord", "-upstream", "https"},
		{"-upstream-sim", "discord", "-upstream-proto", "h1"}} {
		if _, err := parseFlags(bad, io.Discard); err == nil {
			t.Errorf("parseFlags(%v) accepted it", bad)
		}
	}
	if testing.Short() {
		t.Skip("builds the gateway and runs the benchmark")
	}

	bin := gatewayBinary(t)
	const up = "http://127.0.0.1:1236"
	sim := config{UpstreamSim: simDiscord}
	cases := []struct {
		name      string
		caddyfile string
		want, not []string
	}{
		{nameCaddy, caddyfileReverse(1234, 1235, up, sim),
			[]string{`"uri_substring":[{"find":"/proxy/bench/","limit":1,"replace":"/api/"}]`, `"dial":"127.0.0.1:1236"`},
			[]string{`"byteproxy"`}},
		{nameGateway, caddyfileGateway(1234, 1235, up, sim, ""),
			[]string{`"preset":"discord"`, `"base_url":"http://127.0.0.1:1236/api/"`, `"token":"{env.` + simTokenEnv + `}"`,
				`"upstream_limits":{"disabled":true}`, `"max_requests":100000000`},
			[]string{`global_limit`}},
		{nameBudgets, caddyfileGateway(1234, 1235, up, withBudget(sim), ""),
			[]string{`"preset":"discord"`, `"token":"{env.` + simTokenEnv + `}"`,
				`"upstream_limits":{"global_limit":100000,"global_window":100000000}`, `"max_requests":100000000`},
			[]string{`"disabled"`}},
	}
	for _, c := range cases {
		cf, err := simCaddyfile(c.caddyfile, c.name, up)
		if err != nil {
			t.Fatal(err)
		}
		checkAdapted(t, bin, c.name, cf, c.want, c.not)
	}
	if _, err := simCaddyfile("{\n}\n", nameGateway, up); err == nil {
		t.Error("simCaddyfile changed a Caddyfile without the bench service")
	}

	cfg := smokeConfig(t)
	cfg.Upstream, cfg.UpstreamSim, cfg.Budgets, cfg.Path = kindHTTP, simDiscord, true, simPath
	rep := runSmoke(t, cfg, []string{kindHTTP}, []string{nameCaddy, nameGateway, nameBudgets})
	s := rep.Simulator
	if s == nil {
		t.Fatal("no simulator report")
	}
	ts := rep.Upstreams[0].Targets
	// Only the gateway targets have the gateway's token; plain Caddy's
	// client sends its own, and once (the preflight's check) none.
	if gw := ts[1].Requests + ts[2].Requests; s.GatewayToken < gw {
		t.Errorf("the simulator saw the gateway's token %d times, the gateway targets answered %d: %+v", s.GatewayToken, gw, s)
	}
	if s.ClientToken < ts[0].Requests || s.OtherToken != 1 || s.ByStatus[http.StatusUnauthorized] != 1 {
		t.Errorf("plain Caddy: %d answered, simulator %+v", ts[0].Requests, s)
	}
	if s.Upstream429s != 0 || s.ByStatus[http.StatusOK] < int(ts[0].Requests+ts[1].Requests+ts[2].Requests) || len(s.ByStatus) != 2 {
		t.Errorf("simulator answers: %+v", s)
	}
	var table strings.Builder
	rep.printTable(&table)
	if !strings.Contains(table.String(), "discord simulator saw") || strings.Contains(table.String(), "bench-gw-") {
		t.Errorf("table:\n%s", table.String())
	}
}

// TestSmokeReloads runs the reload mode briefly (3 reloads per target in
// 2 s, 8 connections) and checks that every reload was made and every
// figure reported. How many requests fail is the measurement, not
// asserted: it depends on the machine.
func TestSmokeReloads(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the benchmark")
	}
	if _, err := exec.LookPath("wrk"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("wrk is not installed (.ci/run installs it)")
		}
		t.Skip("the reload mode needs wrk")
	}
	cfg := smokeConfig(t)
	cfg.Gen, cfg.Upstream, cfg.Reloads, cfg.Duration = "wrk", kindHTTP, 3, 2*time.Second
	cfg.Global = "grace_period 10s"
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var log strings.Builder
	rep, err := run(ctx, cfg, &log)
	if err != nil {
		t.Fatalf("benchmark failed: %v\n%s", err, log.String())
	}
	if !rep.Valid || rep.Reloads == nil || len(rep.Reloads.Upstreams) != 1 || len(rep.Upstreams) != 0 {
		t.Fatalf("report: %+v", rep)
	}
	u := rep.Reloads.Upstreams[0]
	if len(u.Targets) != 2 || u.Targets[0].Name != nameCaddy || u.Targets[1].Name != nameGateway {
		t.Fatalf("targets: %+v", u.Targets)
	}
	for _, tr := range u.Targets {
		if tr.Reloads != 3 || len(tr.ReloadsFailed) != 0 || tr.Requests < 50 || tr.LoadMs <= 0 || len(tr.Runs) != 1 {
			t.Errorf("%s: %+v", tr.Name, tr)
		}
		if sum := tr.Socket.Connect + tr.Socket.Read + tr.Socket.Write + tr.Socket.Timeout + tr.Non2xx; sum != tr.Failed {
			t.Errorf("%s: failed %d, but the kinds sum to %d", tr.Name, tr.Failed, sum)
		}
	}
	var table strings.Builder
	rep.printTable(&table)
	for _, want := range []string{"3 config reloads", "requests that failed during 3 reloads", `global options of every target: "grace_period 10s"`, nameCaddy, nameGateway} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}
	t.Logf("%s\n%s", log.String(), table.String())
}
