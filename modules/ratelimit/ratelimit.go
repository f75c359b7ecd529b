// Package ratelimit is the http.handlers.byteproxy_ratelimit module: the
// gateway's service and client rate limits.
package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	neturl "net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/byteproxy/byteproxy/internal/fleet"
	"github.com/byteproxy/byteproxy/internal/metrics"
	"github.com/byteproxy/byteproxy/internal/routes"
	"github.com/byteproxy/byteproxy/modules/gateway"
)

func init() {
	caddy.RegisterModule(new(Handler))
}

// Handler enforces the byteproxy app's service and client rate limits on
// /proxy/{service}/... and passes anything else untouched. Its counters
// survive reloads (the limiters pool) and can be shared through Redis;
// docs/HANDLERS.md describes the limits, headers and Redis fallback.
type Handler struct {
	app    *gateway.App
	logger *zap.Logger

	// Service windows of this handler by service key, copied on write so
	// that requests read them without a lock.
	windows atomic.Pointer[map[string]*serviceLimit]
	mu      sync.Mutex // serializes changes to windows and closed
	closed  bool

	clientMax     int
	clientWindow  time.Duration
	clientPolicy  string // the client limit's RateLimit-Policy member
	clients       *bucketStore
	clientsKey    string
	clientsPrefix string // Redis key prefix of the client buckets

	redis    *redisStore
	redisKey string
	redisSub int
}

// serviceLimit is a service's limit and the state that enforces it.
type serviceLimit struct {
	limit    gateway.RateLimit
	poolKey  string // empty for a window outside the pool
	win      *window
	redisKey string
	policy   string // RateLimit-Policy value: this limit's, then the client limit's
}

// limiters keeps windows, client buckets and Redis connections across
// config reloads: a new config's handler loads the entries of the old one
// with the same key before the old one is cleaned up.
var limiters = caddy.NewUsagePool()

