package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
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
		Non2xx: 12, Errors: 10, BytesRead: 30 * 1024 * 1024,
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
		r := &report{Targets: []targetReport{good, c.t}}
		err := r.validate(0.01)
		if (err == nil) != c.ok || r.Valid != c.ok {
			t.Errorf("%s: err %v valid %v, want ok=%v", name, err, r.Valid, c.ok)
		}
		if err != nil && !errors.Is(err, errInvalid) {
			t.Errorf("%s: error %v does not wrap errInvalid", name, err)
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
	for _, bad := range [][]string{{"-c", "0"}, {"-t", "60"}, {"-runs", "0"}, {"-gen", "ab"}, {"-path", "x"}, {"-d", "0s"}, {"extra"}, {"-env", "novalue"}} {
		if _, err := parseFlags(bad, io.Discard); err == nil {
			t.Errorf("parseFlags(%v) accepted it", bad)
		}
	}
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
// Caddyfiles (limits, metrics, extra options) is accepted by the binary.
func TestCaddyfilesAdapt(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the gateway")
	}
	bin := gatewayBinary(t)
	cfg := config{Limits: true, Metrics: true, Extra: "cors off\npressure off"}
	for name, cf := range map[string]string{
		"gateway": caddyfileGateway(1234, 1235, "127.0.0.1:1236", cfg),
		"reverse": caddyfileReverse(1234, 1235, "127.0.0.1:1236", cfg),
	} {
		path := filepath.Join(t.TempDir(), "Caddyfile")
		if err := os.WriteFile(path, []byte(cf), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(bin, "adapt", "--config", path, "--adapter", "caddyfile").CombinedOutput()
		if err != nil {
			t.Fatalf("%s: adapt: %v\n%s\n%s", name, err, out, cf)
		}
		js := string(out)
		for _, want := range []string{`"metrics"`, `"127.0.0.1:1235"`} {
			if !strings.Contains(js, want) {
				t.Errorf("%s: adapted JSON lacks %s:\n%s", name, want, js)
			}
		}
		if name == "gateway" && strings.Count(js, "100000000") != 2 {
			t.Errorf("gateway: want the service and the client limit in:\n%s", js)
		}
	}
}

// TestSmoke runs the whole benchmark, ~1s per target with the built-in
// generator, and checks that the figures are valid and plausible.
func TestSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the whole benchmark")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cfg := config{
		Bin: gatewayBinary(t), Conns: 4, Threads: 1, Duration: time.Second, Warmup: 200 * time.Millisecond,
		Runs: 1, Gen: "go", Path: "/proxy/bench/ping", MaxErrors: 0.01, ProfileSec: 1,
		Profile: filepath.Join(t.TempDir(), "cpu.pprof"),
	}
	var log strings.Builder
	rep, err := run(ctx, cfg, &log)
	if err != nil {
		t.Fatalf("benchmark failed: %v\n%s", err, log.String())
	}
	if !rep.Valid || len(rep.Targets) != 2 {
		t.Fatalf("report: %+v", rep)
	}
	for _, tr := range rep.Targets {
		if tr.ReqPerSec < 50 || tr.P50Ms <= 0 || tr.P99Ms < tr.P50Ms || tr.Requests < 50 {
			t.Errorf("%s: implausible figures %+v", tr.Name, tr)
		}
		if tr.CPUPerReqUs <= 0 || tr.GenCPUPerReqUs <= 0 {
			t.Errorf("%s: no CPU time measured: %+v", tr.Name, tr)
		}
		if tr.MachineBusy <= 0 || tr.MachineBusy > 1 {
			t.Errorf("%s: machine busy %v", tr.Name, tr.MachineBusy)
		}
	}
	if rep.RatioThroughput <= 0 || rep.RatioP99 <= 0 {
		t.Errorf("ratios missing: %+v", rep)
	}
	if fi, err := os.Stat(cfg.Profile); err != nil || fi.Size() == 0 {
		t.Errorf("no CPU profile written: %v", err)
	}
	var table strings.Builder
	rep.printTable(&table)
	for _, want := range []string{"caddy-reverse", "byteproxy", "ratio byteproxy/caddy-reverse: throughput"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}
	t.Logf("%s\n%s", log.String(), table.String())
}
