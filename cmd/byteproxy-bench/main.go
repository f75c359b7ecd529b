// Command byteproxy-bench is ByteProxy's load benchmark. It builds (or
// takes, -bin) the byteproxy binary, starts tiny local upstreams in their
// own processes — plain HTTP and HTTPS (self-signed, HTTP/2 and HTTP/1.1
// offered) — and for each a plain Caddy `reverse_proxy` and the ByteProxy
// gateway (both the same binary, each in its own process on loopback),
// drives the same load at each in turn (wrk when installed, else a
// built-in Go generator) and prints, per upstream kind, req/s, p50, p99
// and CPU time per request for each target, and the ratios gateway /
// plain Caddy measured in the same run.
//
//	go run ./cmd/byteproxy-bench -runs 3 -d 10s              # both upstream kinds
//	go run ./cmd/byteproxy-bench -upstream https             # HTTPS upstream only
//	go run ./cmd/byteproxy-bench -upstream-proto h1          # HTTPS upstream offers HTTP/1.1 only
//	go run ./cmd/byteproxy-bench -pipeline                   # also the full pipeline, ratio to the bare gateway
//	go run ./cmd/byteproxy-bench -limits                     # service and client rate limits on
//	go run ./cmd/byteproxy-bench -budgets                    # also the gateway with an upstream budget, ratio to it without
//	go run ./cmd/byteproxy-bench -budgets -upstream-sim discord   # the same against the Discord simulator (real X-RateLimit-* headers)
//	go run ./cmd/byteproxy-bench -metrics                    # Caddy metrics on (every target)
//	go run ./cmd/byteproxy-bench -profile gw.pprof           # also CPU and allocation profiles of the gateway
//	go run ./cmd/byteproxy-bench -upstream http -reloads 20 -d 20s   # failed requests during 20 config reloads
//	go run ./cmd/byteproxy-bench -upstream http -reloads 20 -d 20s -global-options "grace_period 10s"
//
// CPU per request is the target process's utime+stime (from
// /proc/<pid>/stat) over the measured run divided by the requests it served;
// warmup is excluded. The upstreams and the load generator run in other
// processes, so their CPU is not counted. The run fails (exit status 1) when
// more than -max-errors of the responses are errors or not 2xx, so a broken
// gateway never produces numbers that look valid.
//
// With -upstream-sim discord every target proxies to the Discord simulator
// of internal/upstreamsim/discord (served by the upstream process instead
// of the plain-http upstream) on GET /api/v10/channels/{id}/messages, with
// limits that never bind: the gateway's service is the discord preset,
// sending a fake bot token from its own environment; with -budgets its
// engine mirrors the simulator's X-RateLimit-* headers and global limit.
// Plain Caddy maps the same path and its client sends another fake token.
// The report adds what the simulator saw (requests by token, statuses,
// Discord 429s). See simupstream.go.
//
// With -reloads N the benchmark measures config reloads instead: while wrk
// runs at each target, N changed Caddyfiles are loaded through its admin
// endpoint (POST /load, what `byteproxy reload` does), and the report counts
// the requests that failed, by wrk's kind of socket error (connect, read,
// write, timeout) and non-2xx, for plain Caddy and the gateway in the same
// run. See reloads.go.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
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
	"slices"
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
	Pipeline   bool
	Budgets    bool
	JSON       bool
	Gen        string // auto, wrk or go
	Path       string
	MaxErrors  float64
	Profile    string
	ProfileSec int
	Upstream   string // http, https or both
	// UpstreamProto is what the HTTPS upstream offers by ALPN: h1, h2 or both.
	UpstreamProto string
	// UpstreamDelay is the upstream's wait before each answer.
	UpstreamDelay time.Duration
	Extra         string   // extra lines for the byteproxy global option
	ServiceExtra  string   // extra lines for the gateway's service block
	CaddyExtra    string   // extra lines for plain Caddy's `transport http` block
	Global        string   // extra lines for every target's global options block
	Reloads       int      // reload mode: config reloads per measured run (0: throughput mode)
	Env           []string // extra environment (K=V) for every target
	// UpstreamSim is the simulator every target proxies to instead of the
	// plain upstream ("" or discord; simupstream.go).
	UpstreamSim string
	simTokens   simTokens // the run's fake bot tokens, with UpstreamSim
}

