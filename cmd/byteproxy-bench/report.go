package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"
)

// sample is one measured run at one target.
type sample struct {
	loadResult
	CPU         time.Duration // target's CPU time over the measured run
	CPUPerReq   time.Duration // -1 when unknown
	UpstreamCPU time.Duration // the upstream's CPU time over the measured run; -1 when unknown
	Busy        float64       // share of the machine's CPU in use during the run; -1 when unknown
}

func (s sample) line() string {
	return fmt.Sprintf("%8.0f req/s  p50 %-8s p99 %-8s cpu/req %-7s requests %d non-2xx %d errors %d  machine %.0f%% busy",
		s.ReqPerSec, fmtDur(s.P50), fmtDur(s.P99), fmtCPU(s.CPUPerReq), s.Requests, s.Non2xx, s.Errors, 100*s.Busy)
}

// targetReport is the median of a target's runs, plus every run.
type targetReport struct {
	Name        string  `json:"name"`
	URL         string  `json:"url"`
	ReqPerSec   float64 `json:"reqPerSec"`
	P50Ms       float64 `json:"p50Ms"`
	P99Ms       float64 `json:"p99Ms"`
	CPUPerReqUs float64 `json:"cpuPerReqUs"` // -1 when unknown
	Requests    int64   `json:"requests"`    // over all runs
	// The load generator's CPU time per request and how busy the whole
	// machine was (0..1): when it is near 1, throughput is bounded by the
	// sum of every process's cpu/req, not by the target alone.
	GenCPUPerReqUs float64 `json:"generatorCpuPerReqUs"`
	MachineBusy    float64 `json:"machineBusy"`
	// The upstream's CPU time per request while this target was measured.
	UpstreamCPUPerReqUs float64 `json:"upstreamCpuPerReqUs"`
	// Connections this target opened to the upstream, by protocol (the
	// preflight request, warmups and measured runs; not the profile run).
	UpstreamConns connCounts  `json:"upstreamConnections"`
	Non2xx        int64       `json:"non2xx"`      // over all runs
	Errors        int64       `json:"errors"`      // over all runs
	WrongBody     int64       `json:"wrongBody"`   // over all runs: 2xx but not the upstream's body
	BytesPerReq   float64     `json:"bytesPerReq"` // over all runs
	Preflight     string      `json:"preflight,omitempty"`
	Runs          []runReport `json:"runs"`
}

type runReport struct {
	ReqPerSec      float64 `json:"reqPerSec"`
	P50Ms          float64 `json:"p50Ms"`
	P99Ms          float64 `json:"p99Ms"`
	CPUPerReqUs    float64 `json:"cpuPerReqUs"`
	GenCPUPerReqUs float64 `json:"generatorCpuPerReqUs"`
	MachineBusy    float64 `json:"machineBusy"`
	Requests       int64   `json:"requests"`
	Non2xx         int64   `json:"non2xx"`
	Errors         int64   `json:"errors"`
}

// ratioReport compares two targets of one upstream kind, from the medians:
// Of / To.
type ratioReport struct {
	Of         string  `json:"of"`
	To         string  `json:"to"`
	Throughput float64 `json:"throughput"`
	P99        float64 `json:"p99"`
	CPUPerReq  float64 `json:"cpuPerReq"` // 0 when unknown
}

// upstreamReport is one table: every target proxying to one upstream kind.
type upstreamReport struct {
	Kind string `json:"kind"` // http or https
	// What the HTTPS upstream offered by ALPN, e.g. "h2+http/1.1".
	Offered             string         `json:"offered,omitempty"`
	UpstreamCPUPerReqUs float64        `json:"upstreamCpuPerReqUs"` // over every measured run of this kind
	Targets             []targetReport `json:"targets"`
	// byteproxy / caddy-reverse, with -pipeline byteproxy-pipeline /
	// caddy-reverse and byteproxy-pipeline / byteproxy, with -budgets
	// byteproxy-budgets / caddy-reverse and byteproxy-budgets / byteproxy.
	Ratios []ratioReport `json:"ratios"`
}

