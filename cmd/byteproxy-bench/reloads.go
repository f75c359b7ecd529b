package main

// The reload mode (-reloads N): how many requests a config reload costs
// the clients of plain Caddy and of the gateway, in the same run.
//
// On a reload Caddy starts the new config's servers on the same listeners
// and shuts the old ones down with http.Server.Shutdown, which closes every
// keep-alive connection that is idle at that moment. A client that has
// just sent its next request on such a connection gets no answer: wrk
// counts a read error (and a write or connect error when the close or a
// listener change catches it elsewhere). Requests in progress finish on the
// old config. Each measured run below loads N changed configs while wrk
// runs, so the figures are the failed requests of N reloads under that load.

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// reloadTimeout bounds one config load through the admin endpoint.
const reloadTimeout = 30 * time.Second

// reloadRoutePrefix starts the path of the route that makes each
// generation of a reload-mode config differ from the one before; no
// request takes it.
const reloadRoutePrefix = "/__byteproxy_bench_reload/"

// withReloadRoute adds a route naming generation gen at the end of cf's
// site block (the last block of every generated Caddyfile): a changed
// config that serves exactly what the one before served, as an operator's
// edit of another site or service would be.
func withReloadRoute(cf string, gen int) string {
	i := strings.LastIndex(cf, "}")
	if i < 0 {
		return cf
	}
	return cf[:i] + "\trespond " + reloadRoutePrefix + strconv.Itoa(gen) + " 204\n" + cf[i:]
}

// reloadSample is one measured run with reloads at one target.
type reloadSample struct {
	loadResult
	Reloads  int           // configs loaded
	Failed   []string      // loads that failed, and why
	LoadTime time.Duration // time the successful loads took, in all
}

// failed counts the requests that got no 2xx answer: socket errors and
// non-2xx responses.
func (s reloadSample) failed() int64 { return s.Errors + s.Non2xx }

func (s reloadSample) line() string {
	return fmt.Sprintf("requests %d  failed %d (connect %d, read %d, write %d, timeout %d, non-2xx %d)  reloads %d, %d failed, load avg %s",
		s.Requests, s.failed(), s.Socket.Connect, s.Socket.Read, s.Socket.Write, s.Socket.Timeout, s.Non2xx,
		s.Reloads, len(s.Failed), fmtDur(perRequest(s.LoadTime, int64(s.Reloads))))
}

// runReloads measures every target cfg.Runs times (alternating the order)
// with cfg.Reloads config loads during each measured run, and returns the
// report. The run fails when a load failed, a target served nothing or did
// not proxy, or a target exited: failed requests are the figures, not a
// failure of the run.
func runReloads(ctx context.Context, cfg config, gen generator, targets []*target, rep *report, log io.Writer) (*report, error) {
	fmt.Fprintf(log, "%s, %s per target, %d reloads in each, %d run(s) over %d targets, load average %.2f on %d CPUs\n",
		gen.Name(), cfg.Duration, cfg.Reloads, cfg.Runs, len(targets), rep.LoadBefore, rep.CPUs)
	for r := 0; r < cfg.Runs; r++ {
		order := targets
		if r%2 == 1 {
			order = slices.Clone(targets)
			slices.Reverse(order)
		}
		for _, t := range order {
			s, err := measureReloads(ctx, gen, t, cfg)
			if err != nil {
				return nil, fmt.Errorf("%s/%s run %d: %w", t.up.kind, t.Name, r+1, err)
			}
			t.reloads = append(t.reloads, s)
			fmt.Fprintf(log, "run %d/%d %-5s %-18s %s\n", r+1, cfg.Runs, t.up.kind, t.Name, s.line())
		}
	}
	rep.LoadAfter = loadAvg()
	rep.Reloads = summarizeReloads(cfg.Reloads, targets)
	for _, t := range targets {
		if t.proc.exited() {
			return rep, fmt.Errorf("%s/%s exited during the benchmark:\n%s", t.up.kind, t.Name, t.proc.tail(4000))
		}
	}
	return rep, rep.Reloads.validate(rep)
}

