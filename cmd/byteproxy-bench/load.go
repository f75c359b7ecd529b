package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// loadResult is what one load run measured.
type loadResult struct {
	Requests  int64         // completed responses, any status
	Elapsed   time.Duration // wall time of the run
	ReqPerSec float64
	P50, P99  time.Duration
	Non2xx    int64 // completed responses whose status is not 2xx (wrk: not 2xx or 3xx)
	Errors    int64 // connect, read, write errors and timeouts
	// Socket is Errors by kind (wrk only; the built-in generator counts
	// every error in Errors alone).
	Socket socketErrors
	// BytesRead is what the generator read: with wrk whole responses, with
	// the built-in generator bodies. Fewer than len(upstreamBody) bytes per
	// request means the target is not answering with the upstream's body.
	BytesRead int64
	// WrongBody counts 2xx responses whose body is not the upstream's
	// (built-in generator only; wrk cannot check bodies).
	WrongBody int64
	// GenCPU is the load generator's own CPU time; 0 when unknown.
	GenCPU time.Duration
}

// socketErrors are wrk's "Socket errors" by kind.
type socketErrors struct {
	Connect int64 `json:"connect"`
	Read    int64 `json:"read"`
	Write   int64 `json:"write"`
	Timeout int64 `json:"timeout"`
}

func (e socketErrors) add(o socketErrors) socketErrors {
	return socketErrors{e.Connect + o.Connect, e.Read + o.Read, e.Write + o.Write, e.Timeout + o.Timeout}
}

// endpoint is what a generator requests: a URL and the request headers
// to send with it ("Name: value" lines, e.g. the gateway's proxy key).
type endpoint struct {
	URL     string
	Headers []string
}

// header returns ep's headers as an http.Header (for the Go clients).
func (ep endpoint) header() http.Header {
	h := make(http.Header, len(ep.Headers))
	for _, line := range ep.Headers {
		k, v, _ := strings.Cut(line, ":")
		h.Add(strings.TrimSpace(k), strings.TrimSpace(v))
	}
	return h
}

// generator drives load at one endpoint for a duration.
type generator interface {
	Name() string
	Run(ctx context.Context, ep endpoint, d time.Duration) (loadResult, error)
}

// wrkGen runs wrk and parses its output.
type wrkGen struct {
	path           string
	threads, conns int
}

func (g wrkGen) Name() string {
	return fmt.Sprintf("wrk -t%d -c%d --latency", g.threads, g.conns)
}

func (g wrkGen) Run(ctx context.Context, ep endpoint, d time.Duration) (loadResult, error) {
	secs := int(math.Ceil(d.Seconds())) // wrk counts whole seconds
	if secs < 1 {
		secs = 1
	}
	ctx, cancel := context.WithTimeout(ctx, time.Duration(secs)*time.Second+30*time.Second)
	defer cancel()
	args := []string{"-t" + strconv.Itoa(g.threads), "-c" + strconv.Itoa(g.conns), "-d" + strconv.Itoa(secs) + "s", "--latency"}
	for _, h := range ep.Headers {
		args = append(args, "-H", h)
	}
	cmd := exec.CommandContext(ctx, g.path, append(args, ep.URL)...)
	setDeathSignal(cmd)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return loadResult{}, fmt.Errorf("wrk: %w\n%s", err, out)
	}
	r, err := parseWrk(string(out))
	r.GenCPU = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	return r, err
}

