package budget

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/byteproxy/byteproxy/internal/fleet"
)

// DefaultRedisKeyPrefix starts every key of the budget store.
const DefaultRedisKeyPrefix = "byteproxy:budget:"

// Defaults of the Redis store; its client's timeouts are internal/fleet's.
const (
	// DefaultLease is how long a reservation holds without being settled.
	DefaultLease = 2 * time.Minute
	// DefaultOutageQuiet: at the start of an outage, windows ending within
	// this long are taken as spent.
	DefaultOutageQuiet = 10 * time.Second

	// maxDebts bounds the answers kept during an outage to be carried back
	// (beyond, the oldest go: Redis then learns them from later answers,
	// and their reservations lapse with their lease).
	maxDebts = 4096
)

// RedisOptions configure a RedisStore.
type RedisOptions struct {
	// KeyPrefix starts every key the store writes (default
	// DefaultRedisKeyPrefix). Gateways that must act as one use the same.
	KeyPrefix string
	// InstanceID names this process in fleet.InstancesKey. Default:
	// fleet.InstanceID(), the same for every store of the process. A process
	// whose rate limiter announces itself in the same Redis under another
	// id is counted twice (it then takes a smaller share during an outage
	// than it could: safe, not lost); pass one id to both.
	InstanceID string
	// Lease is how long a reservation holds if it is never settled (the
	// instance holding it died or lost Redis): longer than any request
	// waits for its response head. Default DefaultLease.
	Lease time.Duration
	// OutageQuiet: when Redis is lost, windows ending within this long are
	// taken as spent by this instance's fallback (the others may have used
	// what was left). Default DefaultOutageQuiet.
	OutageQuiet time.Duration
	// CallTimeout is the most one decision waits for Redis (pool wait,
	// dial, round trip) before it is made in memory and Redis is taken as
	// lost until the prober sees it answer. Default 500ms. The client's
	// own read and write timeouts apply too (NewRedisStoreURL: 250ms unless
	// the URL says otherwise).
	CallTimeout time.Duration
	// Logger receives one warning per outage and one message per recovery.
	Logger *zap.Logger

	timings     fleet.Timings // tests shorten them
	callerClock bool          // tests: the caller's now, not Redis TIME
}

// RedisStore is the Store of a cluster: every instance's engines decide
// against the same state in Redis, one round trip (one Lua script) per
// Take and per Settle, with Redis's clock. Fair queueing stays per
// instance; the budgets are global.
//
// When Redis cannot be reached it decides in memory (a MemStore that it
// keeps warm with every answer), each instance taking 1/n of every limit
// for the n instances last announced, logs once, probes in the
// background, and on return carries back to Redis the answers it saw
// meanwhile and the reservations still out. See docs/BUDGETS.md.
type RedisStore struct {
	client  redis.UniversalClient
	owned   bool
	prefix  string
	id      string
	lease   time.Duration
	quiet   time.Duration
	callTO  time.Duration
	timings fleet.Timings
	log     *zap.Logger
	mem     *MemStore
	clock   bool

	up        atomic.Bool
	instances atomic.Int64
	local     atomic.Int64 // decisions made in memory, for Stats

	// mu orders the switches between Redis and memory with the fallback's
	// grants and the debts of the outage.
	mu       sync.Mutex
	pending  map[int64]Plan  // the fallback's grants not settled yet
	adopted  map[int64]Grant // of them, reserved in Redis on its return
	debts    []debt          // answers to carry back
	dropped  int             // debts lost to maxDebts
	localSeq int64
	closed   bool

	sharedMu sync.Mutex
	shared   map[*Rules]*Rules // engines' rules divided by sharedN
	sharedN  int64

	stop chan struct{}
	wg   sync.WaitGroup
}

// debt is an answer Redis has not seen: a Redis grant settled during an
// outage (its reservation is released on return), or an answer to a
// request the fallback granted (observed only).
type debt struct {
	plan    Plan
	grant   Grant
	outcome Outcome
}

