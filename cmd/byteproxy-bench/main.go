// Command byteproxy-bench is ByteProxy's load benchmark. It builds (or
// takes, -bin) the byteproxy binary, starts a tiny local upstream in its
// own process, a plain Caddy `reverse_proxy` and the ByteProxy gateway
// (both the same binary, each in its own process on loopback), drives the
// same load at each in turn (wrk when installed, else a built-in Go
// generator) and prints req/s, p50, p99 and CPU time per request for each,
// and the ratio gateway / plain Caddy.
//
//	go run ./cmd/byteproxy-bench -runs 3 -d 10s
//	go run ./cmd/byteproxy-bench -limits      # service and client rate limits on
//	go run ./cmd/byteproxy-bench -metrics     # Caddy metrics on (both targets)
//	go run ./cmd/byteproxy-bench -profile gw.pprof   # also CPU and allocation profiles of the gateway
//
// CPU per request is the target process's utime+stime (from
// /proc/<pid>/stat) over the measured run divided by the requests it served;
// warmup is excluded. The upstream and the load generator run in other
// processes, so their CPU is not counted. The run fails (exit status 1) when
// more than -max-errors of the responses are errors or not 2xx, so a broken
// gateway never produces numbers that look valid.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// config is the benchmark's settings, from flags.
type config struct {
	Bin        string
	Conns      int
	Threads    int
	Duration   time.Duration
	Warmup     time.Duration
	Runs       int
	Limits     bool
	Metrics    bool
	JSON       bool
	Gen        string // auto, wrk or go
	Path       string
	MaxErrors  float64
	Profile    string
	ProfileSec int
	Extra      string   // extra lines for the byteproxy global option
	Env        []string // extra environment (K=V) for both targets
}

// envFlag collects repeated -env K=V flags.
type envFlag struct{ list *[]string }

func (e envFlag) String() string {
	if e.list == nil {
		return ""
	}
	return strings.Join(*e.list, " ")
}

func (e envFlag) Set(v string) error {
	if k, _, ok := strings.Cut(v, "="); !ok || k == "" {
		return fmt.Errorf("want K=V, got %q", v)
	}
	*e.list = append(*e.list, v)
	return nil
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("byteproxy-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.Bin, "bin", "", "byteproxy binary to use (default: go build ./cmd/byteproxy into a temporary directory)")
	fs.IntVar(&c.Conns, "c", 50, "concurrent connections")
	fs.IntVar(&c.Threads, "t", 2, "wrk threads")
	fs.DurationVar(&c.Duration, "d", 10*time.Second, "measured duration per target and run (wrk rounds up to whole seconds)")
	fs.DurationVar(&c.Warmup, "warmup", 2*time.Second, "unmeasured warmup before each measured run (0 for none)")
	fs.IntVar(&c.Runs, "runs", 1, "runs per target, alternating the order; the median is reported")
	fs.BoolVar(&c.Limits, "limits", false, "turn on a service rate_limit and a client_rate_limit high enough never to trigger")
	fs.BoolVar(&c.Metrics, "metrics", false, "turn on Caddy's metrics (global `metrics` option) on both targets")
	fs.BoolVar(&c.JSON, "json", false, "print machine-readable results on stdout")
	fs.StringVar(&c.Gen, "gen", "auto", "load generator: auto (wrk if installed), wrk or go")
	fs.StringVar(&c.Path, "path", "/proxy/bench/ping", "request path (the same on both targets)")
	fs.Float64Var(&c.MaxErrors, "max-errors", 0.01, "fail when more than this fraction of responses are errors or not 2xx")
	fs.StringVar(&c.Profile, "profile", "", "after the measured runs, write a CPU profile of the gateway under the same load to this file (and its allocations to FILE.allocs)")
	fs.IntVar(&c.ProfileSec, "profile-seconds", 5, "length of the -profile CPU profile in seconds")
	fs.StringVar(&c.Extra, "gateway-options", "", "extra lines for the gateway's byteproxy global option, e.g. \"pressure off\" or \"cors off\"")
	fs.Var(envFlag{&c.Env}, "env", "extra environment K=V for both targets, e.g. GOGC=400 (repeatable)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	switch {
	case c.Conns < 1 || c.Conns > 10000:
		return c, errors.New("-c must be between 1 and 10000")
	case c.Threads < 1 || c.Threads > c.Conns:
		return c, errors.New("-t must be between 1 and -c")
	case c.Duration <= 0 || c.Duration > time.Hour:
		return c, errors.New("-d must be positive and at most 1h")
	case c.Warmup < 0 || c.Warmup > 10*time.Minute:
		return c, errors.New("-warmup must be between 0 and 10m")
	case c.Runs < 1 || c.Runs > 100:
		return c, errors.New("-runs must be between 1 and 100")
	case c.Gen != "auto" && c.Gen != "wrk" && c.Gen != "go":
		return c, errors.New("-gen must be auto, wrk or go")
	case !strings.HasPrefix(c.Path, "/"):
		return c, errors.New("-path must start with /")
	case c.ProfileSec < 1 || c.ProfileSec > 600:
		return c, errors.New("-profile-seconds must be between 1 and 600")
	}
	return c, nil
}

func main() {
	if os.Getenv(roleEnv) == "upstream" {
		runUpstream()
		return
	}
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "byteproxy-bench:", err)
		os.Exit(2)
	}
	// Ctrl-C / SIGTERM cancel the context; run's deferred cleanup then
	// kills every child before we exit.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := run(ctx, cfg, os.Stderr)
	if rep != nil {
		if cfg.JSON {
			enc := json.NewEncoder(os.Stdout)
			enc.SetIndent("", "  ")
			_ = enc.Encode(rep)
		} else {
			rep.printTable(os.Stdout)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "byteproxy-bench: FAILED:", err)
		stop()
		os.Exit(1)
	}
}