// CaddyModule returns the Caddy module information.
func (*Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.byteproxy_ratelimit",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision acquires the state of every limit of the current config.
func (h *Handler) Provision(ctx caddy.Context) error {
	app, err := gateway.FromContext(ctx)
	if err != nil {
		return err
	}
	h.app = app
	h.logger = ctx.Logger()
	h.windows.Store(&map[string]*serviceLimit{})
	// The client limit first: each service limit's policy header names it.
	if rl := app.ClientRateLimit; rl != nil {
		if err := h.provisionClients(rl); err != nil {
			return err
		}
	}
	for key, svc := range app.AllServices() {
		if rl := svc.Config.RateLimit; rl != nil {
			h.serviceLimitFor(key, rl)
		}
	}
	return h.provisionRedis()
}

func (h *Handler) provisionClients(rl *gateway.RateLimit) error {
	if err := rl.Validate(); err != nil {
		return fmt.Errorf("client_rate_limit: %w", err)
	}
	h.clientMax, h.clientWindow = rl.MaxRequests, time.Duration(rl.Window)
	h.clientPolicy = policyMember(metrics.LimitClient, h.clientMax, h.clientWindow)
	h.clientsKey = fmt.Sprintf("clients|%d|%d", h.clientMax, h.clientWindow)
	h.clientsPrefix = redisClientPrefix(h.clientMax, h.clientWindow)
	v, _, err := limiters.LoadOrNew(h.clientsKey, func() (caddy.Destructor, error) {
		s := newBucketStore(h.clientMax, h.clientWindow)
		s.Start()
		return s, nil
	})
	if err != nil {
		return err
	}
	h.clients = v.(*bucketStore)
	return nil
}

func (h *Handler) provisionRedis() error {
	url := caddy.NewReplacer().ReplaceAll(h.app.Redis, "")
	if url == "" {
		h.app.SetStatus("redis", redisStatus{})
		return nil
	}
	h.redisKey = "redis|" + url
	v, _, err := limiters.LoadOrNew(h.redisKey, func() (caddy.Destructor, error) {
		return newRedisStore(url, h.logger, defaultRedisTimings)
	})
	if err != nil {
		h.redisKey = ""
		return gateway.ConfigError(redisURLError(err, h.app.Redis), "redis")
	}
	h.redis = v.(*redisStore)
	app := h.app
	h.redisSub = h.redis.subscribe(redisListener{
		status: func(st redisStatus) {
			app.SetStatus("redis", st)
			app.Metrics().SetRedisFallback(st.Fallback)
		},
		carry: h.carryBack,
	}, h.logger)
	return nil
}

// redisURLError describes a Redis URL that could not be used without
// quoting the URL, which may hold a password (url.Error quotes it whole);
// a placeholder it came from is named instead.
func redisURLError(err error, raw string) error {
	var ue *neturl.Error
	if errors.As(err, &ue) {
		err = fmt.Errorf("not a valid URL: %w", ue.Err)
	}
	if strings.HasPrefix(raw, "{") && strings.HasSuffix(raw, "}") {
		return fmt.Errorf("%w (the URL came from %s)", err, raw)
	}
	return err
}

// ServeHTTP answers the rate-limit endpoint and enforces the limits of
// service requests.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if key, ok := routes.RateLimitPath(r.URL.Path); ok && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
		return h.serveInfo(w, r, key)
	}
	// The escaped path, as byteproxy_services reads it.
	key, rest, ok := routes.ProxyPath(r.URL.EscapedPath())
	if !ok {
		return next.ServeHTTP(w, r)
	}
	svc := h.app.Service(key)
	if svc == nil || (svc.Config.RateLimit == nil && h.clients == nil) {
		return next.ServeHTTP(w, r)
	}
	if status, _ := svc.LocalRefusal(r, rest); status != 0 {
		return next.ServeHTTP(w, r) // refused by byteproxy_services; spends nothing
	}
	var sl *serviceLimit
	if rl := svc.Config.RateLimit; rl != nil {
		sl = h.serviceLimitFor(key, rl)
	}
	now := time.Now()
	v := h.decide(r, now, sl)
	h.setHeaders(w.Header(), &v, now)
	gateway.AddLogField(r, zap.Int64("rate_limit_remaining", v.remaining()))
	if v.refused != "" {
		return h.refuse(w, r, svc, &v, now)
	}
	return next.ServeHTTP(w, r)
}

// verdict is one request's decision and the figures for its headers.
type verdict struct {
	refused string // "", metrics.LimitClient or metrics.LimitService

	service    *serviceLimit // nil without a service limit
	window     windowState
	hasClient  bool
	bucket     bucketState
	clientMax  int
	clientSize time.Duration
}

// decide makes the decision in Redis when it is configured and reachable,
// else in memory.
func (h *Handler) decide(r *http.Request, now time.Time, sl *serviceLimit) verdict {
	v := verdict{service: sl, hasClient: h.clients != nil, clientMax: h.clientMax, clientSize: h.clientWindow}
	var ck clientKey
	if v.hasClient {
		ck = clientOf(r)
	}
	if h.redis != nil && h.redis.up.Load() {
		err := h.decideRedis(r.Context(), now, &v, ck)
		if err == nil {
			return v
		}
		if r.Context().Err() == nil { // a client that left is no outage
			h.redis.markDown(err)
		}
	}
	h.decideLocal(now, &v, ck)
	return v
}

// decideLocal decides in memory: without Redis, or during an outage with
// this instance's share of the limits.
func (h *Handler) decideLocal(now time.Time, v *verdict, ck clientKey) {
	sl := v.service
	n := h.instances()
	if !v.hasClient {
		if v.window = sl.win.take(now, n); !v.window.ok {
			v.refused = metrics.LimitService
		}
		return
	}
	var next func() bool
	if sl != nil {
		next = func() bool {
			v.window = sl.win.take(now, n)
			return v.window.ok
		}
	}
	v.bucket = h.clients.admit(now, ck, h.clientCost(n), next)
	switch {
	case !v.bucket.ok:
		v.refused = metrics.LimitClient
	case sl != nil && !v.window.ok:
		v.refused = metrics.LimitService
	}
}