// NewRedisStoreURL connects to the Redis at url (redis://, rediss://,
// with the URL's own options) with internal/fleet's timeouts, and
// returns a store that closes the connection on Close.
func NewRedisStoreURL(url string, opt RedisOptions) (*RedisStore, error) {
	o, err := fleet.Options(url)
	if err != nil {
		return nil, err
	}
	s := NewRedisStore(redis.NewClient(o), opt)
	s.owned = true
	return s, nil
}

// NewRedisStore returns a store over a go-redis client (a *redis.Client, a
// cluster or ring client). The client's timeouts bound a decision; set
// them short (see NewRedisStoreURL) and MaxRetries to -1, since a script
// retried after a lost reply reserves twice. Close does not close the
// client. The store announces itself at once (waiting at most 500ms) and
// goes on in the background.
func NewRedisStore(client redis.UniversalClient, opt RedisOptions) *RedisStore {
	s := &RedisStore{
		client:  client,
		prefix:  opt.KeyPrefix,
		id:      opt.InstanceID,
		lease:   opt.Lease,
		quiet:   opt.OutageQuiet,
		callTO:  opt.CallTimeout,
		timings: opt.timings,
		log:     opt.Logger,
		mem:     NewMemStore(),
		clock:   opt.callerClock,
		pending: make(map[int64]Plan),
		adopted: make(map[int64]Grant),
		shared:  make(map[*Rules]*Rules),
		stop:    make(chan struct{}),
	}
	if s.prefix == "" {
		s.prefix = DefaultRedisKeyPrefix
	}
	if s.id == "" {
		s.id = fleet.InstanceID()
	}
	if s.lease <= 0 {
		s.lease = DefaultLease
	}
	if s.quiet <= 0 {
		s.quiet = DefaultOutageQuiet
	}
	if s.callTO <= 0 {
		s.callTO = fleet.CallTimeout
	}
	if s.timings == (fleet.Timings{}) {
		s.timings = fleet.DefaultTimings
	}
	if s.log == nil {
		s.log = zap.NewNop()
	}
	s.instances.Store(1)
	s.up.Store(true)
	if err := s.announce(); err != nil {
		s.markDown(err)
	}
	s.wg.Add(1)
	go s.run()
	return s
}

// RedisStats describe a RedisStore.
type RedisStats struct {
	// Up: decisions are made in Redis (false: in memory, Redis is lost).
	Up bool
	// Instances announced in Redis lately, this one included: during an
	// outage each takes 1/Instances of every limit.
	Instances int64
	// Local decisions (Take and Settle) made in memory since the start.
	Local int64
}

// Stats returns the store's state.
func (s *RedisStore) Stats() RedisStats {
	return RedisStats{Up: s.up.Load(), Instances: s.instances.Load(), Local: s.local.Load()}
}

// Close stops the background work and leaves the count of instances at
// once; it closes the client when the store made it (NewRedisStoreURL).
func (s *RedisStore) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.stop)
	s.mu.Unlock()
	s.wg.Wait()
	if s.up.Load() {
		fleet.Leave(s.client, s.id)
	}
	if s.owned {
		return s.client.Close()
	}
	return nil
}

// Take implements Store.
func (s *RedisStore) Take(ctx context.Context, p Plan, now time.Time) (Grant, error) {
	for range 2 {
		if s.up.Load() {
			g, err := s.take(ctx, p, now, false)
			if err == nil {
				return g, nil
			}
			s.markDown(err)
		}
		if g, ok := s.takeLocal(p, now); ok {
			return g, nil
		}
		// Redis came back meanwhile.
	}
	return Grant{Scope: ScopeBucket, Key: "redis"}, nil
}

