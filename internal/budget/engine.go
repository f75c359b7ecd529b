// Package budget keeps a gateway's requests within the rate limits of the
// upstreams it calls: a request the upstream would refuse for rate
// limiting is not sent. Per credential (a token the gateway holds), it
// mirrors the upstream's own limit state from its responses (Discord's
// route buckets, global limit and 429 scopes; GitHub's per-resource
// primary limits and secondary limits; IETF RateLimit fields, X-RateLimit
// headers and Retry-After for any service), reserves from that state before
// a request is sent, holds a request until its budget resets when that is
// within the wait budget, and otherwise refuses it with the exact
// retry-after. Waiting requests are served across consumers by weighted
// fair queueing. A ban guard stops a credential that collects too many
// invalid responses.
//
// The forwarder calls Engine.Reserve before sending and Engine.Done when
// the response head has arrived (or Engine.Cancel when it did not send).
// State lives in a Store: MemStore in one process; a cluster store shares
// it. The package knows nothing of Caddy. See docs/BUDGETS.md.
package budget

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Kind is the upstream whose rules apply.
type Kind uint8

// Kinds.
const (
	KindGeneric Kind = iota // Retry-After and, per Config.Family, IETF or X-RateLimit fields
	KindDiscord             // Discord's route buckets, global limit, 429 scopes
	KindGitHub              // GitHub's resources, secondary limits, spaced mutations
)

// Config configures an engine (one per service).
type Config struct {
	// Kind selects the upstream's rules.
	Kind Kind
	// MaxWait is the most a request is held waiting for its budget; a
	// request's Prefer: wait can only shorten it. 0: never hold, refuse.
	MaxWait time.Duration
	// ResetSlack is added to every reset and lock the upstream announces,
	// for rounding and clock effects at the upstream.
	ResetSlack time.Duration
	// GlobalLimit requests per GlobalWindow per credential (Discord: 50 per
	// second; 0 none) over a sliding window lengthened by GlobalSlack. A
	// request counts from its reservation until GlobalWindow+GlobalSlack
	// after its answer (the latest it can have arrived upstream).
	GlobalLimit  int
	GlobalWindow time.Duration
	GlobalSlack  time.Duration
	// MutationSpacing (GitHub): POST, PATCH, PUT and DELETE go one at a
	// time per credential, each at least this long after the previous one
	// was answered. 0: off.
	MutationSpacing time.Duration
	// MaxInFlight requests per credential at once (0: no limit).
	MaxInFlight int
	// BanThreshold invalid responses (401, 403, 429 except Discord's scope
	// shared) per credential within BanWindow stop the credential until
	// the count falls below it again (0: off).
	BanThreshold int
	BanWindow    time.Duration
	// UnauthorizedLock: after a 401 the credential is not used for this
	// long (the token is wrong; do not hammer the upstream). 0: off.
	UnauthorizedLock time.Duration
	// DefaultLock is the wait after a rate-limit answer that does not say
	// how long (GitHub: "at least one minute").
	DefaultLock time.Duration
	// ProbeWait is the retry-after of a refusal whose end is unknown (a
	// request that will tell the budget is still in flight).
	ProbeWait time.Duration
	// MaxQueue is the most requests waiting per credential. When full, the
	// consumer with the most waiting requests loses its newest one to a
	// consumer with fewer; otherwise the newcomer is refused at once.
	MaxQueue int
	// Weights of consumers in the fair queue (default 1).
	Weights map[string]float64
	// Family and ResetEpoch: how a generic service describes its limits.
	Family     HeaderFamily
	ResetEpoch bool
	// IdleAfter: state untouched this long is forgotten (default 10m).
	IdleAfter time.Duration
	// Logger receives a warning per ban-guard trip and rejected credential.
	Logger *zap.Logger
	// OnBanTrip, if set, is called once per ban-guard trip (for a metric);
	// it must not block.
	OnBanTrip func()
}

// DiscordConfig is Discord's: 5s wait budget, the global limit of 50 per
// second, the ban guard at 5,000 invalid responses in 10 minutes (half of
// Discord's ban threshold), a 401 locking the bot token for 5 minutes.
func DiscordConfig() Config {
	return Config{
		Kind: KindDiscord, MaxWait: 5 * time.Second, ResetSlack: 50 * time.Millisecond,
		GlobalLimit: 50, GlobalWindow: time.Second, GlobalSlack: 20 * time.Millisecond,
		BanThreshold: 5000, BanWindow: 10 * time.Minute, UnauthorizedLock: 5 * time.Minute,
		DefaultLock: time.Minute, ProbeWait: 100 * time.Millisecond, MaxQueue: 1024,
	}
}