func (h *Handler) decideRedis(ctx context.Context, now time.Time, v *verdict, ck clientKey) error {
	var bucketKey, windowKey string
	var smax int
	var swin time.Duration
	if v.hasClient {
		bucketKey = h.clientsPrefix + ck.String()
	}
	if sl := v.service; sl != nil {
		windowKey, smax, swin = sl.redisKey, sl.limit.MaxRequests, time.Duration(sl.limit.Window)
	}
	ctx, cancel := context.WithTimeout(ctx, fleet.CallTimeout)
	defer cancel()
	rep, err := h.redis.decide(ctx, bucketKey, h.clientMax, h.clientWindow, windowKey, smax, swin)
	if err != nil {
		return err
	}
	if v.hasClient {
		v.bucket = bucketState{ok: rep.verdict != 1, remaining: int64(max(rep.tokens, 0)), full: rep.full, retry: rep.retry}
	}
	if v.service != nil {
		v.window = windowState{ok: rep.verdict == 0, remaining: max(int64(smax)-rep.count, 0), end: now.Add(rep.ttl)}
		if rep.verdict != 1 { // a client refusal does not read the window
			v.service.win.observe(now, rep.count, v.window.end)
		}
	}
	switch rep.verdict {
	case 1:
		v.refused = metrics.LimitClient
	case 2:
		v.refused = metrics.LimitService
	}
	return nil
}

// instances is the number of instances sharing the limits: the live ones
// last seen in Redis, 1 without Redis.
func (h *Handler) instances() int64 {
	if h.redis == nil {
		return 1
	}
	return h.redis.instances.Load()
}

// clientCost is what a request costs in tokens when n instances share the
// client limit: n, which divides both the burst and the rate of a local
// bucket by n; but never more than a full bucket, so that a client limit
// smaller than the number of instances still admits.
//
// A local bucket starts full rather than from the client's bucket in
// Redis, and is not carried back: a token bucket forgets everything within
// one window anyway (an idle bucket is full), so this costs at most one
// extra burst per client across the cluster at either end of an outage,
// while tracking every client's Redis state would cost every request
// memory and time. The service limits, which protect the upstreams'
// quotas, are the ones carried across an outage.
func (h *Handler) clientCost(n int64) int {
	return int(min(n, int64(h.clientMax)))
}

// carryBack writes back to Redis, when it returns after an outage, what
// this instance knows of its service windows that Redis may not: the
// requests it admitted on its own, and the counts Redis reported before
// (which a restarted Redis has lost). Windows that have ended are dropped.
func (h *Handler) carryBack(ctx context.Context) (int64, error) {
	now := time.Now()
	var debts []windowDebt
	var wins []*window
	for _, sl := range *h.windows.Load() {
		if d, ok := sl.win.pending(now); ok {
			d.key = sl.redisKey
			debts, wins = append(debts, d), append(wins, sl.win)
		}
	}
	if len(debts) == 0 {
		return 0, nil
	}
	got, err := h.redis.carryBack(ctx, debts)
	if err != nil {
		return 0, err
	}
	var carried int64
	for i, d := range debts {
		wins[i].carried(now, d, got[i])
		if got[i].ok {
			carried += d.count
		}
	}
	return carried, nil
}

// remaining is what is left of the limit that refused the request, else
// of the service limit, else of the client limit: the access log's
// rate_limit_remaining.
func (v *verdict) remaining() int64 {
	if v.refused == metrics.LimitClient || v.service == nil {
		return v.bucket.remaining
	}
	return v.window.remaining
}

// serviceReset is the time until the service window ends. A window
// another request opened after this one read the clock ends more than a
// window after now; what is left of it never is.
func (v *verdict) serviceReset(now time.Time) time.Duration {
	return max(min(v.window.end.Sub(now), time.Duration(v.service.limit.Window)), 0)
}