// takeLocal decides in memory while Redis is lost (false: it is back).
func (s *RedisStore) takeLocal(p Plan, now time.Time) (Grant, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.up.Load() {
		return Grant{}, false
	}
	s.local.Add(1)
	g, _ := s.mem.Take(context.Background(), s.localPlan(p), now)
	if g.OK {
		s.localSeq++
		g.Lease = -s.localSeq
		s.pending[g.Lease] = p
	}
	return g, true
}

// Settle implements Store.
func (s *RedisStore) Settle(ctx context.Context, p Plan, g Grant, o Outcome, now time.Time) (Settled, error) {
	if g.Lease < 0 {
		return s.settleLocal(ctx, p, g, o, now), nil
	}
	for range 2 {
		if s.up.Load() {
			st, err := s.settle(ctx, p, g, o, now)
			if err == nil {
				// Keep the fallback warm: it knows the windows when Redis is lost.
				s.mem.observe(s.localPlan(p), o, now)
				return st, nil
			}
			s.markDown(err)
		}
		if st, ok := s.owe(p, g, o, now, true); ok {
			return st, nil
		}
	}
	return Settled{}, nil
}

// settleLocal settles a grant of the fallback: in memory, and in Redis as
// an observed answer (or the reservation adopted on Redis's return).
func (s *RedisStore) settleLocal(ctx context.Context, p Plan, g Grant, o Outcome, now time.Time) Settled {
	s.mu.Lock()
	st, _ := s.mem.Settle(ctx, s.localPlan(p), g, o, now)
	rg, adopted := s.adopted[g.Lease]
	delete(s.adopted, g.Lease)
	delete(s.pending, g.Lease)
	s.mu.Unlock()
	if !adopted {
		if o.Status == StatusNotSent {
			return st
		}
		rg = Grant{OK: true} // nothing reserved in Redis: observe the answer
	}
	for range 2 {
		if s.up.Load() {
			rst, err := s.settle(ctx, p, rg, o, now)
			if err == nil {
				return rst
			}
			s.markDown(err)
		}
		if _, ok := s.owe(p, rg, o, now, false); ok {
			return st
		}
	}
	return st
}

// owe keeps an answer for Redis's return and, with observe, applies it to
// the fallback (false: Redis is back).
func (s *RedisStore) owe(p Plan, g Grant, o Outcome, now time.Time, observe bool) (Settled, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.up.Load() {
		return Settled{}, false
	}
	s.local.Add(1)
	if len(s.debts) >= maxDebts {
		copy(s.debts, s.debts[1:])
		s.debts = s.debts[:len(s.debts)-1]
		s.dropped++
	}
	s.debts = append(s.debts, debt{plan: p, grant: g, outcome: o})
	if !observe {
		return Settled{}, true
	}
	return s.mem.observe(s.localPlan(p), o, now), true
}

// localPlan is the plan as the fallback decides it: while Redis is lost,
// with this instance's share of every limit.
func (s *RedisStore) localPlan(p Plan) Plan {
	if s.up.Load() || p.Rules == nil {
		return p
	}
	if n := s.instances.Load(); n > 1 {
		p.Rules = s.sharedRules(p.Rules, n)
	}
	return p
}

// sharedRules are an engine's rules with 1/n of every limit: the global
// limit, the requests in flight, the ban threshold, each window
// (Rules.Share), and n times the spacing of mutations.
func (s *RedisStore) sharedRules(r *Rules, n int64) *Rules {
	s.sharedMu.Lock()
	defer s.sharedMu.Unlock()
	if s.sharedN != n {
		clear(s.shared)
		s.sharedN = n
	}
	if sr := s.shared[r]; sr != nil {
		return sr
	}
	sr := *r
	div := func(v int) int {
		if v <= 0 {
			return v
		}
		return max(v/int(n), 1)
	}
	sr.GlobalLimit = div(r.GlobalLimit)
	sr.MaxInFlight = div(r.MaxInFlight)
	sr.BanThreshold = div(r.BanThreshold)
	sr.MutationSpacing = r.MutationSpacing * time.Duration(n)
	sr.Share = int(n)
	s.shared[r] = &sr
	return &sr
}

