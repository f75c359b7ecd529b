package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	discordsim "github.com/byteproxy/byteproxy/internal/upstreamsim/discord"
)

// -upstream-sim discord: every target proxies to the Discord simulator of
// internal/upstreamsim/discord (in the upstream process, in place of the
// plain-http upstream) on a Discord route, so that the gateway with
// budgets mirrors real X-RateLimit-* headers. The simulator's limits are
// far above what any load reaches: nothing binds, and the budgets' cost is
// measured, not their waits.

const simDiscord = "discord"

// The sim upstream process's settings, from its environment.
const (
	upstreamSimEnv    = "BYTEPROXY_BENCH_UPSTREAM_SIM"    // discord
	upstreamTokensEnv = "BYTEPROXY_BENCH_UPSTREAM_TOKENS" // the gateway's and the client's bot tokens, comma-separated
)

// simTokenEnv holds the gateway's bot token, in the gateway targets'
// environment only.
const simTokenEnv = "BYTEPROXY_BENCH_BOT_TOKEN"

// simPath is the default request path with -upstream-sim discord: GET a
// channel's messages (bucket and global limit) through the bench service.
const simPath = "/proxy/bench/v10/channels/100000000000000001/messages"

// simStatsPath is answered by the sim upstream process itself (never the
// simulator): what the simulator saw, as JSON.
const simStatsPath = "/_bench/stats"

// Limits that never bind: 100,000 requests per 100ms globally (1M/s; the
// gateway's engine keeps a ring of global_limit answer times, so the
// window stays short), 1,000,000 per second per route bucket.
const (
	simGlobalLimit  = 100000
	simGlobalWindow = 100 * time.Millisecond
	simBucketLimit  = 1000000
)

// simTokens are the fake bot tokens of a run: the gateway's (from its
// environment) and the one plain Caddy's client sends (plain Caddy has no
// credential of its own).
type simTokens struct{ gateway, client string }

func newSimTokens() (simTokens, error) {
	g, err := randomKey()
	if err != nil {
		return simTokens{}, err
	}
	c, err := randomKey()
	return simTokens{gateway: "bench-gw-" + g, client: "bench-client-" + c}, err
}

// simUpstreamEnv is the upstream process's environment for the simulator;
// none without -upstream-sim.
func (c config) simUpstreamEnv() []string {
	if c.UpstreamSim == "" {
		return nil
	}
	return []string{upstreamSimEnv + "=" + c.UpstreamSim, upstreamTokensEnv + "=" + c.simTokens.gateway + "," + c.simTokens.client}
}

// targetEnv is a target's environment: -env; for plain Caddy, stock
// Caddy's GOGC (100) unless -env sets one, since the byteproxy binary
// that runs it defaults to its own (cmd/byteproxy defaultGCPercent); for
// a gateway target with -upstream-sim its bot token.
func targetEnv(c config, name string) []string {
	if name == nameCaddy {
		if envHas(c.Env, "GOGC") {
			return c.Env
		}
		return append(slices.Clip(c.Env), stockCaddyGOGC)
	}
	if c.UpstreamSim == "" {
		return c.Env
	}
	return append(slices.Clip(c.Env), simTokenEnv+"="+c.simTokens.gateway)
}

// stockCaddyGOGC is the GC setting of a caddy binary run without GOGC.
const stockCaddyGOGC = "GOGC=100"

// envHas reports whether env (K=V entries) sets key.
func envHas(env []string, key string) bool {
	for _, kv := range env {
		if k, _, _ := strings.Cut(kv, "="); k == key {
			return true
		}
	}
	return false
}

// simConfig is the simulator of the benchmark: Discord's routes with
// limits that never bind, the upstream's body on every answer (so that
// the benchmark's answer checks hold), latency the -upstream-delay.
func simConfig(tokens []string, latency time.Duration) discordsim.Config {
	buckets := discordsim.FastBuckets()
	for h, b := range buckets {
		b.Limit, b.Window = simBucketLimit, time.Second
		buckets[h] = b
	}
	return discordsim.Config{
		Tokens: tokens, GlobalLimit: simGlobalLimit, GlobalWindow: simGlobalWindow,
		Buckets: buckets, Latency: latency, Body: upstreamBody, NoArrivals: true,
		// Only the preflight's request without a token is invalid.
		BanThreshold: 1 << 30,
	}
}