// setHeaders describes the limits that apply to the request in the IETF
// draft's fields: RateLimit-Policy, each limit's quota and window, and
// RateLimit, each limit's state (remaining, seconds until reset). A
// request the client limit refused did not read the service window, so
// its RateLimit names the client limit alone.
func (h *Handler) setHeaders(hdr http.Header, v *verdict, now time.Time) {
	var buf [96]byte
	b := buf[:0]
	policy := h.clientPolicy
	if v.service != nil {
		policy = v.service.policy
		if v.refused != metrics.LimitClient {
			b = appendState(b, metrics.LimitService, v.window.remaining, v.serviceReset(now))
		}
	}
	if v.hasClient {
		if len(b) > 0 {
			b = append(b, ", "...)
		}
		b = appendState(b, metrics.LimitClient, v.bucket.remaining, v.bucket.full)
	}
	// A slice of this request's own (Caddy's header directive edits
	// values in place); the keys are already canonical. One allocation
	// for both (BenchmarkHeaders: 2 allocs/op against 3 with a slice
	// each, 80 B/op both).
	vals := []string{policy, string(b)}
	hdr["Ratelimit-Policy"] = vals[0:1:1]
	hdr["Ratelimit"] = vals[1:2:2]
}

// policyMember is one member of RateLimit-Policy: `"name";q=100;w=60`.
// The window is in whole seconds, rounded up.
func policyMember(name string, quota int, window time.Duration) string {
	b := strconv.AppendQuote(nil, name)
	b = append(b, ";q="...)
	b = strconv.AppendInt(b, int64(quota), 10)
	b = append(b, ";w="...)
	b = strconv.AppendInt(b, max(ceilSeconds(window), 1), 10)
	return string(b)
}

// appendState appends one member of RateLimit: `"name";r=42;t=17`.
func appendState(b []byte, name string, remaining int64, reset time.Duration) []byte {
	b = append(b, '"')
	b = append(b, name...)
	b = append(b, `";r=`...)
	b = strconv.AppendInt(b, max(remaining, 0), 10)
	b = append(b, ";t="...)
	return strconv.AppendInt(b, ceilSeconds(reset), 10)
}

// refuse answers 429 through gateway.WriteRefusal, in the service's shape.
func (h *Handler) refuse(w http.ResponseWriter, r *http.Request, svc *gateway.Service, v *verdict, now time.Time) error {
	key := svc.Key
	h.app.Metrics().RateLimited(key, v.refused)
	gateway.AddLogField(r, zap.String("rate_limited", v.refused))
	_, path, _ := routes.ProxyPath(r.URL.Path) // the body's path, decoded as the original's
	rf := gateway.Refusal{Service: svc, Path: path}
	if v.refused == metrics.LimitClient {
		rf.RetryAfter, rf.Limit = v.bucket.retry, int64(v.clientMax)
		secs := max(ceilSeconds(rf.RetryAfter), 1)
		rf.Error = fmt.Sprintf("Client rate limit exceeded. Reset in %d seconds.", secs)
		rf.LimitType = metrics.LimitClient
		rf.Hint = fmt.Sprintf("Each client (its API key, else its IP address) may make %d requests per %s through this gateway, across all services. Wait %d seconds before retrying.",
			v.clientMax, humanDuration(v.clientSize), secs)
		rf.Scope, rf.Resource = "user", "byteproxy_client" // this consumer's own limit
	} else {
		rl := v.service.limit
		rf.RetryAfter, rf.Limit = v.serviceReset(now), int64(rl.MaxRequests)
		secs := max(ceilSeconds(rf.RetryAfter), 1)
		rf.Error = fmt.Sprintf("Rate limit exceeded for %s. Reset in %d seconds.", key, secs)
		rf.Hint = fmt.Sprintf("The service '%s' allows %d requests per %s through this gateway, shared by all clients. Wait for the window to reset, or raise the service's rate_limit.",
			key, rl.MaxRequests, humanDuration(time.Duration(rl.Window)))
		rf.Scope, rf.Resource = "shared", "byteproxy_service" // shared by every client of the service
	}
	h.logger.Debug("rate limited", zap.String("service", key), zap.String("limit", v.refused), zap.Duration("retry_after", rf.RetryAfter))
	return gateway.WriteRefusal(w, r, rf)
}