// Script arguments.

const (
	flagDirect = 1 << iota
	flagGlobal
	flagSerial
	flagWide
	flagForce
)

// ceilMillis is d in whole milliseconds, rounded up (a window or a lock a
// little longer errs on the safe side).
func ceilMillis(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + time.Millisecond - 1) / time.Millisecond)
}

func bit(b bool) int {
	if b {
		return 1
	}
	return 0
}

// key is the credential's prefix in Redis; the braces keep its keys in
// one slot of a Redis Cluster.
func (s *RedisStore) key(cred string) string {
	return s.prefix + "{" + cred + "}"
}

// args are the arguments common to both scripts.
func (s *RedisStore) args(p Plan, now time.Time, force bool, extra int) []any {
	r := p.Rules
	flags := 0
	if p.Direct {
		flags |= flagDirect
	}
	if p.Global {
		flags |= flagGlobal
	}
	if p.Serial {
		flags |= flagSerial
	}
	if p.Wide {
		flags |= flagWide
	}
	if force {
		flags |= flagForce
	}
	var clock int64
	if s.clock {
		clock = now.UnixMilli()
	}
	idle := r.IdleAfter
	if idle <= 0 {
		idle = 10 * time.Minute
	}
	a := make([]any, 0, 14+extra)
	return append(a, p.Route, p.Major, flags, r.GlobalLimit, ceilMillis(r.GlobalWindow+r.GlobalSlack),
		ceilMillis(r.ResetSlack), ceilMillis(r.MutationSpacing), r.MaxInFlight, r.BanThreshold,
		ceilMillis(r.BanWindow), ceilMillis(idle), ceilMillis(s.lease), r.MaxRoutes, clock)
}

// base is the local instant the script's times are counted from: the
// reply's arrival (a little after the script ran: ends come out a little
// late, the safe side), or the caller's clock in tests.
func (s *RedisStore) base(now time.Time) time.Time {
	if s.clock {
		return now
	}
	return time.Now()
}

func at(base time.Time, ms int64) time.Time {
	if ms < 0 {
		return time.Time{}
	}
	return base.Add(time.Duration(ms) * time.Millisecond)
}

// call bounds a script's run: the caller's context may end (the client
// went away) without it, but no decision waits for Redis longer than
// CallTimeout.
func (s *RedisStore) call(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), s.callTO)
}

// take runs takeScript.
func (s *RedisStore) take(ctx context.Context, p Plan, now time.Time, force bool) (Grant, error) {
	ctx, cancel := s.call(ctx)
	defer cancel()
	res, err := takeScript.Run(ctx, s.client, []string{s.key(p.Cred)}, s.args(p, now, force, 0)...).Slice()
	if err != nil {
		return Grant{}, err
	}
	return parseGrant(res, s.base(now))
}

// parseGrant reads takeScript's reply.
func parseGrant(res []any, base time.Time) (Grant, error) {
	var r reply
	r.vals = res
	if r.int(0) == 1 {
		g := Grant{OK: true, Bucket: r.str(1), Probe: r.int(2) == 1, Gen: uint32(r.int(3)), Wide: uint8(r.int(4)),
			Global: r.int(5) == 1, Serial: r.int(6) == 1, Flight: r.int(7) == 1, Lease: r.int(8),
			Name: r.str(9), Limit: r.int(10), Remaining: r.int(11), Reset: at(base, r.int(12))}
		if len(res) != 13 || g.Lease <= 0 {
			r.err = errMalformed
		}
		return g, r.err
	}
	g := Grant{Until: at(base, r.int(1)), Scope: Scope(r.int(2)), Key: r.str(3), Name: r.str(4), Limit: r.int(5)}
	if len(res) != 6 {
		r.err = errMalformed
	}
	return g, r.err
}

var errMalformed = errors.New("upstream budget: the redis script returned a malformed reply")

// reply reads a script's reply; the first mismatch is kept in err.
type reply struct {
	vals []any
	err  error
}