// kinds lists the upstream kinds to measure, in the order of the report.
func (c config) kinds() []string {
	if c.UpstreamSim != "" {
		return []string{kindHTTP}
	}
	if c.Upstream == protoBoth || c.Upstream == "" {
		return []string{kindHTTP, kindHTTPS}
	}
	return []string{c.Upstream}
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
	fs.IntVar(&c.Runs, "runs", 1, "rounds over every target, alternating the order; the median is reported")
	fs.StringVar(&c.Upstream, "upstream", protoBoth, "upstream kind: http, https (self-signed; both proxies skip verification) or both (one table each)")
	fs.StringVar(&c.UpstreamProto, "upstream-proto", protoBoth, "what the HTTPS upstream offers by ALPN: h1 (HTTP/1.1 only), h2 (HTTP/2 only; other connections are refused) or both")
	fs.DurationVar(&c.UpstreamDelay, "upstream-delay", 0, "the upstream waits this long before each answer (an API's latency), so that every target's throughput is bounded by the upstream, e.g. 5ms")
	fs.BoolVar(&c.Limits, "limits", false, "turn on a service rate_limit and a client_rate_limit high enough never to trigger")
	fs.BoolVar(&c.Metrics, "metrics", false, "turn on Caddy's metrics (global `metrics` option) on every target")
	fs.BoolVar(&c.Pipeline, "pipeline", false, "also measure the gateway with the full pipeline (proxy key required and sent, client and service rate limits, metrics) and report its ratio to the bare gateway")
	fs.BoolVar(&c.Budgets, "budgets", false, "also measure the gateway with an upstream budget on the benchmark service (upstream_limits: every request reserved before it is sent and settled with the answer; the upstream announces no limit, so none binds) and report its ratios to plain Caddy and to the gateway without it")
	fs.BoolVar(&c.JSON, "json", false, "print machine-readable results on stdout")
	fs.StringVar(&c.Gen, "gen", "auto", "load generator: auto (wrk if installed), wrk or go")
	fs.StringVar(&c.Path, "path", "/proxy/bench/ping", "request path (the same on every target)")
	fs.Float64Var(&c.MaxErrors, "max-errors", 0.01, "fail when more than this fraction of responses are errors or not 2xx")
	fs.StringVar(&c.Profile, "profile", "", "after the measured runs, write a CPU profile of each gateway target under the same load, one per upstream kind: FILE gw.pprof gives gw-http.pprof, gw-https.pprof (and gw-https-pipeline.pprof with -pipeline), allocations in each file's .allocs")
	fs.IntVar(&c.ProfileSec, "profile-seconds", 5, "length of each -profile CPU profile in seconds")
	fs.StringVar(&c.Extra, "gateway-options", "", "extra lines for the gateway's byteproxy global option, e.g. \"pressure off\" or \"cors off\"")
	fs.StringVar(&c.ServiceExtra, "service-options", "", "extra lines for the gateway's benchmark service block (every upstream kind), e.g. a per-service upstream protocol setting")
	fs.StringVar(&c.CaddyExtra, "caddy-transport", "", "extra lines for plain Caddy's `transport http` block (every upstream kind), e.g. \"versions 1.1\"")
	fs.StringVar(&c.Global, "global-options", "", "extra lines for every target's global options block, e.g. \"grace_period 10s\" or \"servers {\\nkeepalive_interval 5s\\n}\"")
	fs.IntVar(&c.Reloads, "reloads", 0, "reload mode: load a changed Caddyfile this many times during each measured run (admin POST /load, evenly spread) and report the requests that failed; needs wrk")
	fs.StringVar(&c.UpstreamSim, "upstream-sim", "", "discord: every target proxies to the Discord simulator (plain HTTP; limits that never bind) on GET /api/v10/channels/{id}/messages; the gateway's service is the discord preset with a fake bot token (with -budgets, the engine mirrors the simulator's X-RateLimit-* headers); -path defaults to "+simPath)
	fs.Var(envFlag{&c.Env}, "env", "extra environment K=V for every target, e.g. GOGC=400 (repeatable)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if c.UpstreamSim != "" {
		if c.UpstreamSim != simDiscord {
			return c, errors.New("-upstream-sim must be discord")
		}
		if c.Upstream == kindHTTPS || c.UpstreamProto != protoBoth {
			return c, errSimFlags
		}
		pathSet := false
		fs.Visit(func(f *flag.Flag) { pathSet = pathSet || f.Name == "path" })
		if !pathSet {
			c.Path = simPath
		}
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
	case c.Upstream != kindHTTP && c.Upstream != kindHTTPS && c.Upstream != protoBoth:
		return c, errors.New("-upstream must be http, https or both")
	case c.UpstreamProto != protoH1 && c.UpstreamProto != protoH2 && c.UpstreamProto != protoBoth:
		return c, errors.New("-upstream-proto must be h1, h2 or both")
	case c.Upstream == kindHTTP && c.UpstreamProto != protoBoth:
		return c, errors.New("-upstream-proto applies to the HTTPS upstream: use it with -upstream https or both")
	case c.UpstreamDelay < 0 || c.UpstreamDelay > 10*time.Second:
		return c, errors.New("-upstream-delay must be between 0 and 10s")
	case c.Reloads < 0 || c.Reloads > 1000:
		return c, errors.New("-reloads must be between 0 and 1000")
	case c.Reloads > 0 && c.Gen == "go":
		return c, errors.New("-reloads needs wrk: Go's client resends a GET whose kept-alive connection was closed, which would hide the failures")
	case c.Reloads > 0 && c.Profile != "":
		return c, errors.New("-reloads and -profile cannot be combined")
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
	ep        endpoint
	up        *upstream // the upstream it proxies to
	admin     int
	proc      *child
	gateway   bool   // profiled with -profile
	preflight string // why the first request did not get the upstream's answer
	samples   []sample
	conns     connCounts // upstream connections it opened (preflight, warmups, measured runs)
	// caddyfile is the target's config; generation gen > 0 differs from
	// the one before in a route no request takes (reload mode).
	caddyfile  func(gen int) string
	generation int            // the config generation loaded last
	reloads    []reloadSample // reload mode: one per measured run
}

const (
	nameCaddy    = "caddy-reverse"
	nameGateway  = "byteproxy"
	namePipeline = "byteproxy-pipeline"
	nameBudgets  = "byteproxy-budgets"
)

// proxyKeyHeader carries the pipeline's proxy key.
const proxyKeyHeader = "X-API-Key"

// run performs the whole benchmark. Progress goes to log; the report is
// returned (also alongside an error when figures exist but are invalid).
func run(ctx context.Context, cfg config, log io.Writer) (*report, error) {
	kinds := cfg.kinds()
	perKind := 2
	if cfg.Pipeline {
		perKind++
	}
	if cfg.Budgets {
		perKind++
	}
	profiles := 0
	if cfg.Profile != "" {
		profiles = len(kinds) * (perKind - 1)
	}
	// Every loop below is bounded; this deadline bounds the whole run too.
	per := cfg.Warmup + cfg.Duration + 35*time.Second + time.Duration(cfg.Reloads)*reloadTimeout
	budget := 5*time.Minute + time.Duration(cfg.Runs*len(kinds)*perKind)*per +
		time.Duration(profiles)*(per+time.Duration(cfg.ProfileSec)*time.Second)
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

	if cfg.UpstreamSim != "" {
		if cfg.simTokens, err = newSimTokens(); err != nil {
			return nil, err
		}
	}
	var targets []*target // by upstream kind, then caddy, gateway, pipeline
	for _, kind := range kinds {
		up, err := startUpstream(ctx, &cs, kind, cfg.UpstreamProto, cfg.UpstreamDelay, cfg.simUpstreamEnv()...)
		if err != nil {
			return nil, err
		}
		ts, err := startTargets(ctx, &cs, cfg, bin, tmp, up)
		if err != nil {
			return nil, err
		}
		targets = append(targets, ts...)
	}
	for _, t := range targets {
		c0 := t.up.conns()
		if err := preflight(ctx, t.ep); err != nil {
			// Measure anyway (the figures say what a broken target costs)
			// but the report will be marked invalid.
			t.preflight = err.Error()
			fmt.Fprintf(log, "WARNING: %s/%s: %v\n", t.up.kind, t.Name, err)
		}
		t.conns = t.conns.add(t.up.conns().sub(c0))
	}

	rep := &report{
		Env: cfg.Env, Generator: gen.Name(), Duration: cfg.Duration.String(), Warmup: cfg.Warmup.String(),
		Runs: cfg.Runs, Conns: cfg.Conns, Limits: cfg.Limits, Metrics: cfg.Metrics, Pipeline: cfg.Pipeline, Budgets: cfg.Budgets,
		GatewayOptions: cfg.Extra, ServiceOptions: cfg.ServiceExtra, CaddyTransport: cfg.CaddyExtra,
		GlobalOptions: cfg.Global, UpstreamDelay: cfg.UpstreamDelay.String(), Path: cfg.Path, Binary: bin,
		CPUs: runtime.NumCPU(), LoadBefore: loadAvg(), OtherLoad: others, UpstreamSim: cfg.UpstreamSim,
	}
	if cfg.Reloads > 0 {
		return runReloads(ctx, cfg, gen, targets, rep, log)
	}
	fmt.Fprintf(log, "%s, %s per target, %d run(s) over %d targets, load average %.2f on %d CPUs\n",
		gen.Name(), cfg.Duration, cfg.Runs, len(targets), rep.LoadBefore, rep.CPUs)
	for r := 0; r < cfg.Runs; r++ {
		order := targets
		if r%2 == 1 { // alternate to cancel out drift (thermal, neighbours)
			order = slices.Clone(targets)
			slices.Reverse(order)
		}
		for _, t := range order {
			s, err := measure(ctx, gen, t, cfg)
			if err != nil {
				return nil, fmt.Errorf("%s/%s run %d: %w", t.up.kind, t.Name, r+1, err)
			}
			t.samples = append(t.samples, s)
			fmt.Fprintf(log, "run %d/%d %-5s %-18s %s\n", r+1, cfg.Runs, t.up.kind, t.Name, s.line())
		}
	}
	rep.LoadAfter = loadAvg()
	rep.summarize(targets)

	if cfg.Profile != "" {
		for _, t := range targets {
			if !t.gateway {
				continue
			}
			path := profilePath(cfg.Profile, t.up.kind, t.Name)
			if err := profileGateway(ctx, gen, t, cfg, path, log); err != nil {
				return rep, fmt.Errorf("profile %s/%s: %w", t.up.kind, t.Name, err)
			}
			fmt.Fprintf(log, "CPU profile of %s/%s written to %s, allocations to %s.allocs; inspect with:\n  go tool pprof -top %s %s\n",
				t.up.kind, t.Name, path, path, bin, path)
		}
	}
	for _, t := range targets {
		if t.proc.exited() {
			return rep, fmt.Errorf("%s/%s exited during the benchmark:\n%s", t.up.kind, t.Name, t.proc.tail(4000))
		}
	}
	if cfg.UpstreamSim != "" && len(targets) > 0 {
		if rep.Simulator, err = fetchSimReport(ctx, cfg.UpstreamSim, targets[0].up); err != nil {
			return rep, err
		}
	}
	return rep, rep.validate(cfg.MaxErrors)
}

// profilePath names the profile of one gateway target: base gw.pprof gives
// gw-https.pprof for the gateway to the HTTPS upstream and
// gw-https-pipeline.pprof for its full pipeline.
func profilePath(base, kind, name string) string {
	suffix := "-" + kind
	switch name {
	case namePipeline:
		suffix += "-pipeline"
	case nameBudgets:
		suffix += "-budgets"
	}
	ext := filepath.Ext(base)
	return strings.TrimSuffix(base, ext) + suffix + ext
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
		if cfg.Reloads > 0 {
			return nil, fmt.Errorf("-reloads needs wrk: %w", err)
		}
	}
	return goGen{conns: cfg.Conns}, nil
}

