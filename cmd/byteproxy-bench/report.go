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
	CPU       time.Duration // target's CPU time over the measured run
	CPUPerReq time.Duration // -1 when unknown
	Busy      float64       // share of the machine's CPU in use during the run; -1 when unknown
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
	GenCPUPerReqUs float64     `json:"generatorCpuPerReqUs"`
	MachineBusy    float64     `json:"machineBusy"`
	Non2xx         int64       `json:"non2xx"`      // over all runs
	Errors         int64       `json:"errors"`      // over all runs
	WrongBody      int64       `json:"wrongBody"`   // over all runs: 2xx but not the upstream's body
	BytesPerReq    float64     `json:"bytesPerReq"` // over all runs
	Preflight      string      `json:"preflight,omitempty"`
	Runs           []runReport `json:"runs"`
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

// report is the benchmark's result, printed as a table or JSON.
type report struct {
	Generator           string         `json:"generator"`
	Duration            string         `json:"duration"`
	Warmup              string         `json:"warmup"`
	Runs                int            `json:"runs"`
	Conns               int            `json:"connections"`
	Limits              bool           `json:"limits"`
	Metrics             bool           `json:"metrics"`
	GatewayOptions      string         `json:"gatewayOptions,omitempty"`
	Env                 []string       `json:"env,omitempty"`
	Path                string         `json:"path"`
	Binary              string         `json:"binary"`
	CPUs                int            `json:"cpus"`
	LoadBefore          float64        `json:"loadAverageBefore"`
	LoadAfter           float64        `json:"loadAverageAfter"`
	OtherLoad           []string       `json:"otherLoadGenerators,omitempty"` // running when the benchmark began
	UpstreamCPUPerReqUs float64        `json:"upstreamCpuPerReqUs"`
	Targets             []targetReport `json:"targets"`
	// Gateway / plain Caddy, from the medians.
	RatioThroughput float64 `json:"ratioThroughput"`
	RatioP99        float64 `json:"ratioP99"`
	RatioCPUPerReq  float64 `json:"ratioCpuPerReq"`
	Valid           bool    `json:"valid"`
	Problem         string  `json:"problem,omitempty"`
}

func (r *report) summarize(targets []*target) {
	for _, t := range targets {
		tr := targetReport{Name: t.Name, URL: t.URL, Preflight: t.preflight}
		var bytes int64
		var rps, p50, p99, cpu, gen, busy []float64
		for _, s := range t.samples {
			rr := runReport{
				ReqPerSec: s.ReqPerSec, P50Ms: ms(s.P50), P99Ms: ms(s.P99), CPUPerReqUs: us(s.CPUPerReq),
				Requests: s.Requests, Non2xx: s.Non2xx, Errors: s.Errors,
				GenCPUPerReqUs: us(cpuPerRequest(cpuTimes{}, cpuTimes{User: s.GenCPU}, s.Requests)), MachineBusy: s.Busy,
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
		}
		if tr.Requests > 0 {
			tr.BytesPerReq = float64(bytes) / float64(tr.Requests)
		}
		tr.ReqPerSec, tr.P50Ms, tr.P99Ms, tr.CPUPerReqUs = median(rps), median(p50), median(p99), median(cpu)
		tr.GenCPUPerReqUs, tr.MachineBusy = median(gen), median(busy)
		r.Targets = append(r.Targets, tr)
	}
	if len(r.Targets) == 2 {
		c, g := r.Targets[0], r.Targets[1]
		r.RatioThroughput = ratio(g.ReqPerSec, c.ReqPerSec)
		r.RatioP99 = ratio(g.P99Ms, c.P99Ms)
		if g.CPUPerReqUs >= 0 && c.CPUPerReqUs > 0 {
			r.RatioCPUPerReq = ratio(g.CPUPerReqUs, c.CPUPerReqUs)
		}
	}
}

// validate fails the report when any target did not answer the preflight
// request with the upstream's body, served nothing, answered with less
// than the upstream's body on average, or had more than maxErr of its
// responses fail, answer non-2xx or carry a body that is not the upstream's.
func (r *report) validate(maxErr float64) error {
	var problems []string
	for _, t := range r.Targets {
		total := t.Requests + t.Errors
		bad := t.Non2xx + t.Errors + t.WrongBody
		switch {
		case t.Preflight != "":
			problems = append(problems, fmt.Sprintf("%s is not proxying to the upstream: %s", t.Name, t.Preflight))
		case t.Requests == 0:
			problems = append(problems, fmt.Sprintf("%s served no requests", t.Name))
		case t.BytesPerReq < float64(len(upstreamBody)):
			problems = append(problems, fmt.Sprintf("%s: responses average %.0f bytes, less than the upstream's %d-byte body",
				t.Name, t.BytesPerReq, len(upstreamBody)))
		case float64(bad) > maxErr*float64(total):
			problems = append(problems, fmt.Sprintf("%s: %d of %d responses failed or were not 2xx (%.1f%%, limit %.1f%%)",
				t.Name, bad, total, 100*float64(bad)/float64(total), 100*maxErr))
		}
		if t.WrongBody > 0 {
			problems = append(problems, fmt.Sprintf("%s: %d 2xx responses did not carry the upstream's body", t.Name, t.WrongBody))
		}
	}
	if len(problems) > 0 {
		r.Problem = strings.Join(problems, "; ")
		return fmt.Errorf("%w: %s", errInvalid, r.Problem)
	}
	r.Valid = true
	return nil
}

func (r *report) printTable(w io.Writer) {
	fmt.Fprintf(w, "\n%s, %s (+%s warmup) per target, median of %d run(s); limits %s, metrics %s\n",
		r.Generator, r.Duration, r.Warmup, r.Runs, onOff(r.Limits), onOff(r.Metrics))
	if r.GatewayOptions != "" {
		fmt.Fprintf(w, "gateway options: %q\n", r.GatewayOptions)
	}
	if len(r.Env) > 0 {
		fmt.Fprintf(w, "environment of both targets: %s\n", strings.Join(r.Env, " "))
	}
	fmt.Fprintf(w, "%d CPUs, load average %.2f before, %.2f after; upstream cpu/req %s\n",
		r.CPUs, r.LoadBefore, r.LoadAfter, fmtUs(r.UpstreamCPUPerReqUs))
	if len(r.OtherLoad) > 0 {
		fmt.Fprintf(w, "WARNING: other load generators were running: %s\n", strings.Join(r.OtherLoad, " "))
	}
	fmt.Fprintf(w, "%-16s %9s %9s %9s %9s %9s %8s %9s %6s\n", "target", "req/s", "p50", "p99", "cpu/req", "non-2xx", "errors", "gen cpu", "busy")
	for _, t := range r.Targets {
		fmt.Fprintf(w, "%-16s %9.0f %9s %9s %9s %9d %8d %9s %5.0f%%\n", t.Name, t.ReqPerSec,
			fmtMs(t.P50Ms), fmtMs(t.P99Ms), fmtUs(t.CPUPerReqUs), t.Non2xx, t.Errors,
			fmtUs(t.GenCPUPerReqUs), 100*t.MachineBusy)
	}
	if len(r.Targets) == 2 {
		fmt.Fprintf(w, "ratio %s/%s: throughput %.2fx, p99 %.2fx, cpu/req %.2fx\n",
			r.Targets[1].Name, r.Targets[0].Name, r.RatioThroughput, r.RatioP99, r.RatioCPUPerReq)
	}
	if !r.Valid && r.Problem != "" {
		fmt.Fprintf(w, "INVALID: %s\n", r.Problem)
	}
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