// report is the benchmark's result, printed as tables or JSON.
type report struct {
	Generator      string           `json:"generator"`
	Duration       string           `json:"duration"`
	Warmup         string           `json:"warmup"`
	Runs           int              `json:"runs"`
	Conns          int              `json:"connections"`
	Limits         bool             `json:"limits"`
	Metrics        bool             `json:"metrics"`
	Pipeline       bool             `json:"pipeline"`
	Budgets        bool             `json:"budgets"`
	GatewayOptions string           `json:"gatewayOptions,omitempty"`
	ServiceOptions string           `json:"serviceOptions,omitempty"`
	CaddyTransport string           `json:"caddyTransport,omitempty"`
	GlobalOptions  string           `json:"globalOptions,omitempty"`
	UpstreamDelay  string           `json:"upstreamDelay"`
	Env            []string         `json:"env,omitempty"`
	Path           string           `json:"path"`
	Binary         string           `json:"binary"`
	CPUs           int              `json:"cpus"`
	LoadBefore     float64          `json:"loadAverageBefore"`
	LoadAfter      float64          `json:"loadAverageAfter"`
	OtherLoad      []string         `json:"otherLoadGenerators,omitempty"` // running when the benchmark began
	Upstreams      []upstreamReport `json:"upstreams,omitempty"`
	Valid          bool             `json:"valid"`
	Problem        string           `json:"problem,omitempty"`
	// Reloads is the reload mode's result (-reloads), instead of Upstreams.
	Reloads *reloadReport `json:"reloads,omitempty"`
	// UpstreamSim is -upstream-sim; Simulator what it saw.
	UpstreamSim string     `json:"upstreamSim,omitempty"`
	Simulator   *simReport `json:"simulator,omitempty"`
}

// summarize builds one table per upstream kind, in the order the targets
// were started.
func (r *report) summarize(targets []*target) {
	for _, t := range targets {
		if len(r.Upstreams) == 0 || r.Upstreams[len(r.Upstreams)-1].Kind != t.up.kind {
			u := upstreamReport{Kind: t.up.kind}
			if t.up.kind == kindHTTPS {
				u.Offered = alpnLabel(t.up.proto)
			}
			r.Upstreams = append(r.Upstreams, u)
		}
		u := &r.Upstreams[len(r.Upstreams)-1]
		u.Targets = append(u.Targets, summarizeTarget(t))
	}
	for i := range r.Upstreams {
		u := &r.Upstreams[i]
		var upCPU time.Duration
		var reqs int64
		known := true
		for _, t := range targets {
			if t.up.kind != u.Kind {
				continue
			}
			for _, s := range t.samples {
				known = known && s.UpstreamCPU >= 0
				upCPU += s.UpstreamCPU
				reqs += s.Requests
			}
		}
		u.UpstreamCPUPerReqUs = -1
		if known {
			u.UpstreamCPUPerReqUs = us(perRequest(upCPU, reqs))
		}
		u.Ratios = ratios(u.Targets)
	}
}

func summarizeTarget(t *target) targetReport {
	tr := targetReport{Name: t.Name, URL: t.ep.URL, Preflight: t.preflight, UpstreamConns: t.conns}
	var bytes int64
	var rps, p50, p99, cpu, gen, busy, upCPU []float64
	for _, s := range t.samples {
		rr := runReport{
			ReqPerSec: s.ReqPerSec, P50Ms: ms(s.P50), P99Ms: ms(s.P99), CPUPerReqUs: us(s.CPUPerReq),
			Requests: s.Requests, Non2xx: s.Non2xx, Errors: s.Errors,
			GenCPUPerReqUs: us(perRequest(s.GenCPU, s.Requests)), MachineBusy: s.Busy,
		}
		tr.Runs = append(tr.Runs, rr)
		tr.Requests += s.Requests
		tr.Non2xx += s.Non2xx
		tr.Errors += s.Errors
		tr.WrongBody += s.WrongBody
		bytes += s.BytesRead
		rps = append(rps, rr.ReqPerSec)
		p50 = append(p50, rr.P50Ms)
		p99 = append(p99, rr.P99Ms)
		cpu = append(cpu, rr.CPUPerReqUs)
		gen = append(gen, rr.GenCPUPerReqUs)
		busy = append(busy, rr.MachineBusy)
		if s.UpstreamCPU >= 0 {
			upCPU = append(upCPU, us(perRequest(s.UpstreamCPU, s.Requests)))
		} else {
			upCPU = append(upCPU, -1)
		}
	}
	if tr.Requests > 0 {
		tr.BytesPerReq = float64(bytes) / float64(tr.Requests)
	}
	tr.ReqPerSec, tr.P50Ms, tr.P99Ms, tr.CPUPerReqUs = median(rps), median(p50), median(p99), median(cpu)
	tr.GenCPUPerReqUs, tr.MachineBusy, tr.UpstreamCPUPerReqUs = median(gen), median(busy), median(upCPU)
	return tr
}