// measureReloads warms up, then runs the load for cfg.Duration while
// loading cfg.Reloads changed configs, one every Duration/(Reloads+1).
func measureReloads(ctx context.Context, gen generator, t *target, cfg config) (reloadSample, error) {
	if cfg.Warmup > 0 {
		if _, err := gen.Run(ctx, t.ep, cfg.Warmup); err != nil {
			return reloadSample{}, fmt.Errorf("warmup: %w", err)
		}
	}
	// wrk runs whole seconds; spread the loads over what it runs.
	d := time.Duration(math.Ceil(cfg.Duration.Seconds())) * time.Second
	step := d / time.Duration(cfg.Reloads+1)
	loads := make(chan reloadSample, 1)
	go func() {
		var s reloadSample
		defer func() { loads <- s }()
		start := time.Now()
		for i := 1; i <= cfg.Reloads; i++ {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Until(start.Add(time.Duration(i) * step))):
			}
			t.generation++
			t0 := time.Now()
			if err := loadConfig(ctx, t.admin, t.caddyfile(t.generation)); err != nil {
				s.Failed = append(s.Failed, err.Error())
				continue
			}
			s.Reloads++
			s.LoadTime += time.Since(t0)
		}
	}()
	res, err := gen.Run(ctx, t.ep, cfg.Duration)
	s := <-loads
	if err != nil {
		return reloadSample{}, err
	}
	s.loadResult = res
	return s, nil
}

// loadConfig loads a Caddyfile through the admin endpoint on port admin,
// as `byteproxy reload` does (it adapts the file first and sends JSON).
func loadConfig(ctx context.Context, admin int, caddyfile string) error {
	ctx, cancel := context.WithTimeout(ctx, reloadTimeout)
	defer cancel()
	url := "http://127.0.0.1:" + strconv.Itoa(admin) + "/load"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(caddyfile))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "text/caddyfile")
	tr := &http.Transport{Proxy: nil}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 2048))
		return fmt.Errorf("POST /load: %d %s", resp.StatusCode, b)
	}
	return nil
}

// reloadReport is the reload mode's result: one table per upstream kind.
type reloadReport struct {
	PerRun    int           `json:"reloadsPerRun"`
	Upstreams []reloadTable `json:"upstreams"`
}

type reloadTable struct {
	Kind    string         `json:"kind"`
	Targets []reloadTarget `json:"targets"`
	// FailedRatio is the gateway's failed share over plain Caddy's (0
	// when plain Caddy failed nothing).
	FailedRatio float64 `json:"failedRatio"`
}

// reloadTarget sums one target's measured runs.
type reloadTarget struct {
	Name     string       `json:"name"`
	Requests int64        `json:"requests"` // completed responses, any status
	Socket   socketErrors `json:"socketErrors"`
	Non2xx   int64        `json:"non2xx"`
	// Failed is socket errors plus non-2xx; FailedShare is Failed over
	// every request attempted (completed plus socket errors).
	Failed          int64    `json:"failed"`
	FailedShare     float64  `json:"failedShare"`
	FailedPerReload float64  `json:"failedPerReload"`
	Reloads         int      `json:"reloads"`
	ReloadsFailed   []string `json:"reloadsFailed,omitempty"`
	LoadMs          float64  `json:"loadMsAvg"` // average time of one config load
	Preflight       string   `json:"preflight,omitempty"`
	Runs            []int64  `json:"failedPerRun"`
}