// target is one server under test.
type target struct {
	Name      string
	URL       string
	admin     int
	proc      *child
	preflight string // why the first request did not get the upstream's answer
	samples   []sample
}

const (
	nameCaddy   = "caddy-reverse"
	nameGateway = "byteproxy"
)

// run performs the whole benchmark. Progress goes to log; the report is
// returned (also alongside an error when figures exist but are invalid).
func run(ctx context.Context, cfg config, log io.Writer) (*report, error) {
	// Every loop below is bounded; this deadline bounds the whole run too.
	per := cfg.Warmup + cfg.Duration + 35*time.Second
	budget := 5*time.Minute + time.Duration(2*cfg.Runs+1)*per + time.Duration(cfg.ProfileSec)*time.Second
	ctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()

	tmp, err := os.MkdirTemp("", "byteproxy-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	var cs children
	defer cs.killAll()

	others := otherLoad() // before we start our own children
	if len(others) > 0 {
		fmt.Fprintf(log, "WARNING: other load generators are running and will distort the figures: %s\n", strings.Join(others, " "))
	}
	gen, err := pickGenerator(cfg)
	if err != nil {
		return nil, err
	}
	bin := cfg.Bin
	if bin == "" {
		fmt.Fprintln(log, "building ./cmd/byteproxy ...")
		if bin, err = buildGateway(ctx, tmp); err != nil {
			return nil, err
		}
	}
	if bin, err = filepath.Abs(bin); err != nil {
		return nil, err
	}

	up, upAddr, err := startUpstream(ctx, &cs)
	if err != nil {
		return nil, err
	}
	targets, err := startTargets(ctx, &cs, cfg, bin, tmp, upAddr)
	if err != nil {
		return nil, err
	}
	for _, t := range targets {
		if err := preflight(ctx, t.URL); err != nil {
			// Measure anyway (the figures say what a broken target costs)
			// but the report will be marked invalid.
			t.preflight = err.Error()
			fmt.Fprintf(log, "WARNING: %s: %v\n", t.Name, err)
		}
	}

	rep := &report{
		Env: cfg.Env, Generator: gen.Name(), Duration: cfg.Duration.String(), Warmup: cfg.Warmup.String(),
		Runs: cfg.Runs, Conns: cfg.Conns, Limits: cfg.Limits, Metrics: cfg.Metrics,
		GatewayOptions: cfg.Extra, Path: cfg.Path, Binary: bin,
		CPUs: runtime.NumCPU(), LoadBefore: loadAvg(), OtherLoad: others,
	}
	fmt.Fprintf(log, "%s, %s per target, %d run(s), load average %.2f on %d CPUs\n",
		gen.Name(), cfg.Duration, cfg.Runs, rep.LoadBefore, rep.CPUs)
	upBefore, _ := readCPU(up.cmd.Process.Pid)
	var upRequests int64
	for r := 0; r < cfg.Runs; r++ {
		order := targets
		if r%2 == 1 { // alternate to cancel out drift (thermal, neighbours)
			order = []*target{targets[1], targets[0]}
		}
		for _, t := range order {
			s, err := measure(ctx, gen, t, cfg)
			if err != nil {
				return nil, fmt.Errorf("%s run %d: %w", t.Name, r+1, err)
			}
			t.samples = append(t.samples, s)
			upRequests += s.Requests
			fmt.Fprintf(log, "run %d/%d %-14s %s\n", r+1, cfg.Runs, t.Name, s.line())
		}
	}
	upAfter, _ := readCPU(up.cmd.Process.Pid)
	rep.UpstreamCPUPerReqUs = us(cpuPerRequest(upBefore, upAfter, upRequests))
	rep.LoadAfter = loadAvg()
	rep.summarize(targets)

	if cfg.Profile != "" {
		if err := profileGateway(ctx, gen, targets[1], cfg, log); err != nil {
			return rep, fmt.Errorf("profile: %w", err)
		}
		fmt.Fprintf(log, "CPU profile written to %s, allocations to %s.allocs; inspect with:\n  go tool pprof -top %s %s\n",
			cfg.Profile, cfg.Profile, bin, cfg.Profile)
	}
	for _, t := range targets {
		if t.proc.exited() {
			return rep, fmt.Errorf("%s exited during the benchmark:\n%s", t.Name, t.proc.tail(4000))
		}
	}
	return rep, rep.validate(cfg.MaxErrors)
}

func pickGenerator(cfg config) (generator, error) {
	if cfg.Gen != "go" {
		path, err := exec.LookPath("wrk")
		if err == nil {
			return wrkGen{path: path, threads: cfg.Threads, conns: cfg.Conns}, nil
		}
		if cfg.Gen == "wrk" {
			return nil, fmt.Errorf("-gen wrk: %w", err)
		}
	}
	return goGen{conns: cfg.Conns}, nil
}

// startTargets starts plain Caddy and the gateway, in that order.
func startTargets(ctx context.Context, cs *children, cfg config, bin, tmp, upAddr string) ([]*target, error) {
	var targets []*target
	for _, name := range []string{nameCaddy, nameGateway} {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		admin, err := freePort()
		if err != nil {
			return nil, err
		}
		var cf string
		if name == nameCaddy {
			cf = caddyfileReverse(port, admin, upAddr, cfg)
		} else {
			cf = caddyfileGateway(port, admin, upAddr, cfg)
		}
		p, err := startCaddy(ctx, cs, name, bin, filepath.Join(tmp, name), cf, port, cfg.Env)
		if err != nil {
			return nil, err
		}
		targets = append(targets, &target{
			Name: name, URL: "http://127.0.0.1:" + strconv.Itoa(port) + cfg.Path, admin: admin, proc: p,
		})
	}
	return targets, nil
}

// globalOptions are shared by both targets so that they differ only in
// the handler: own admin port (for pprof; never the default 2019 another
// process may hold), no HTTPS, optionally metrics.
func globalOptions(admin int, cfg config) string {
	s := fmt.Sprintf("\tadmin 127.0.0.1:%d\n\tauto_https off\n\tpersist_config off\n", admin)
	if cfg.Metrics {
		s += "\tmetrics\n"
	}
	return s
}

func caddyfileReverse(port, admin int, upAddr string, cfg config) string {
	return fmt.Sprintf("{\n%s}\n\n:%d {\n\treverse_proxy %s\n}\n", globalOptions(admin, cfg), port, upAddr)
}

func caddyfileGateway(port, admin int, upAddr string, cfg config) string {
	var b strings.Builder
	fmt.Fprintf(&b, "{\n%s\tbyteproxy {\n", globalOptions(admin, cfg))
	b.WriteString("\t\tauth proxy {\n\t\t\trequired false\n\t\t}\n")
	if cfg.Limits {
		b.WriteString("\t\tclient_rate_limit 100000000 1m\n")
	}
	for _, l := range strings.Split(cfg.Extra, "\n") {
		if strings.TrimSpace(l) != "" {
			b.WriteString("\t\t" + strings.TrimSpace(l) + "\n")
		}
	}
	fmt.Fprintf(&b, "\t\tservice bench {\n\t\t\tbase_url http://%s/\n", upAddr)
	if cfg.Limits {
		b.WriteString("\t\t\trate_limit 100000000 1m\n")
	}
	fmt.Fprintf(&b, "\t\t}\n\t}\n}\n\n:%d {\n\tbyteproxy\n}\n", port)
	return b.String()
}

// measure runs the warmup, then the measured load with CPU readings of the
// target process taken just around it.
func measure(ctx context.Context, gen generator, t *target, cfg config) (sample, error) {
	if cfg.Warmup > 0 {
		if _, err := gen.Run(ctx, t.URL, cfg.Warmup); err != nil {
			return sample{}, fmt.Errorf("warmup: %w", err)
		}
	}
	pid := t.proc.cmd.Process.Pid
	m0, mErr := readMachineCPU()
	before, cpuErr := readCPU(pid)
	res, err := gen.Run(ctx, t.URL, cfg.Duration)
	if err != nil {
		return sample{}, err
	}
	after, cpuErr2 := readCPU(pid)
	m1, mErr2 := readMachineCPU()
	s := sample{loadResult: res, CPUPerReq: -1, Busy: -1}
	if mErr == nil && mErr2 == nil {
		s.Busy = busyFraction(m0, m1)
	}
	if cpuErr == nil && cpuErr2 == nil {
		s.CPUPerReq = cpuPerRequest(before, after, res.Requests)
		s.CPU = after.total() - before.total()
	}
	return s, nil
}

// profileGateway runs one more (unreported) load run at the gateway and
// fetches a CPU profile from its admin endpoint meanwhile.
func profileGateway(ctx context.Context, gen generator, t *target, cfg config, log io.Writer) error {
	d := time.Duration(cfg.ProfileSec)*time.Second + 3*time.Second
	fmt.Fprintf(log, "profiling %s for %ds under load ...\n", t.Name, cfg.ProfileSec)
	if cfg.Warmup > 0 {
		if _, err := gen.Run(ctx, t.URL, cfg.Warmup); err != nil {
			return err
		}
	}
	errc := make(chan error, 1)
	go func() {
		_, err := gen.Run(ctx, t.URL, d)
		errc <- err
	}()
	url := fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/profile?seconds=%d", t.admin, cfg.ProfileSec)
	perr := fetchToFile(ctx, url, cfg.Profile, time.Duration(cfg.ProfileSec)*time.Second+30*time.Second)
	if err := <-errc; err != nil {
		return err
	}
	if perr != nil {
		return perr
	}
	// Allocations since start (go tool pprof -sample_index=alloc_space).
	url = fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/allocs", t.admin)
	return fetchToFile(ctx, url, cfg.Profile+".allocs", 30*time.Second)
}