// ratios compares the gateway targets of one table with plain Caddy, and
// the full pipeline and the gateway with an upstream budget with the bare
// gateway.
func ratios(ts []targetReport) []ratioReport {
	find := func(name string) *targetReport {
		for i := range ts {
			if ts[i].Name == name {
				return &ts[i]
			}
		}
		return nil
	}
	var out []ratioReport
	for _, pair := range [][2]string{{nameGateway, nameCaddy}, {namePipeline, nameCaddy}, {namePipeline, nameGateway},
		{nameBudgets, nameCaddy}, {nameBudgets, nameGateway}} {
		of, to := find(pair[0]), find(pair[1])
		if of == nil || to == nil {
			continue
		}
		rr := ratioReport{Of: of.Name, To: to.Name,
			Throughput: ratio(of.ReqPerSec, to.ReqPerSec), P99: ratio(of.P99Ms, to.P99Ms)}
		if of.CPUPerReqUs >= 0 && to.CPUPerReqUs > 0 {
			rr.CPUPerReq = ratio(of.CPUPerReqUs, to.CPUPerReqUs)
		}
		out = append(out, rr)
	}
	return out
}

// validate fails the report when any target did not answer the preflight
// request with the upstream's body, served nothing, answered with less
// than the upstream's body on average, or had more than maxErr of its
// responses fail, answer non-2xx or carry a body that is not the upstream's.
func (r *report) validate(maxErr float64) error {
	var problems []string
	for _, u := range r.Upstreams {
		for _, t := range u.Targets {
			problems = append(problems, t.problems(u.Kind, maxErr)...)
		}
	}
	if len(problems) > 0 {
		r.Problem = strings.Join(problems, "; ")
		return fmt.Errorf("%w: %s", errInvalid, r.Problem)
	}
	r.Valid = true
	return nil
}

func (t targetReport) problems(kind string, maxErr float64) []string {
	var problems []string
	name := kind + "/" + t.Name
	total := t.Requests + t.Errors
	bad := t.Non2xx + t.Errors + t.WrongBody
	switch {
	case t.Preflight != "":
		problems = append(problems, fmt.Sprintf("%s is not proxying to the upstream: %s", name, t.Preflight))
	case t.Requests == 0:
		problems = append(problems, fmt.Sprintf("%s served no requests", name))
	case t.BytesPerReq < float64(len(upstreamBody)):
		problems = append(problems, fmt.Sprintf("%s: responses average %.0f bytes, less than the upstream's %d-byte body",
			name, t.BytesPerReq, len(upstreamBody)))
	case float64(bad) > maxErr*float64(total):
		problems = append(problems, fmt.Sprintf("%s: %d of %d responses failed or were not 2xx (%.1f%%, limit %.1f%%)",
			name, bad, total, 100*float64(bad)/float64(total), 100*maxErr))
	}
	if t.WrongBody > 0 {
		problems = append(problems, fmt.Sprintf("%s: %d 2xx responses did not carry the upstream's body", name, t.WrongBody))
	}
	return problems
}

func (r *report) printTable(w io.Writer) {
	if r.Reloads != nil {
		fmt.Fprintf(w, "\n%s, %s (+%s warmup) per target with %d config reloads (POST /load, a changed Caddyfile), %d run(s) summed; limits %s, metrics %s\n",
			r.Generator, r.Duration, r.Warmup, r.Reloads.PerRun, r.Runs, onOff(r.Limits), onOff(r.Metrics))
	} else {
		fmt.Fprintf(w, "\n%s, %s (+%s warmup) per target, median of %d run(s); limits %s, metrics %s\n",
			r.Generator, r.Duration, r.Warmup, r.Runs, onOff(r.Limits), onOff(r.Metrics))
	}
	if r.Pipeline {
		fmt.Fprintf(w, "%s: proxy key required and sent, client_rate_limit and service rate_limit, Caddy metrics on\n", namePipeline)
	}
	if r.Budgets {
		fmt.Fprintf(w, "%s: the gateway with upstream_limits on the service (reserve and settle per request; no limit binds); issue 14: within 5%% of %s\n", nameBudgets, nameGateway)
	}
	if r.UpstreamSim != "" {
		fmt.Fprintf(w, "upstream: the %s simulator (internal/upstreamsim; limits that never bind), path %s\n", r.UpstreamSim, r.Path)
	}
	if r.GatewayOptions != "" {
		fmt.Fprintf(w, "gateway options: %q\n", r.GatewayOptions)
	}
	if r.ServiceOptions != "" {
		fmt.Fprintf(w, "gateway service options: %q\n", r.ServiceOptions)
	}
	if r.CaddyTransport != "" {
		fmt.Fprintf(w, "plain Caddy transport options: %q\n", r.CaddyTransport)
	}
	if r.UpstreamDelay != "" && r.UpstreamDelay != "0s" {
		fmt.Fprintf(w, "the upstream waits %s before each answer\n", r.UpstreamDelay)
	}
	if r.GlobalOptions != "" {
		fmt.Fprintf(w, "global options of every target: %q\n", r.GlobalOptions)
	}
	if len(r.Env) > 0 {
		fmt.Fprintf(w, "environment of every target: %s\n", strings.Join(r.Env, " "))
	}
	if !envHas(r.Env, "GOGC") {
		fmt.Fprintf(w, "GC: plain Caddy runs with %s as stock caddy does, the gateway with the byteproxy binary's default (cmd/byteproxy defaultGCPercent); -env GOGC=N sets both\n", stockCaddyGOGC)
	}
	fmt.Fprintf(w, "%d CPUs, load average %.2f before, %.2f after\n", r.CPUs, r.LoadBefore, r.LoadAfter)
	if len(r.OtherLoad) > 0 {
		fmt.Fprintf(w, "WARNING: other load generators were running: %s\n", strings.Join(r.OtherLoad, " "))
	}
	for _, u := range r.Upstreams {
		u.printTable(w)
	}
	if r.Reloads != nil {
		r.Reloads.print(w)
	}
	if r.Simulator != nil {
		r.Simulator.print(w)
	}
	if !r.Valid && r.Problem != "" {
		fmt.Fprintf(w, "\nINVALID: %s\n", r.Problem)
	}
}