var (
	reWrkPercentile = regexp.MustCompile(`(?m)^\s*(50|99)(?:\.0+)?%\s+([0-9.]+)(us|ms|s|m|h)\s*$`)
	reWrkRequests   = regexp.MustCompile(`(?m)^\s*(\d+) requests in ([0-9.]+)(us|ms|s|m|h)`)
	reWrkRPS        = regexp.MustCompile(`(?m)^Requests/sec:\s+([0-9.]+)`)
	reWrkNon2xx     = regexp.MustCompile(`(?m)^\s*Non-2xx or 3xx responses:\s+(\d+)`)
	reWrkBytes      = regexp.MustCompile(`requests in [0-9.]+\w+, ([0-9.]+)([KMGTP]?)B read`)
	reWrkSocket     = regexp.MustCompile(`(?m)^\s*Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
)

// parseWrk reads the figures out of `wrk --latency` output.
func parseWrk(out string) (loadResult, error) {
	var r loadResult
	m := reWrkRequests.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("wrk output has no request count:\n%s", out)
	}
	r.Requests, _ = strconv.ParseInt(m[1], 10, 64)
	el, err := wrkDuration(m[2], m[3])
	if err != nil {
		return r, err
	}
	r.Elapsed = el
	m = reWrkRPS.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("wrk output has no Requests/sec:\n%s", out)
	}
	r.ReqPerSec, _ = strconv.ParseFloat(m[1], 64)
	found := 0
	for _, m := range reWrkPercentile.FindAllStringSubmatch(out, -1) {
		v, err := wrkDuration(m[2], m[3])
		if err != nil {
			return r, err
		}
		if m[1] == "50" {
			r.P50 = v
		} else {
			r.P99 = v
		}
		found++
	}
	if found < 2 && r.Requests > 0 {
		return r, fmt.Errorf("wrk output has no latency distribution (run with --latency):\n%s", out)
	}
	if m := reWrkBytes.FindStringSubmatch(out); m != nil {
		v, _ := strconv.ParseFloat(m[1], 64)
		exp := 0
		if m[2] != "" {
			exp = strings.Index("KMGTP", m[2]) + 1
		}
		r.BytesRead = int64(v * math.Pow(1024, float64(exp)))
	}
	if m := reWrkNon2xx.FindStringSubmatch(out); m != nil {
		r.Non2xx, _ = strconv.ParseInt(m[1], 10, 64)
	}
	if m := reWrkSocket.FindStringSubmatch(out); m != nil {
		n := make([]int64, 4)
		for i, s := range m[1:] {
			n[i], _ = strconv.ParseInt(s, 10, 64)
			r.Errors += n[i]
		}
		r.Socket = socketErrors{Connect: n[0], Read: n[1], Write: n[2], Timeout: n[3]}
	}
	return r, nil
}

// wrkDuration converts wrk's "12.34" "ms" into a duration.
func wrkDuration(num, unit string) (time.Duration, error) {
	v, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return 0, fmt.Errorf("wrk duration %q: %w", num+unit, err)
	}
	scale := map[string]time.Duration{"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second, "m": time.Minute, "h": time.Hour}[unit]
	if scale == 0 {
		return 0, fmt.Errorf("wrk duration %q: unknown unit", num+unit)
	}
	return time.Duration(v * float64(scale)), nil
}

// goGen is the built-in generator: conns goroutines, each with a keep-alive
// connection, issuing GETs back to back (closed loop, like wrk).
type goGen struct {
	conns int
}

func (g goGen) Name() string { return fmt.Sprintf("built-in Go generator, %d connections", g.conns) }

// maxSamplesPerWorker bounds memory; beyond it latencies are not recorded
// (requests are still counted).
const maxSamplesPerWorker = 1 << 20

func (g goGen) Run(ctx context.Context, ep endpoint, d time.Duration) (loadResult, error) {
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConns:        g.conns,
		MaxIdleConnsPerHost: g.conns,
		MaxConnsPerHost:     g.conns,
		DisableCompression:  true,
		IdleConnTimeout:     30 * time.Second,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()

	type worker struct {
		n, non2xx, errs, bytes, wrong int64
		lat                           []time.Duration
	}
	ws := make([]worker, g.conns)
	var wg sync.WaitGroup
	cpu0, cpuErr := readCPU(os.Getpid())
	start := time.Now()
	for i := range ws {
		wg.Add(1)
		go func(w *worker) {
			defer wg.Done()
			w.lat = make([]time.Duration, 0, 4096)
			for ctx.Err() == nil {
				t0 := time.Now()
				status, body, err := getOnce(ctx, client, ep)
				if err != nil {
					if ctx.Err() != nil {
						return // the run ended mid-request: not an error
					}
					w.errs++
					time.Sleep(time.Millisecond) // do not spin on a dead target
					continue
				}
				w.n++
				w.bytes += int64(len(body))
				if status/100 != 2 {
					w.non2xx++
				} else if string(body) != upstreamBody {
					w.wrong++
				}
				if len(w.lat) < maxSamplesPerWorker {
					w.lat = append(w.lat, time.Since(t0))
				}
			}
		}(&ws[i])
	}
	wg.Wait()
	var r loadResult
	r.Elapsed = time.Since(start)
	if cpu1, err := readCPU(os.Getpid()); err == nil && cpuErr == nil {
		r.GenCPU = cpu1.total() - cpu0.total()
	}
	var all []time.Duration
	for _, w := range ws {
		r.Requests += w.n
		r.Non2xx += w.non2xx
		r.Errors += w.errs
		r.BytesRead += w.bytes
		r.WrongBody += w.wrong
		all = append(all, w.lat...)
	}
	if r.Elapsed > 0 {
		r.ReqPerSec = float64(r.Requests) / r.Elapsed.Seconds()
	}
	slices.Sort(all)
	r.P50 = percentile(all, 0.50)
	r.P99 = percentile(all, 0.99)
	return r, nil
}

// getOnce GETs url and returns the status and up to 4 KiB of the body
// (the rest is discarded, so the connection stays reusable).
func getOnce(ctx context.Context, client *http.Client, ep endpoint) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, ep.URL, nil)
	if err != nil {
		return 0, nil, err
	}
	req.Header = ep.header() // a fresh map per request: the client may add to it
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if err == nil {
		_, err = io.Copy(io.Discard, resp.Body)
	}
	if err != nil {
		return 0, nil, err
	}
	return resp.StatusCode, body, nil
}

// percentile returns the nearest-rank percentile p (0..1] of sorted samples.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	i = max(0, min(i, len(sorted)-1))
	return sorted[i]
}

// preflight sends one GET and checks that the answer is the upstream's, so
// that a gateway answering 404 or a stub is reported before the numbers.
// When ep carries headers (the pipeline's proxy key), it also checks that
// the same GET without them is refused with 401, so that a gateway which
// does not check the key is not measured as "the full pipeline".
func preflight(ctx context.Context, ep endpoint) error {
	status, body, ctype, err := getForPreflight(ctx, ep)
	if err != nil {
		return err
	}
	if status != http.StatusOK || string(body) != upstreamBody {
		return fmt.Errorf("GET %s answered %d (Content-Type %q) with body %q, not the upstream's 200 and body",
			ep.URL, status, ctype, firstLine(string(body)))
	}
	if len(ep.Headers) == 0 {
		return nil
	}
	status, body, _, err = getForPreflight(ctx, endpoint{URL: ep.URL})
	if err != nil {
		return err
	}
	if status != http.StatusUnauthorized {
		return fmt.Errorf("GET %s without the proxy key answered %d %q, want 401: the key is not checked",
			ep.URL, status, firstLine(string(body)))
	}
	return nil
}

func getForPreflight(ctx context.Context, ep endpoint) (status int, body []byte, ctype string, err error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, ep.URL, nil)
	if err != nil {
		return 0, nil, "", err
	}
	req.Header = ep.header()
	tr := &http.Transport{Proxy: nil, DisableCompression: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return 0, nil, "", err
	}
	defer resp.Body.Close()
	body, _ = io.ReadAll(io.LimitReader(resp.Body, 2048))
	return resp.StatusCode, body, resp.Header.Get("Content-Type"), nil
}

func firstLine(s string) string {
	sc := bufio.NewScanner(strings.NewReader(s))
	if sc.Scan() {
		s = sc.Text()
	}
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return s
}

var errInvalid = errors.New("the figures are NOT valid")