// simCaddyfile turns a target's Caddyfile (made for the plain upstream at
// upURL) into one for the simulator there. Plain Caddy maps the bench
// service's path onto Discord's /api/ as the gateway does; the gateway's
// service becomes the discord preset with the bot token from its
// environment, a rate_limit that never binds (the preset's is Discord's
// 50/s, applied when its budget is off), and upstream_limits off, or with
// -budgets on with a global limit that never binds.
func simCaddyfile(cf, name, upURL string) (string, error) {
	var anchor, repl string
	if name == nameCaddy {
		anchor = "\n\treverse_proxy " + upURL
		repl = "\n\turi replace /proxy/bench/ /api/ 1" + anchor
	} else {
		anchor = "\t\tservice bench {\n\t\t\tbase_url " + upURL + "/\n"
		limits := "\t\t\tupstream_limits off\n"
		if name == nameBudgets {
			limits = fmt.Sprintf("\t\t\tupstream_limits {\n\t\t\t\tglobal_limit %d %s\n\t\t\t}\n", simGlobalLimit, simGlobalWindow)
		}
		repl = "\t\tservice bench discord {\n\t\t\tbase_url " + upURL + "/api/\n" +
			"\t\t\tauth bot {env." + simTokenEnv + "}\n\t\t\trate_limit 100000000 1m\n" + limits
	}
	if strings.Count(cf, anchor) != 1 {
		return "", fmt.Errorf("-upstream-sim: the %s Caddyfile does not have %q once:\n%s", name, anchor, cf)
	}
	return strings.Replace(cf, anchor, repl, 1), nil
}

// runSimUpstream is the upstream process with -upstream-sim: the
// simulator served on a loopback port, its connections announced as the
// plain upstream's are, until stdin closes.
func runSimUpstream(kind string) {
	if kind != simDiscord {
		fmt.Fprintf(os.Stderr, "upstream: unknown simulator %q\n", kind)
		os.Exit(1)
	}
	tokens := strings.Split(os.Getenv(upstreamTokensEnv), ",")
	if len(tokens) != 2 || tokens[0] == "" || tokens[1] == "" {
		fmt.Fprintln(os.Stderr, "upstream:", upstreamTokensEnv, "wants two tokens")
		os.Exit(1)
	}
	sim, err := discordsim.NewHandler(simConfig(tokens, upstreamDelay))
	if err != nil {
		fmt.Fprintln(os.Stderr, "upstream:", err)
		os.Exit(1)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, "upstream:", err)
		os.Exit(1)
	}
	h := &simHandler{sim: sim, gateway: "Bot " + tokens[0], client: "Bot " + tokens[1]}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ConnState: func(_ net.Conn, st http.ConnState) {
			if st == http.StateNew {
				announceConn(protoH1, false)
			}
		},
	}
	fmt.Printf("listening %s\n", ln.Addr())
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()
	err = srv.Serve(ln)
	fmt.Fprintln(os.Stderr, "upstream:", err)
	os.Exit(1)
}

// simHandler counts the requests by the bot token they carry and answers
// simStatsPath; everything else is the simulator's.
type simHandler struct {
	sim                     *discordsim.Server
	gateway, client         string // their Authorization values
	byGateway, byClient, by atomic.Int64
}

func (h *simHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == simStatsPath {
		st := h.sim.Stats()
		_ = json.NewEncoder(w).Encode(simReport{
			GatewayToken: h.byGateway.Load(), ClientToken: h.byClient.Load(), OtherToken: h.by.Load(),
			ByStatus: st.ByStatus, Upstream429s: st.Upstream429s(),
		})
		return
	}
	switch r.Header.Get("Authorization") {
	case h.gateway:
		h.byGateway.Add(1)
	case h.client:
		h.byClient.Add(1)
	default:
		h.by.Add(1)
	}
	h.sim.ServeHTTP(w, r)
}

// simReport is what the simulator saw over the whole run (preflight
// requests and warmups included).
type simReport struct {
	Kind string `json:"kind"`
	// Requests with the gateway's bot token, plain Caddy's client's, and
	// with none or another.
	GatewayToken int64       `json:"gatewayToken"`
	ClientToken  int64       `json:"clientToken"`
	OtherToken   int64       `json:"otherToken"`
	ByStatus     map[int]int `json:"byStatus"`
	Upstream429s int         `json:"upstream429s"`
}

// fetchSimReport asks the simulator behind up what it saw.
func fetchSimReport(ctx context.Context, kind string, up *upstream) (*simReport, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, up.baseURL()+simStatsPath, nil)
	if err != nil {
		return nil, err
	}
	tr := &http.Transport{Proxy: nil}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var sr simReport
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&sr); err != nil {
		return nil, fmt.Errorf("simulator stats: %w", err)
	}
	sr.Kind = kind
	return &sr, nil
}

// print is the report's line about the simulator.
func (s *simReport) print(w io.Writer) {
	codes := make([]int, 0, len(s.ByStatus))
	for c := range s.ByStatus {
		codes = append(codes, c)
	}
	slices.Sort(codes)
	var parts []string
	for _, c := range codes {
		parts = append(parts, fmt.Sprintf("%d: %d", c, s.ByStatus[c]))
	}
	fmt.Fprintf(w, "\n%s simulator saw %d requests with the gateway's bot token, %d with plain Caddy's client's, %d with none;"+
		" answered %s; Discord 429s %d\n", s.Kind, s.GatewayToken, s.ClientToken, s.OtherToken, strings.Join(parts, ", "), s.Upstream429s)
}

var errSimFlags = errors.New("-upstream-sim discord serves plain HTTP: use it with -upstream http (or the default) and without -upstream-proto")