// GitHubConfig is GitHub's: 5s wait budget, mutations one at a time a
// second apart, at most 50 requests in flight (GitHub's secondary limit is
// 100), a minute's wait after an unexplained 429, a 401 locking the token
// for 5 minutes.
func GitHubConfig() Config {
	return Config{
		Kind: KindGitHub, MaxWait: 5 * time.Second, ResetSlack: 250 * time.Millisecond,
		MutationSpacing: time.Second, MaxInFlight: 50, UnauthorizedLock: 5 * time.Minute,
		DefaultLock: time.Minute, ProbeWait: 100 * time.Millisecond, MaxQueue: 1024,
	}
}

// GenericConfig is any service's: 5s wait budget, Retry-After honoured.
func GenericConfig() Config {
	return Config{
		Kind: KindGeneric, MaxWait: 5 * time.Second, ResetSlack: 100 * time.Millisecond,
		DefaultLock: time.Minute, ProbeWait: 100 * time.Millisecond, MaxQueue: 1024,
	}
}

// Request is what the engine needs of a request.
type Request struct {
	// Credential identifies the token (CredentialID), never the token.
	Credential string
	// Method and Path: the upstream path below the service's base URL
	// (escaped, with a version segment if any; a query is ignored).
	Method string
	Path   string
	// Consumer is who sends: an API key's id, else the client IP.
	Consumer string
	// Wait, when HasWait, is the client's wait preference (Prefer: wait).
	Wait    time.Duration
	HasWait bool
	// Hold, if set, is told when the request is about to be held (and
	// not otherwise), before it queues: a forwarder that must notice the
	// client leaving while it waits may read a small body then.
	Hold Holder
}

// Holder is told that a request is about to be held.
type Holder interface{ Holding() }

// Ticket is a reservation: pass it to Done (or Cancel) exactly once.
type Ticket struct {
	plan    Plan
	grant   Grant
	method  string
	path    string
	share   Share
	lane    *lane // the credential's, woken when the ticket settles
	settled bool
	// Waited is how long the request was held.
	Waited time.Duration
}

// Share is the consumer's share of the budget the request spent from.
func (t *Ticket) Share() Share { return t.share }

// Engine is one service's upstream budget.
type Engine struct {
	cfg   Config
	rules Rules
	store Store
	log   *zap.Logger
	stats counters

	routesMu  sync.RWMutex
	routes    map[string]*string     // interned folded routes (Discord)
	lastRoute atomic.Pointer[string] // the latest interned, found without routesMu
	lastLane  atomic.Pointer[lane]   // the lane of the latest credential, likewise

	resMu     sync.RWMutex
	resources map[string]string // learned route shape -> resource (GitHub)
	learned   atomic.Bool

	lanesMu sync.RWMutex
	lanes   map[string]*lane
	closed  atomic.Bool

	// queueGranted, set by tests before any request, is told the consumer
	// of each queued request granted, in the order the queue granted them
	// (under the lane's lock, so not reordered by goroutine scheduling).
	queueGranted func(consumer string)
}

// maxInterned bounds the routes and learned resources an engine keeps.
const maxInterned = 4096

// overflowRoute is the bucket of routes beyond maxInterned or too long to
// fold: never learned, so one request at a time per top-level resource.
const overflowRoute = "\x00overflow"

// ErrClosed is returned by Reserve on a closed engine.
var ErrClosed = errors.New("upstream budget: engine closed")