// startTargets starts plain Caddy, the gateway, (-pipeline) the gateway
// with its full pipeline and (-budgets) the gateway with an upstream
// budget, in that order, all proxying to up.
func startTargets(ctx context.Context, cs *children, cfg config, bin, tmp string, up *upstream) ([]*target, error) {
	names := []string{nameCaddy, nameGateway}
	if cfg.Pipeline {
		names = append(names, namePipeline)
	}
	if cfg.Budgets {
		names = append(names, nameBudgets)
	}
	var targets []*target
	for _, name := range names {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		admin, err := freePort()
		if err != nil {
			return nil, err
		}
		t := &target{Name: name, up: up, admin: admin, gateway: name != nameCaddy,
			ep: endpoint{URL: "http://127.0.0.1:" + strconv.Itoa(port) + cfg.Path}}
		var cf string
		switch name {
		case nameCaddy:
			cf = caddyfileReverse(port, admin, up.baseURL(), cfg)
		case nameGateway:
			cf = caddyfileGateway(port, admin, up.baseURL(), cfg, "")
		case namePipeline:
			key, err := randomKey()
			if err != nil {
				return nil, err
			}
			cf = caddyfileGateway(port, admin, up.baseURL(), cfg, key)
			t.ep.Headers = []string{proxyKeyHeader + ": " + key}
		case nameBudgets:
			cf = caddyfileGateway(port, admin, up.baseURL(), withBudget(cfg), "")
		}
		if cfg.UpstreamSim != "" {
			if cf, err = simCaddyfile(cf, name, up.baseURL()); err != nil {
				return nil, err
			}
			if name == nameCaddy {
				t.ep.Headers = []string{"Authorization: Bot " + cfg.simTokens.client}
			}
		}
		t.caddyfile = func(int) string { return cf }
		if cfg.Reloads > 0 {
			t.caddyfile = func(gen int) string { return withReloadRoute(cf, gen) }
		}
		dir := filepath.Join(tmp, up.kind+"-"+name)
		if t.proc, err = startCaddy(ctx, cs, up.kind+"/"+name, bin, dir, t.caddyfile(0), port, targetEnv(cfg, name)); err != nil {
			return nil, err
		}
		targets = append(targets, t)
	}
	return targets, nil
}