func (u upstreamReport) printTable(w io.Writer) {
	fmt.Fprintln(w)
	if u.Kind == kindHTTPS {
		fmt.Fprintf(w, "upstream https (self-signed, offers %s), upstream cpu/req %s\n", u.Offered, fmtUs(u.UpstreamCPUPerReqUs))
	} else {
		fmt.Fprintf(w, "upstream http, upstream cpu/req %s\n", fmtUs(u.UpstreamCPUPerReqUs))
	}
	fmt.Fprintf(w, "%-19s %9s %9s %9s %9s %9s %8s %9s %6s  %s\n",
		"target", "req/s", "p50", "p99", "cpu/req", "non-2xx", "errors", "gen cpu", "busy", "upstream conns")
	for _, t := range u.Targets {
		fmt.Fprintf(w, "%-19s %9.0f %9s %9s %9s %9d %8d %9s %5.0f%%  %s\n", t.Name, t.ReqPerSec,
			fmtMs(t.P50Ms), fmtMs(t.P99Ms), fmtUs(t.CPUPerReqUs), t.Non2xx, t.Errors,
			fmtUs(t.GenCPUPerReqUs), 100*t.MachineBusy, t.UpstreamConns)
	}
	for _, rr := range u.Ratios {
		fmt.Fprintf(w, "ratio %s/%s: throughput %.2fx, p99 %.2fx, cpu/req %.2fx\n",
			rr.Of, rr.To, rr.Throughput, rr.P99, rr.CPUPerReq)
	}
}

// String is the table's "upstream conns" cell, e.g. "50 h1" or "1 h2, 1 resumed".
func (c connCounts) String() string {
	var parts []string
	if c.H1 > 0 {
		parts = append(parts, fmt.Sprintf("%d h1", c.H1))
	}
	if c.H2 > 0 {
		parts = append(parts, fmt.Sprintf("%d h2", c.H2))
	}
	if len(parts) == 0 {
		return "none"
	}
	s := strings.Join(parts, " + ")
	if c.Resumed > 0 {
		s += fmt.Sprintf(", %d resumed", c.Resumed)
	}
	return s
}

// fetchToFile GETs url (a loopback admin endpoint) into path.
func fetchToFile(ctx context.Context, url, path string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	tr := &http.Transport{Proxy: nil}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return fmt.Errorf("GET %s: %d %s", url, resp.StatusCode, b)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// us converts to microseconds; negative (unknown) stays -1.
func us(d time.Duration) float64 {
	if d < 0 {
		return -1
	}
	return float64(d) / float64(time.Microsecond)
}

func fmtMs(v float64) string {
	if v < 1 {
		return fmt.Sprintf("%.0fµs", v*1000)
	}
	return fmt.Sprintf("%.2fms", v)
}

func fmtUs(v float64) string {
	if v < 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.1fµs", v)
}

func fmtDur(d time.Duration) string { return fmtMs(ms(d)) }
func fmtCPU(d time.Duration) string { return fmtUs(us(d)) }

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}