func summarizeReloads(perRun int, targets []*target) *reloadReport {
	rr := &reloadReport{PerRun: perRun}
	for _, t := range targets {
		if len(rr.Upstreams) == 0 || rr.Upstreams[len(rr.Upstreams)-1].Kind != t.up.kind {
			rr.Upstreams = append(rr.Upstreams, reloadTable{Kind: t.up.kind})
		}
		u := &rr.Upstreams[len(rr.Upstreams)-1]
		u.Targets = append(u.Targets, summarizeReloadTarget(t))
	}
	for i := range rr.Upstreams {
		u := &rr.Upstreams[i]
		var caddy, gw *reloadTarget
		for j := range u.Targets {
			switch u.Targets[j].Name {
			case nameCaddy:
				caddy = &u.Targets[j]
			case nameGateway:
				gw = &u.Targets[j]
			}
		}
		if caddy != nil && gw != nil {
			u.FailedRatio = ratio(gw.FailedShare, caddy.FailedShare)
		}
	}
	return rr
}

func summarizeReloadTarget(t *target) reloadTarget {
	rt := reloadTarget{Name: t.Name, Preflight: t.preflight}
	var load time.Duration
	for _, s := range t.reloads {
		rt.Requests += s.Requests
		rt.Socket = rt.Socket.add(s.Socket)
		rt.Non2xx += s.Non2xx
		rt.Failed += s.failed()
		rt.Reloads += s.Reloads
		rt.ReloadsFailed = append(rt.ReloadsFailed, s.Failed...)
		rt.Runs = append(rt.Runs, s.failed())
		load += s.LoadTime
	}
	if n := rt.Requests + rt.Socket.Connect + rt.Socket.Read + rt.Socket.Write + rt.Socket.Timeout; n > 0 {
		rt.FailedShare = float64(rt.Failed) / float64(n)
	}
	if rt.Reloads > 0 {
		rt.FailedPerReload = float64(rt.Failed) / float64(rt.Reloads)
		rt.LoadMs = ms(load) / float64(rt.Reloads)
	}
	return rt
}

// validate marks the report valid unless a load failed, a target served
// nothing or did not proxy to the upstream.
func (rr *reloadReport) validate(rep *report) error {
	var problems []string
	for _, u := range rr.Upstreams {
		for _, t := range u.Targets {
			name := u.Kind + "/" + t.Name
			switch {
			case t.Preflight != "":
				problems = append(problems, fmt.Sprintf("%s is not proxying to the upstream: %s", name, t.Preflight))
			case t.Requests == 0:
				problems = append(problems, fmt.Sprintf("%s served no requests", name))
			}
			if len(t.ReloadsFailed) > 0 {
				problems = append(problems, fmt.Sprintf("%s: %d config loads failed, the first: %s", name, len(t.ReloadsFailed), t.ReloadsFailed[0]))
			}
		}
	}
	if len(problems) > 0 {
		rep.Problem = strings.Join(problems, "; ")
		return fmt.Errorf("%w: %s", errInvalid, rep.Problem)
	}
	rep.Valid = true
	return nil
}

func (rr *reloadReport) print(w io.Writer) {
	for _, u := range rr.Upstreams {
		fmt.Fprintf(w, "\nupstream %s: requests that failed during %d reloads per run\n", u.Kind, rr.PerRun)
		fmt.Fprintf(w, "%-19s %9s %8s %8s %6s %6s %8s %8s %8s %8s %8s %9s\n",
			"target", "requests", "connect", "read", "write", "timeout", "non-2xx", "failed", "failed%", "/reload", "reloads", "load avg")
		for _, t := range u.Targets {
			fmt.Fprintf(w, "%-19s %9d %8d %8d %6d %7d %8d %8d %7.3f%% %8.1f %8d %9s\n",
				t.Name, t.Requests, t.Socket.Connect, t.Socket.Read, t.Socket.Write, t.Socket.Timeout, t.Non2xx,
				t.Failed, 100*t.FailedShare, t.FailedPerReload, t.Reloads, fmtMs(t.LoadMs))
		}
		if u.FailedRatio > 0 {
			fmt.Fprintf(w, "failed share %s/%s: %.2fx\n", nameGateway, nameCaddy, u.FailedRatio)
		}
	}
}