// randomKey is a fresh proxy key for the pipeline target.
func randomKey() (string, error) {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// globalOptions are shared by every target so that they differ only in
// the handler: own admin port (for pprof; never the default 2019 another
// process may hold), no HTTPS, optionally metrics.
// The -global-options lines follow.
func globalOptions(admin int, metrics bool, extra string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\tadmin 127.0.0.1:%d\n\tauto_https off\n\tpersist_config off\n", admin)
	if metrics {
		b.WriteString("\tmetrics\n")
	}
	extraLines(&b, extra, "\t")
	return b.String()
}

// extraLines indents each non-empty line of s (a flag's value) by tabs.
func extraLines(b *strings.Builder, s, tabs string) {
	for _, l := range strings.Split(s, "\n") {
		if strings.TrimSpace(l) != "" {
			b.WriteString(tabs + strings.TrimSpace(l) + "\n")
		}
	}
}

// caddyfileReverse is plain Caddy proxying to upURL; it skips TLS
// verification of an HTTPS upstream (self-signed).
func caddyfileReverse(port, admin int, upURL string, cfg config) string {
	var b strings.Builder
	fmt.Fprintf(&b, "{\n%s}\n\n:%d {\n\treverse_proxy %s", globalOptions(admin, cfg.Metrics, cfg.Global), port, upURL)
	https := strings.HasPrefix(upURL, "https://")
	if https || strings.TrimSpace(cfg.CaddyExtra) != "" {
		b.WriteString(" {\n\t\ttransport http {\n")
		if https {
			b.WriteString("\t\t\ttls_insecure_skip_verify\n")
		}
		extraLines(&b, cfg.CaddyExtra, "\t\t\t")
		b.WriteString("\t\t}\n\t}")
	}
	fmt.Fprintf(&b, "\n}\n")
	return b.String()
}

// caddyfileGateway is the gateway with one service, bench, at upURL (TLS
// verification skipped for that service alone). With key it is the full
// pipeline: the proxy key required, client and service rate limits and
// Caddy's metrics on, whatever -limits and -metrics say; without, the bare
// services path (plus -limits, -metrics).
func caddyfileGateway(port, admin int, upURL string, cfg config, key string) string {
	pipeline := key != ""
	limits := cfg.Limits || pipeline
	var b strings.Builder
	fmt.Fprintf(&b, "{\n%s\tbyteproxy {\n", globalOptions(admin, cfg.Metrics || pipeline, cfg.Global))
	if pipeline {
		fmt.Fprintf(&b, "\t\tauth proxy {\n\t\t\tkey %s\n\t\t\trequired true\n\t\t}\n", key)
	} else {
		b.WriteString("\t\tauth proxy {\n\t\t\trequired false\n\t\t}\n")
	}
	if limits {
		b.WriteString("\t\tclient_rate_limit 100000000 1m\n")
	}
	extraLines(&b, cfg.Extra, "\t\t")
	fmt.Fprintf(&b, "\t\tservice bench {\n\t\t\tbase_url %s/\n", upURL)
	if strings.HasPrefix(upURL, "https://") {
		b.WriteString("\t\t\ttls_insecure_skip_verify\n")
	}
	if limits {
		b.WriteString("\t\t\trate_limit 100000000 1m\n")
	}
	extraLines(&b, cfg.ServiceExtra, "\t\t\t")
	fmt.Fprintf(&b, "\t\t}\n\t}\n}\n\n:%d {\n\tbyteproxy\n}\n", port)
	return b.String()
}

// withBudget is cfg with an upstream budget on the gateway's benchmark
// service: a generic one (the upstream sends no rate-limit header, so after
// its first answer nothing limits a request), which costs every request a
// reservation before it is sent and a settlement with the answer.
func withBudget(cfg config) config {
	if cfg.UpstreamSim != "" {
		return cfg // simCaddyfile writes the simulator's upstream_limits
	}
	cfg.ServiceExtra += "\nupstream_limits"
	return cfg
}

// measure runs the warmup, then the measured load with CPU readings of the
// target and its upstream taken just around it. Upstream connections opened
// meanwhile (warmup included) are added to the target's.
func measure(ctx context.Context, gen generator, t *target, cfg config) (sample, error) {
	c0 := t.up.conns()
	defer func() { t.conns = t.conns.add(t.up.conns().sub(c0)) }()
	if cfg.Warmup > 0 {
		if _, err := gen.Run(ctx, t.ep, cfg.Warmup); err != nil {
			return sample{}, fmt.Errorf("warmup: %w", err)
		}
	}
	pid, upPid := t.proc.cmd.Process.Pid, t.up.proc.cmd.Process.Pid
	m0, mErr := readMachineCPU()
	before, cpuErr := readCPU(pid)
	upBefore, upErr := readCPU(upPid)
	res, err := gen.Run(ctx, t.ep, cfg.Duration)
	if err != nil {
		return sample{}, err
	}
	upAfter, upErr2 := readCPU(upPid)
	after, cpuErr2 := readCPU(pid)
	m1, mErr2 := readMachineCPU()
	s := sample{loadResult: res, CPUPerReq: -1, Busy: -1, UpstreamCPU: -1}
	if mErr == nil && mErr2 == nil {
		s.Busy = busyFraction(m0, m1)
	}
	if cpuErr == nil && cpuErr2 == nil {
		s.CPUPerReq = cpuPerRequest(before, after, res.Requests)
		s.CPU = after.total() - before.total()
	}
	if upErr == nil && upErr2 == nil {
		s.UpstreamCPU = upAfter.total() - upBefore.total()
	}
	return s, nil
}

// profileGateway runs one more (unreported) load run at a gateway target
// and fetches a CPU profile from its admin endpoint meanwhile, then its
// allocations so far into path.allocs.
func profileGateway(ctx context.Context, gen generator, t *target, cfg config, path string, log io.Writer) error {
	d := time.Duration(cfg.ProfileSec)*time.Second + 3*time.Second
	fmt.Fprintf(log, "profiling %s/%s for %ds under load ...\n", t.up.kind, t.Name, cfg.ProfileSec)
	if cfg.Warmup > 0 {
		if _, err := gen.Run(ctx, t.ep, cfg.Warmup); err != nil {
			return err
		}
	}
	errc := make(chan error, 1)
	go func() {
		_, err := gen.Run(ctx, t.ep, d)
		errc <- err
	}()
	url := fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/profile?seconds=%d", t.admin, cfg.ProfileSec)
	perr := fetchToFile(ctx, url, path, time.Duration(cfg.ProfileSec)*time.Second+30*time.Second)
	if err := <-errc; err != nil {
		return err
	}
	if perr != nil {
		return perr
	}
	// Allocations since start (go tool pprof -sample_index=alloc_space).
	url = fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/allocs", t.admin)
	return fetchToFile(ctx, url, path+".allocs", 30*time.Second)
}