// serviceLimitFor returns the state of the service's current limit,
// acquiring it on first use (runtime services appear and change between
// reloads).
func (h *Handler) serviceLimitFor(key string, rl *gateway.RateLimit) *serviceLimit {
	if sl := (*h.windows.Load())[key]; sl != nil && sl.limit == *rl {
		return sl
	}
	return h.acquireWindow(key, *rl)
}

// acquireWindow loads the window of key's limit from the pool and drops
// the windows of services that were removed or whose limit changed.
func (h *Handler) acquireWindow(key string, rl gateway.RateLimit) *serviceLimit {
	size := time.Duration(rl.Window)
	h.mu.Lock()
	defer h.mu.Unlock()
	old := *h.windows.Load()
	if sl := old[key]; sl != nil && sl.limit == rl {
		return sl
	}
	sl := &serviceLimit{limit: rl, redisKey: redisServiceKey(key, rl.MaxRequests, size), policy: policyMember(metrics.LimitService, rl.MaxRequests, size)}
	if h.clientPolicy != "" {
		sl.policy += ", " + h.clientPolicy
	}
	if h.closed { // a request still in flight after Cleanup: do not leak a pool entry
		sl.win = newWindow(rl.MaxRequests, size)
		return sl
	}
	sl.poolKey = fmt.Sprintf("window|%s|%d|%d", key, rl.MaxRequests, size)
	v, _, _ := limiters.LoadOrNew(sl.poolKey, func() (caddy.Destructor, error) {
		return newWindow(rl.MaxRequests, size), nil
	})
	sl.win = v.(*window)
	m := make(map[string]*serviceLimit, len(old)+1)
	for k, o := range old {
		if svc := h.app.Service(k); k == key || svc == nil || svc.Config.RateLimit == nil || *svc.Config.RateLimit != o.limit {
			_, _ = limiters.Delete(o.poolKey)
			continue
		}
		m[k] = o
	}
	m[key] = sl
	h.windows.Store(&m)
	return sl
}

// Cleanup releases this handler's share of the pooled state; state that
// the new config still uses lives on.
func (h *Handler) Cleanup() error {
	h.mu.Lock()
	h.closed = true
	var m map[string]*serviceLimit
	if p := h.windows.Load(); p != nil {
		m = *p
	}
	h.mu.Unlock()
	for _, sl := range m {
		_, _ = limiters.Delete(sl.poolKey)
	}
	if h.clients != nil {
		_, _ = limiters.Delete(h.clientsKey)
	}
	if h.redis != nil {
		h.redis.unsubscribe(h.redisSub)
		_, _ = limiters.Delete(h.redisKey)
	}
	return nil
}

// clientOf names the consumer: the API key id that byteproxy_auth set,
// else the client IP (which honours trusted_proxies), else the peer
// address.
func clientOf(r *http.Request) clientKey {
	ctx := r.Context()
	if id, _ := caddyhttp.GetVar(ctx, gateway.VarClient).(string); id != "" {
		return clientKey{kind: kindKeyID, id: id}
	}
	if ip, _ := caddyhttp.GetVar(ctx, caddyhttp.ClientIPVarKey).(string); ip != "" {
		return clientKey{kind: kindIP, id: ip}
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	return clientKey{kind: kindIP, id: host}
}

// ceilSeconds rounds up to whole seconds; never negative.
func ceilSeconds(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + time.Second - 1) / time.Second)
}

// humanDuration writes a window as people say it: "1 minute", "2 hours".
func humanDuration(d time.Duration) string {
	for _, u := range []struct {
		d    time.Duration
		name string
	}{{24 * time.Hour, "day"}, {time.Hour, "hour"}, {time.Minute, "minute"}, {time.Second, "second"}} {
		if d >= u.d && d%u.d == 0 {
			if n := d / u.d; n != 1 {
				return fmt.Sprintf("%d %ss", n, u.name)
			}
			return "1 " + u.name
		}
	}
	return d.String()
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