func (r *reply) int(i int) int64 {
	if i < len(r.vals) {
		if v, ok := r.vals[i].(int64); ok {
			return v
		}
	}
	r.err = errMalformed
	return 0
}

func (r *reply) str(i int) string {
	if i < len(r.vals) {
		if v, ok := r.vals[i].(string); ok {
			return v
		}
	}
	r.err = errMalformed
	return ""
}

// settleArgs are settleScript's arguments.
func (s *RedisStore) settleArgs(p Plan, g Grant, o Outcome, now time.Time) []any {
	a := s.args(p, now, false, 16+7*o.N)
	a = append(a, g.Bucket, bit(g.Probe), int64(g.Gen), bit(g.Global), bit(g.Serial), bit(g.Flight), max(g.Lease, 0),
		o.Status, bit(o.Unlimited), ceilMillis(o.LockBucket), int(o.BucketScope), ceilMillis(o.LockGlobal),
		ceilMillis(o.LockCred), int(o.CredScope), bit(o.Invalid), o.N)
	for i := 0; i < o.N; i++ {
		f := &o.Facts[i]
		a = append(a, f.Name, f.Limit, f.Remaining, f.Window, ceilMillis(f.Tolerance), ceilMillis(f.ResetAfter), bit(f.NoCount))
	}
	return a
}

// settle runs settleScript.
func (s *RedisStore) settle(ctx context.Context, p Plan, g Grant, o Outcome, now time.Time) (Settled, error) {
	ctx, cancel := s.call(ctx)
	defer cancel()
	res, err := settleScript.Run(ctx, s.client, []string{s.key(p.Cred)}, s.settleArgs(p, g, o, now)...).Slice()
	if err != nil {
		return Settled{}, err
	}
	return parseSettled(res, s.base(now))
}

func parseSettled(res []any, base time.Time) (Settled, error) {
	r := reply{vals: res}
	st := Settled{Tripped: r.int(0) == 1, Invalid: int(r.int(1)), Until: at(base, r.int(2))}
	if len(res) != 3 {
		r.err = errMalformed
	}
	return st, r.err
}

// markDown switches to memory. Only the first failure of an outage is
// logged; later ones find the store down already.
func (s *RedisStore) markDown(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || !s.up.Load() {
		return
	}
	s.mem.fellBack(time.Now(), s.quiet)
	s.up.Store(false)
	s.log.Warn("redis unreachable: upstream budgets are decided in memory, each instance taking its share of every limit, until it recovers",
		zap.Int64("instances", s.instances.Load()), zap.Error(err))
}

// run is the background goroutine, until Close: while Redis answers it
// announces this instance and reads how many are alive; while it does not,
// it checks once a second and, when Redis answers, carries the outage back.
func (s *RedisStore) run() {
	defer s.wg.Done()
	fleet.Loop{Timings: s.timings, Up: s.up.Load, Announce: s.announce, Down: s.markDown, Reconnect: s.reconnect}.Run(s.stop)
}

// announce records this instance in Redis and reads how many are alive.
func (s *RedisStore) announce() error {
	n, err := fleet.Announce(s.client, s.id, s.timings.TTL)
	if err != nil {
		return err
	}
	s.instances.Store(n)
	return nil
}