// New returns an engine over a store.
func New(cfg Config, store Store) *Engine {
	if cfg.GlobalWindow <= 0 {
		cfg.GlobalWindow = time.Second
	}
	if cfg.BanWindow <= 0 {
		cfg.BanWindow = 10 * time.Minute
	}
	if cfg.IdleAfter <= 0 {
		cfg.IdleAfter = 10 * time.Minute
	}
	if cfg.ProbeWait <= 0 {
		cfg.ProbeWait = 100 * time.Millisecond
	}
	if cfg.DefaultLock <= 0 {
		cfg.DefaultLock = time.Minute
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	e := &Engine{
		cfg:   cfg,
		store: store,
		log:   log,
		rules: Rules{
			GlobalLimit: cfg.GlobalLimit, GlobalWindow: cfg.GlobalWindow, GlobalSlack: cfg.GlobalSlack,
			ResetSlack: cfg.ResetSlack, MutationSpacing: cfg.MutationSpacing, MaxInFlight: cfg.MaxInFlight,
			BanThreshold: cfg.BanThreshold, BanWindow: cfg.BanWindow, IdleAfter: cfg.IdleAfter,
			MaxRoutes: maxInterned,
		},
		routes:    make(map[string]*string),
		resources: make(map[string]string),
		lanes:     make(map[string]*lane),
	}
	if cfg.Kind != KindDiscord {
		e.rules.GlobalLimit = 0
	}
	return e
}

// CredentialID names a credential for the budget without revealing it: a
// hash of the upstream (its host: services sharing a token and an upstream
// share its limits) and the secret.
func CredentialID(upstream, secret string) string {
	sum := sha256.Sum256([]byte(upstream + "\x00" + secret))
	return "cred-" + hex.EncodeToString(sum[:8])
}

// Reserve decides whether a request may be sent now. Granted, it returns
// a ticket to pass to Done. Otherwise it holds the request while its
// budget resets within the wait budget (the smaller of MaxWait and the
// request's Prefer: wait), and refuses it with a *Refusal when it cannot
// be sent in that time. When ctx ends while waiting, the wait and any
// reservation are released and ctx's error is returned.
func (e *Engine) Reserve(ctx context.Context, req Request) (Ticket, error) {
	if e.closed.Load() {
		return Ticket{}, ErrClosed
	}
	now := time.Now()
	p := e.plan(req, now)
	l := e.lastLane.Load()
	if l == nil || l.cred != p.Cred {
		l = e.lane(p.Cred)
		e.lastLane.Store(l)
	}
	var first Grant
	if l.waiting.Load() == 0 {
		g, err := e.store.Take(ctx, p, now)
		if err != nil {
			return Ticket{}, err
		}
		if g.OK {
			e.stats.granted.Add(1)
			t := e.ticket(p, g, req, 1, now, 0)
			t.lane = l
			return t, nil
		}
		if !e.holdable(g, now, now.Add(e.waitBudget(req))) {
			return Ticket{}, e.refuse(g, now, 0, false)
		}
		first = g
	}
	if req.Hold != nil {
		req.Hold.Holding()
	}
	return e.wait(ctx, l, p, req, first, now)
}

// Done settles a ticket with the response head (status, headers): the
// upstream's answer updates the budget. status 0 (StatusNoResponse): the
// request may have been sent but no response came.
func (e *Engine) Done(t *Ticket, status int, h http.Header) {
	if t == nil || t.settled || !t.grant.OK {
		return
	}
	t.settled = true
	now := time.Now()
	var o Outcome
	o.Status = status
	if status > 0 {
		switch e.cfg.Kind {
		case KindDiscord:
			e.discordOutcome(&o, status, h, now)
		case KindGitHub:
			e.githubOutcome(&o, status, h, now)
		default:
			e.genericOutcome(&o, status, h, now)
		}
		e.count(&o, status)
	}
	st, err := e.store.Settle(context.Background(), t.plan, t.grant, o, now)
	if err == nil && st.Tripped {
		e.stats.banTrips.Add(1)
		if e.cfg.OnBanTrip != nil {
			e.cfg.OnBanTrip()
		}
		e.log.Warn("upstream budget: ban guard tripped; the credential is paused",
			zap.String("credential", t.plan.Cred), zap.Int("invalid_responses", st.Invalid),
			zap.Duration("window", e.cfg.BanWindow), zap.Time("until", st.Until))
	}
	if o.CredScope == ScopeUnauthorized {
		e.log.Warn("upstream budget: the upstream rejected the credential; it is locked",
			zap.String("credential", t.plan.Cred), zap.Duration("for", o.LockCred))
	}
	if e.cfg.Kind == KindGitHub && o.N > 0 {
		e.learnResource(t, o.Facts[0].Name)
	}
	e.kickLane(t)
}

// Cancel releases a ticket whose request was not sent.
func (e *Engine) Cancel(t *Ticket) {
	if t == nil || t.settled || !t.grant.OK {
		return
	}
	t.settled = true
	_, _ = e.store.Settle(context.Background(), t.plan, t.grant, Outcome{Status: StatusNotSent}, time.Now())
	e.kickLane(t)
}

// Waiting is the number of requests of a credential being held.
func (e *Engine) Waiting(cred string) int {
	e.lanesMu.RLock()
	l := e.lanes[cred]
	e.lanesMu.RUnlock()
	if l == nil {
		return 0
	}
	return int(l.waiting.Load())
}

// Close refuses the requests being held and every later one.
func (e *Engine) Close() {
	e.closed.Store(true)
	e.lanesMu.RLock()
	defer e.lanesMu.RUnlock()
	for _, l := range e.lanes {
		l.close()
	}
}

// plan computes what a request is subject to.
func (e *Engine) plan(req Request, now time.Time) Plan {
	p := Plan{Cred: req.Credential, Rules: &e.rules}
	switch e.cfg.Kind {
	case KindDiscord:
		var buf [maxRouteKey + 32]byte
		key, major, flags := discordRoute(buf[:0], req.Method, req.Path, now)
		p.Major = major
		p.Global = flags&routeNoGlobal == 0
		if flags&routeNoBucket == 0 {
			p.Route = e.intern(key)
			p.Direct = p.Route == overflowRoute
		}
	case KindGitHub:
		p.Route = e.githubRoute(req.Method, req.Path)
		p.Direct = true
		p.Serial = e.cfg.MutationSpacing > 0 && mutating(req.Method)
	default:
		p.Wide = true
	}
	return p
}

// intern returns the stable copy of a folded route. The latest is found
// without the lock and the map (BenchmarkReserveDone).
func (e *Engine) intern(key []byte) string {
	if key == nil {
		return overflowRoute
	}
	if last := e.lastRoute.Load(); last != nil && *last == string(key) {
		return *last
	}
	e.routesMu.RLock()
	s, ok := e.routes[string(key)]
	e.routesMu.RUnlock()
	if !ok {
		e.routesMu.Lock()
		if s, ok = e.routes[string(key)]; !ok {
			if len(e.routes) >= maxInterned {
				e.routesMu.Unlock()
				return overflowRoute
			}
			k := string(key)
			s = &k
			e.routes[k] = s
		}
		e.routesMu.Unlock()
	}
	e.lastRoute.Store(s)
	return *s
}

// githubRoute is the resource a GitHub request is expected to spend from:
// what an earlier response of the same route said, else GitHub's split.
func (e *Engine) githubRoute(method, path string) string {
	if e.learned.Load() {
		var buf [maxRouteKey + 32]byte
		if shape := githubShape(buf[:0], method, path); shape != nil {
			e.resMu.RLock()
			r, ok := e.resources[string(shape)]
			e.resMu.RUnlock()
			if ok {
				return r
			}
		}
	}
	return githubResource(method, path)
}

// learnResource remembers the resource a route's response named when it
// was not the one expected (e.g. a route GitHub counts elsewhere).
func (e *Engine) learnResource(t *Ticket, resource string) {
	if resource == "" || resource == t.plan.Route || t.plan.Route == "" {
		return
	}
	var buf [maxRouteKey + 32]byte
	shape := githubShape(buf[:0], t.method, t.path)
	if shape == nil {
		return
	}
	e.resMu.Lock()
	defer e.resMu.Unlock()
	if len(e.resources) < maxInterned || e.resources[string(shape)] != "" {
		e.resources[string(shape)] = strings.Clone(resource)
		e.learned.Store(true)
	}
}

func mutating(method string) bool {
	return method == "POST" || method == "PATCH" || method == "PUT" || method == "DELETE"
}

// waitBudget is how long a request may be held.
func (e *Engine) waitBudget(req Request) time.Duration {
	b := e.cfg.MaxWait
	if req.HasWait && req.Wait < b {
		b = req.Wait
	}
	return max(b, 0)
}

// holdable: a refusal that waiting until deadline can turn into a grant.
func (e *Engine) holdable(g Grant, now, deadline time.Time) bool {
	switch {
	case g.Scope == ScopeBanGuard || g.Scope == ScopeUnauthorized:
		return false
	case !deadline.After(now):
		return false
	case !g.Until.IsZero() && g.Until.After(deadline):
		return false
	}
	return true
}

// refuse builds (and counts) a refusal.
func (e *Engine) refuse(g Grant, now time.Time, waited time.Duration, full bool) *Refusal {
	fallback := e.cfg.ProbeWait
	if g.Scope == ScopeSerial {
		fallback = max(fallback, e.cfg.MutationSpacing)
	}
	r := refusal(g, now, fallback)
	r.Waited, r.QueueFull = waited, full
	e.stats.refused.Add(1)
	e.stats.refusedBy[g.Scope].Add(1)
	if full {
		e.stats.queueFull.Add(1)
	}
	return r
}

// ticket builds the ticket of a grant; fraction is the consumer's share
// of the credential's budget while others wait.
func (e *Engine) ticket(p Plan, g Grant, req Request, fraction float64, now time.Time, waited time.Duration) Ticket {
	t := Ticket{plan: p, grant: g, method: req.Method, path: req.Path, Waited: waited}
	if g.Limit > 0 {
		t.share = Share{Limit: g.Limit, Remaining: int64(float64(g.Remaining) * fraction)}
		if !g.Reset.IsZero() {
			t.share.Reset = max(g.Reset.Sub(now), 0)
		}
	}
	return t
}

// count records what a response said for the counters.
func (e *Engine) count(o *Outcome, status int) {
	if o.Invalid {
		e.stats.invalid.Add(1)
	}
	if status == http.StatusUnauthorized {
		e.stats.unauthorized.Add(1)
	}
	if status != http.StatusTooManyRequests {
		return
	}
	switch {
	case o.LockGlobal > 0:
		e.stats.upstream429[ScopeGlobal].Add(1)
	case o.BucketScope == ScopeShared:
		e.stats.upstream429[ScopeShared].Add(1)
	case o.LockBucket > 0 || o.N > 0:
		e.stats.upstream429[ScopeBucket].Add(1)
	default:
		e.stats.upstream429[ScopeLocked].Add(1)
	}
}

// lane returns the fair queue of a credential.
func (e *Engine) lane(cred string) *lane {
	e.lanesMu.RLock()
	l := e.lanes[cred]
	e.lanesMu.RUnlock()
	if l != nil {
		return l
	}
	e.lanesMu.Lock()
	defer e.lanesMu.Unlock()
	if l = e.lanes[cred]; l == nil {
		l = newLane(e, strings.Clone(cred))
		e.lanes[l.cred] = l
	}
	return l
}

// kickLane is kick for a settled ticket, whose lane is known.
func (e *Engine) kickLane(t *Ticket) {
	if t.lane == nil {
		e.kick(t.plan.Cred)
	} else if t.lane.waiting.Load() > 0 {
		t.lane.dispatch()
	}
}

// kick lets a credential's waiting requests try again after a settle.
func (e *Engine) kick(cred string) {
	e.lanesMu.RLock()
	l := e.lanes[cred]
	e.lanesMu.RUnlock()
	if l != nil && l.waiting.Load() > 0 {
		l.dispatch()
	}
}

// counters are the engine's metrics.
type counters struct {
	granted, held, refused, queueFull, banTrips, invalid, unauthorized atomic.Int64
	refusedBy                                                          [len(scopeNames)]atomic.Int64
	upstream429                                                        [len(scopeNames)]atomic.Int64
}

// Stats are an engine's counters since it started.
type Stats struct {
	// Granted: requests let through at once; Held: let through after
	// waiting; Refused: answered by the gateway (RefusedBy the scope),
	// QueueFull of them because the queue had no room.
	Granted, Held, Refused, QueueFull int64
	RefusedBy                         map[string]int64
	// BanTrips: times the ban guard paused a credential.
	BanTrips int64
	// Upstream429s the upstream still sent, by scope (bucket, global,
	// shared, locked: a 429 that named no scope).
	Upstream429s map[string]int64
	// Invalid responses seen (401, 403, 429 but shared); Unauthorized: 401s.
	Invalid, Unauthorized int64
}

// Stats returns the counters.
func (e *Engine) Stats() Stats {
	s := Stats{
		Granted: e.stats.granted.Load(), Held: e.stats.held.Load(), Refused: e.stats.refused.Load(),
		QueueFull: e.stats.queueFull.Load(), BanTrips: e.stats.banTrips.Load(),
		Invalid: e.stats.invalid.Load(), Unauthorized: e.stats.unauthorized.Load(),
		RefusedBy: map[string]int64{}, Upstream429s: map[string]int64{},
	}
	for i := range scopeNames {
		if n := e.stats.refusedBy[i].Load(); n > 0 {
			s.RefusedBy[Scope(i).String()] = n
		}
		if n := e.stats.upstream429[i].Load(); n > 0 {
			s.Upstream429s[Scope(i).String()] = n
		}
	}
	return s
}