// reconnect checks whether Redis answers again; if it does, it carries the
// outage back and returns to Redis. A failure on the way leaves it down
// until the next check, with nothing lost.
func (s *RedisStore) reconnect() bool {
	if !fleet.Ping(s.client) {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	carried, adopted, err := s.carryBack()
	if err != nil {
		s.log.Debug("redis: carrying the outage back failed; trying again", zap.Error(err))
		return false
	}
	if err := s.announce(); err != nil {
		return false
	}
	s.up.Store(true)
	s.sharedMu.Lock()
	clear(s.shared) // engines unloaded meanwhile are not kept
	s.sharedMu.Unlock()
	s.log.Info("redis reachable again: upstream budgets are shared through redis",
		zap.Int("answers_carried_back", carried), zap.Int("reservations_carried_back", adopted),
		zap.Int("answers_dropped", s.dropped))
	s.dropped = 0
	return true
}

// carryBack hands Redis, in one pipelined round trip, the answers it has
// not seen (releasing the reservations of grants it made) and the
// reservations the fallback still has out (so that Redis counts them
// until they settle). Called with mu held, while down.
func (s *RedisStore) carryBack() (carried, adopted int, err error) {
	if len(s.debts) == 0 && len(s.pending) == 0 {
		return 0, 0, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), fleet.CarryWait)
	defer cancel()
	// A restarted Redis knows no scripts; loaded once, they run by hash.
	for _, sc := range []*redis.Script{takeScript, settleScript} {
		if err := sc.Load(ctx, s.client).Err(); err != nil {
			return 0, 0, err
		}
	}
	now := time.Now()
	ids := make([]int64, 0, len(s.pending))
	for id := range s.pending {
		ids = append(ids, id)
	}
	settles := make([]*redis.Cmd, len(s.debts))
	takes := make([]*redis.Cmd, len(ids))
	_, _ = s.client.Pipelined(ctx, func(pl redis.Pipeliner) error {
		for i, d := range s.debts {
			settles[i] = settleScript.EvalSha(ctx, pl, []string{s.key(d.plan.Cred)}, s.settleArgs(d.plan, d.grant, d.outcome, now)...)
		}
		for i, id := range ids {
			p := s.pending[id]
			takes[i] = takeScript.EvalSha(ctx, pl, []string{s.key(p.Cred)}, s.args(p, now, true, 0)...)
		}
		return nil
	})
	var refused redis.Error
	for _, c := range settles {
		if err := c.Err(); errors.As(err, &refused) {
			s.log.Warn("redis refused an answer carried back after an outage; it is dropped", zap.Error(err))
		} else if err != nil {
			return 0, 0, err
		}
	}
	grants := make(map[int64]Grant, len(ids))
	for i, c := range takes {
		res, err := c.Slice()
		if errors.As(err, &refused) {
			s.log.Warn("redis refused a reservation carried back after an outage; it is dropped", zap.Error(err))
			continue
		} else if err != nil {
			return 0, 0, err
		}
		if g, err := parseGrant(res, now); err == nil && g.OK {
			grants[ids[i]] = g
		}
	}
	carried = len(s.debts)
	s.debts = nil
	for id, g := range grants {
		s.adopted[id] = g
	}
	return carried, len(grants), nil
}

// Bucket returns the state in Redis of the bucket a route of cred spends
// from for a top-level resource (Known false when there is none yet), for
// tests and diagnostics; Reset is by the Redis server's clock.
func (s *RedisStore) Bucket(ctx context.Context, cred, route, major string) (Snapshot, error) {
	p := s.key(cred)
	name, err := s.client.HGet(ctx, p+"\x00r", route).Result()
	if errors.Is(err, redis.Nil) {
		name, err = route, nil
	}
	if err != nil || name == "" {
		return Snapshot{}, err
	}
	bk := p + "\x00b\x00" + name + "\x00" + major
	v, err := s.client.HMGet(ctx, bk, "limit", "used", "reset").Result()
	if err != nil || v[0] == nil {
		return Snapshot{}, err
	}
	n, err := s.client.ZCard(ctx, bk+"\x00f").Result() // lapsed leases included
	if err != nil {
		return Snapshot{}, err
	}
	num := func(x any) int64 {
		str, _ := x.(string)
		i, _ := strconv.ParseInt(str, 10, 64)
		return i
	}
	snap := Snapshot{Name: name, Limit: num(v[0]), Used: num(v[1]), InFlight: n, Known: true}
	if r := num(v[2]); r > 0 {
		snap.Reset = time.UnixMilli(r)
	}
	return snap, nil
}
