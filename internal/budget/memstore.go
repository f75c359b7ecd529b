package budget

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// maxWide is the most policies a credential of a generic service tracks.
const maxWide = 8

// sweepEvery is how often idle state is looked for.
const sweepEvery = time.Minute

// MemStore is the in-memory Store of one process.
type MemStore struct {
	mu    sync.RWMutex
	creds map[string]*memCred
	swept time.Time
	// quiet (unix ns, 0 none) is when this store took over from a cluster
	// store (RedisStore's fallback): what the other instances sent just
	// before is unknown, so global and mutating requests wait one global
	// window (one mutation spacing) from then.
	quiet atomic.Int64
	// last is the credential of the latest decision and sweepAt (unix ns)
	// when the store sweeps next: while the same credential decides again
	// before then (a service has one), cred finds it without s.mu or a map
	// lookup (BenchmarkReserveDone).
	last    atomic.Pointer[memCred]
	sweepAt atomic.Int64
}

// NewMemStore returns an empty store.
func NewMemStore() *MemStore {
	return &MemStore{creds: make(map[string]*memCred)}
}

// memCred is the state of one credential.
type memCred struct {
	id      string
	mu      sync.Mutex
	dead    bool                          // swept: no longer the credential's state (see lockCred)
	rgen    uint64                        // changes of routes, for Grant.mroute and hot
	routes  map[string]string             // route -> bucket name; "" = no limit of its own
	buckets map[string]map[string]*bucket // name -> major -> bucket
	probes  map[string]map[string]*bucket // route -> major, while the route's bucket is unknown
	wide    []*bucket                     // policies every request spends from
	// wideKnown: a response of a wide-plan request has come (until then
	// one request at a time: the service may have limits not told yet).
	wideKnown bool
	wideProbe int

	lockUntil   time.Time
	lockScope   Scope
	globalUntil time.Time
	global      globalWindow
	serialBusy  bool
	serialNext  time.Time
	inflight    int
	invalid     invalidWindow
	tripped     bool

	touched, swept time.Time

	// hot is the bucket of the latest plan with a known bucket: a route
	// asked again for the same top-level resource (while routes did not
	// change) spends from it without three map lookups
	// (BenchmarkReserveDone). Reset when buckets are swept.
	hot struct {
		route, major string
		direct, ok   bool
		rgen         uint64
		b            *bucket
	}
}

// cred returns the state of a credential, creating it.
func (s *MemStore) cred(id string, now time.Time) *memCred {
	if c := s.last.Load(); c != nil && c.id == id && now.UnixNano() < s.sweepAt.Load() {
		return c
	}
	s.mu.RLock()
	c := s.creds[id]
	sweep := now.Sub(s.swept) > sweepEvery
	s.mu.RUnlock()
	if c != nil && !sweep {
		s.last.Store(c)
		return c
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if now.Sub(s.swept) > sweepEvery {
		s.swept = now
		s.sweepAt.Store(now.Add(sweepEvery).UnixNano())
		s.sweepLocked(now)
	}
	if c = s.creds[id]; c == nil {
		id = strings.Clone(id)
		c = &memCred{
			id:      id,
			routes:  make(map[string]string),
			buckets: make(map[string]map[string]*bucket),
			probes:  make(map[string]map[string]*bucket),
			touched: now,
			swept:   now,
		}
		s.creds[id] = c
	}
	s.last.Store(c)
	return c
}

// lockCred returns the state of a credential, locked. A state found just
// as a sweep forgot it (dead) is not used: its changes would be lost.
func (s *MemStore) lockCred(id string, now time.Time) *memCred {
	for {
		c := s.cred(id, now)
		c.mu.Lock()
		if !c.dead {
			return c
		}
		c.mu.Unlock()
	}
}

// sweepLocked forgets credentials that hold nothing any more.
func (s *MemStore) sweepLocked(now time.Time) {
	for id, c := range s.creds {
		c.mu.Lock()
		idle := c.inflight == 0 && now.Sub(c.touched) > time.Hour &&
			!now.Before(c.lockUntil) && !now.Before(c.globalUntil) && c.invalid.count(now, c.invalid.window) == 0
		if idle {
			c.dead = true
			delete(s.creds, id)
			s.last.CompareAndSwap(c, nil)
		}
		c.mu.Unlock()
	}
}

// Take implements Store.
func (s *MemStore) Take(_ context.Context, p Plan, now time.Time) (Grant, error) {
	c := s.lockCred(p.Cred, now)
	defer c.mu.Unlock()
	c.touched = now
	r := p.Rules
	if now.Sub(c.swept) > sweepEvery {
		c.sweep(now, r.IdleAfter)
	}

	if r.BanThreshold > 0 && c.invalid.total > 0 {
		if n := c.invalid.count(now, r.BanWindow); n >= r.BanThreshold {
			return Grant{Until: c.invalid.until(r.BanThreshold), Scope: ScopeBanGuard, Key: "ban"}, nil
		}
		c.tripped = false
	}
	if now.Before(c.lockUntil) {
		return Grant{Until: c.lockUntil, Scope: c.lockScope, Key: "cred"}, nil
	}
	if q := s.quiet.Load(); q != 0 && (p.Global || p.Serial) {
		if g, ok := quietRefusal(p, time.Unix(0, q), now); !ok {
			return g, nil
		}
	}
	if p.Global {
		if now.Before(c.globalUntil) {
			return Grant{Until: c.globalUntil, Scope: ScopeGlobal, Key: "global", Limit: int64(r.GlobalLimit)}, nil
		}
		if r.GlobalLimit > 0 {
			if ok, until := c.global.check(now, r.GlobalLimit, r.GlobalWindow+r.GlobalSlack); !ok {
				return Grant{Until: until, Scope: ScopeGlobal, Key: "global", Limit: int64(r.GlobalLimit)}, nil
			}
		}
	}
	if r.MaxInFlight > 0 && c.inflight >= r.MaxInFlight {
		return Grant{Scope: ScopeConcurrency, Key: "flight"}, nil
	}
	if p.Serial && r.MutationSpacing > 0 {
		if c.serialBusy {
			return Grant{Scope: ScopeSerial, Key: "serial"}, nil
		}
		if now.Before(c.serialNext) {
			return Grant{Until: c.serialNext, Scope: ScopeSerial, Key: "serial"}, nil
		}
	}

	g := Grant{OK: true, mem: s, mcred: c, mroute: c.rgen}
	var b *bucket
	if p.Route != "" {
		b, g.Probe = c.planned(p, now)
		if b != nil {
			if ok, until, scope := b.check(now, r.ResetSlack, r.Share); !ok {
				return Grant{Until: until, Scope: scope, Key: b.key, Name: b.name, Limit: b.limit}, nil
			}
		}
	}
	if p.Wide {
		if !c.wideKnown && c.wideProbe > 0 {
			return Grant{Scope: ScopeBucket, Key: "probe"}, nil
		}
		for _, w := range c.wide {
			if ok, until, scope := w.check(now, r.ResetSlack, r.Share); !ok {
				return Grant{Until: until, Scope: scope, Key: w.key, Name: w.name, Limit: w.limit}, nil
			}
		}
	}

	// Everything allows it: commit.
	if b != nil {
		b.take(now)
		g.Bucket, g.Gen = b.name, b.gen
		if g.Probe {
			g.Bucket = p.Route
		} else {
			g.mb = b
		}
		g.bind(b)
	}
	if p.Wide {
		if !c.wideKnown {
			c.wideProbe++
			g.Probe = true
		}
		for i, w := range c.wide {
			w.take(now)
			g.Wide |= 1 << i
			g.bind(w)
		}
	}
	if p.Global && r.GlobalLimit > 0 {
		c.global.take()
		g.Global = true
	}
	if p.Serial && r.MutationSpacing > 0 {
		c.serialBusy = true
		g.Serial = true
	}
	c.inflight++
	g.Flight = true
	return g, nil
}

// bind reports b as the request's limit when it leaves the least room.
func (g *Grant) bind(b *bucket) {
	if b.limit <= 0 {
		return
	}
	if g.Limit == 0 || b.room() < g.Remaining {
		g.Name, g.Limit, g.Remaining, g.Reset = b.name, b.limit, b.room(), b.reset
	}
}

// planned is the bucket a plan spends from (nil: none) and whether it is
// the probe of a route whose bucket is not known yet.
func (c *memCred) planned(p Plan, now time.Time) (*bucket, bool) {
	if h := &c.hot; h.ok && h.route == p.Route && h.major == p.Major && h.direct == p.Direct && (p.Direct || h.rgen == c.rgen) {
		return h.b, false
	}
	if p.Direct {
		return c.remember(p, c.bucket(p.Route, p.Major, now)), false
	}
	name, known := c.routes[p.Route]
	if known {
		if name == "" {
			return c.remember(p, nil), false
		}
		return c.remember(p, c.bucket(name, p.Major, now)), false
	}
	majors := c.probes[p.Route]
	if majors == nil {
		majors = make(map[string]*bucket)
		c.probes[p.Route] = majors
	}
	b := majors[p.Major]
	if b == nil {
		b = &bucket{key: "?" + p.Route + "\x00" + p.Major, touched: now}
		majors[strings.Clone(p.Major)] = b
	}
	return b, true
}

// remember makes b the hot bucket of p's route and major.
func (c *memCred) remember(p Plan, b *bucket) *bucket {
	h := &c.hot
	h.route, h.major, h.direct, h.rgen, h.b, h.ok = p.Route, p.Major, p.Direct, c.rgen, b, true
	return b
}

// bucket returns the bucket of a name and major, creating it.
func (c *memCred) bucket(name, major string, now time.Time) *bucket {
	majors := c.buckets[name]
	if majors == nil {
		majors = make(map[string]*bucket)
		c.buckets[strings.Clone(name)] = majors
	}
	b := majors[major]
	if b == nil {
		name = strings.Clone(name)
		b = &bucket{key: name + "\x00" + major, name: name, touched: now}
		majors[strings.Clone(major)] = b
	}
	return b
}

// wideBucket returns the policy of a name, creating it (nil when the
// credential has too many). A new policy counts the requests already in
// flight: they may arrive in its window.
func (c *memCred) wideBucket(name string, now time.Time) *bucket {
	for _, w := range c.wide {
		if w.name == name {
			return w
		}
	}
	if len(c.wide) >= maxWide {
		return nil
	}
	name = strings.Clone(name)
	w := &bucket{key: "policy\x00" + name, name: name, touched: now, untracked: int64(c.inflight)}
	w.inflight = w.untracked
	c.wide = append(c.wide, w)
	return w
}

// settleWide releases a wide-plan reservation from the policies it was
// taken from, and from those learned after it was granted; a policy the
// answer did not describe counts the request (when sent).
func (c *memCred) settleWide(g Grant, told []*bucket, sent bool, now time.Time, slack time.Duration) {
	for i, w := range c.wide {
		switch {
		case g.Wide&(1<<i) != 0:
		case w.untracked > 0:
			w.untracked--
		default:
			continue
		}
		w.release(w.gen, sent && !described(told, w), now, slack)
	}
}

// described: the answer described bucket b.
func described(told []*bucket, b *bucket) bool {
	for _, t := range told {
		if t == b {
			return true
		}
	}
	return false
}

// reserved finds the bucket a grant reserved from.
func (c *memCred) reserved(p Plan, g Grant) *bucket {
	if !g.Probe {
		if g.mb != nil {
			return g.mb // a bucket with a reservation is never swept
		}
		return c.buckets[g.Bucket][p.Major]
	}
	if b := c.probes[p.Route][p.Major]; b != nil {
		return b
	}
	// The route's bucket was learned meanwhile and the probe moved there.
	if name := c.routes[p.Route]; name != "" {
		return c.buckets[name][p.Major]
	}
	return nil
}

// learn records that a route spends from the bucket name ("" none) and
// moves the route's probes, with their reservations, there.
func (c *memCred) learn(route, name string, maxRoutes int, now time.Time) {
	if old, known := c.routes[route]; known && old == name {
		return
	} else if !known && maxRoutes > 0 && len(c.routes) >= maxRoutes {
		return // keep probing: safe, and bounded
	}
	c.routes[route] = strings.Clone(name)
	c.rgen++
	for major, pb := range c.probes[route] {
		if name != "" && pb.inflight > 0 {
			b := c.bucket(name, major, now)
			b.inflight += pb.inflight
			b.lock(pb.lockUntil, pb.lockScope)
		}
	}
	delete(c.probes, route)
}

// Settle implements Store.
func (s *MemStore) Settle(_ context.Context, p Plan, g Grant, o Outcome, now time.Time) (Settled, error) {
	c := g.mcred
	if g.mem != s || c == nil {
		g.mcred, g.mb = nil, nil // another store's grant
		c = s.lockCred(p.Cred, now)
	} else if c.mu.Lock(); c.dead {
		// Not while it has a reservation (inflight); only a grant of a
		// credential swept meanwhile by mistake would get here.
		c.mu.Unlock()
		g.mb = nil
		c = s.lockCred(p.Cred, now)
	}
	defer c.mu.Unlock()
	c.touched = now
	r := p.Rules
	sent := o.Status != StatusNotSent

	if g.Flight && c.inflight > 0 {
		c.inflight--
	}
	if g.Global {
		c.global.settle(now, sent, r.GlobalLimit)
	}
	if g.Serial {
		c.serialBusy = false
		if sent {
			c.serialNext = now.Add(r.MutationSpacing)
		}
	}
	if !sent {
		if g.Bucket != "" {
			if b := c.reserved(p, g); b != nil {
				b.release(g.Gen, false, now, r.ResetSlack)
			}
		}
		if p.Wide {
			c.settleWide(g, nil, false, now, r.ResetSlack)
			if g.Probe {
				c.wideProbe--
			}
		}
		return Settled{}, nil
	}

	told := c.answered(p, o, now, g)
	var reserved *bucket
	if g.Bucket != "" {
		if reserved = c.reserved(p, g); reserved != nil {
			reserved.release(g.Gen, !o.Unlimited && !described(told[:o.N], reserved), now, r.ResetSlack)
		}
	}
	if p.Wide {
		c.settleWide(g, told[:o.N], true, now, r.ResetSlack)
		if g.Probe {
			c.wideProbe--
			c.wideKnown = c.wideKnown || o.Status > 0
		}
	}
	return c.apply(p, o, told[0], reserved, now), nil
}

// observe applies what the answer to a request reserved elsewhere said
// (RedisStore keeps its fallback warm this way, and hands it the answers
// to requests Redis granted that come in during an outage): routes,
// windows, locks and invalid responses, the answer against the global
// limit and the mutation spacing; no reservation is released.
func (s *MemStore) observe(p Plan, o Outcome, now time.Time) Settled {
	if o.Status == StatusNotSent {
		return Settled{}
	}
	c := s.lockCred(p.Cred, now)
	defer c.mu.Unlock()
	c.touched = now
	r := p.Rules
	if p.Global && r.GlobalLimit > 0 {
		c.global.record(now, r.GlobalLimit)
	}
	if p.Serial && r.MutationSpacing > 0 {
		if next := now.Add(r.MutationSpacing); next.After(c.serialNext) {
			c.serialNext = next
		}
	}
	told := c.answered(p, o, now, Grant{})
	if p.Wide && o.Status > 0 {
		c.wideKnown = true
	}
	var planned *bucket
	if p.Route != "" && told[0] == nil && o.LockBucket > 0 {
		if b, probe := c.planned(p, now); !probe {
			planned = b
		}
	}
	return c.apply(p, o, told[0], planned, now)
}

// answered learns the route's bucket from an answer and applies the
// windows it described; it returns their buckets, in the answer's order.
// g is the grant answered, if any: an answer naming the bucket it was
// reserved from, with the routes unchanged since, needs no lookups.
func (c *memCred) answered(p Plan, o Outcome, now time.Time, g Grant) [maxFacts]*bucket {
	r := p.Rules
	same := g.mb != nil && g.mroute == c.rgen && o.N > 0 && o.Facts[0].Name == g.mb.name
	if !p.Direct && p.Route != "" && !same {
		switch {
		case o.N > 0 && o.Facts[0].Name != "":
			c.learn(p.Route, o.Facts[0].Name, r.MaxRoutes, now)
		case o.Unlimited:
			c.learn(p.Route, "", r.MaxRoutes, now)
		}
	}
	var told [maxFacts]*bucket
	for i := 0; i < o.N; i++ {
		f := &o.Facts[i]
		switch {
		case p.Wide:
			told[i] = c.wideBucket(f.Name, now)
		case g.mb != nil && f.Name == g.mb.name:
			told[i] = g.mb // c.bucket(f.Name, p.Major)
		default:
			told[i] = c.bucket(f.Name, p.Major, now)
		}
		if told[i] != nil {
			told[i].observe(f, now, r.ResetSlack)
		}
	}
	return told
}

// apply applies an answer's locks and counts an invalid response. first
// is the first bucket the answer described, else fallback (the bucket
// reserved from) takes a bucket lock.
func (c *memCred) apply(p Plan, o Outcome, first, fallback *bucket, now time.Time) Settled {
	r := p.Rules
	if o.LockBucket > 0 {
		if first == nil {
			first = fallback
		}
		if first != nil {
			first.lock(now.Add(o.LockBucket+r.ResetSlack), o.BucketScope)
		}
	}
	if o.LockGlobal > 0 {
		if until := now.Add(o.LockGlobal + r.ResetSlack); until.After(c.globalUntil) {
			c.globalUntil = until
		}
	}
	if o.LockCred > 0 {
		if until := now.Add(o.LockCred + r.ResetSlack); until.After(c.lockUntil) {
			c.lockUntil, c.lockScope = until, o.CredScope
		}
	}
	var st Settled
	if o.Invalid && r.BanThreshold > 0 {
		c.invalid.add(now, r.BanWindow)
		st.Invalid = c.invalid.total
		if !c.tripped && c.invalid.total >= r.BanThreshold {
			c.tripped = true
			st.Tripped = true
			st.Until = c.invalid.until(r.BanThreshold)
		}
	}
	return st
}

// quietRefusal refuses a global or mutating request during the quiet
// that follows a fallback's start at q (see MemStore.quiet).
func quietRefusal(p Plan, q, now time.Time) (Grant, bool) {
	r := p.Rules
	if p.Global && r.GlobalLimit > 0 {
		if until := q.Add(r.GlobalWindow + r.GlobalSlack); now.Before(until) {
			return Grant{Until: until, Scope: ScopeGlobal, Key: "global", Limit: int64(r.GlobalLimit)}, false
		}
	}
	if p.Serial && r.MutationSpacing > 0 {
		if until := q.Add(r.MutationSpacing); now.Before(until) {
			return Grant{Until: until, Scope: ScopeSerial, Key: "serial"}, false
		}
	}
	return Grant{}, true
}

// fellBack prepares the store to decide alone after a cluster store lost
// its shared state at now: the windows it mirrored that end within quiet
// are taken as spent (the other instances may have used what was left,
// and requests of theirs may still be on the way), and global and
// mutating requests wait (see quiet). Longer windows keep what the
// upstream last reported and are shared by Rules.Share.
func (s *MemStore) fellBack(now time.Time, quiet time.Duration) {
	s.quiet.Store(now.UnixNano())
	s.mu.RLock()
	defer s.mu.RUnlock()
	end := now.Add(quiet)
	spend := func(b *bucket) {
		if b.limit > 0 && b.reset.After(now) && !b.reset.After(end) {
			b.used = max(b.used, b.limit)
		}
	}
	for _, c := range s.creds {
		c.mu.Lock()
		for _, majors := range c.buckets {
			for _, b := range majors {
				spend(b)
			}
		}
		for _, w := range c.wide {
			spend(w)
		}
		c.mu.Unlock()
	}
}

// sweep forgets the credential's idle buckets.
func (c *memCred) sweep(now time.Time, after time.Duration) {
	c.swept = now
	c.hot.ok, c.hot.b = false, nil
	if after <= 0 {
		after = 10 * time.Minute
	}
	for _, group := range []map[string]map[string]*bucket{c.buckets, c.probes} {
		for name, majors := range group {
			for major, b := range majors {
				if b.idle(now, after) {
					delete(majors, major)
				}
			}
			if len(majors) == 0 {
				delete(group, name)
			}
		}
	}
}

// Snapshot is the state of one bucket, for tests and diagnostics.
type Snapshot struct {
	Name                  string
	Limit, Used, InFlight int64
	Reset                 time.Time
	Known                 bool
}

// Bucket returns the state of the bucket a route of cred spends from for
// a top-level resource (Known false when there is none yet).
func (s *MemStore) Bucket(cred, route, major string) Snapshot {
	s.mu.RLock()
	c := s.creds[cred]
	s.mu.RUnlock()
	if c == nil {
		return Snapshot{}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	name, ok := c.routes[route]
	if !ok {
		name = route
	}
	b := c.buckets[name][major]
	if b == nil {
		return Snapshot{}
	}
	return Snapshot{Name: b.name, Limit: b.limit, Used: b.used, InFlight: b.inflight, Reset: b.reset, Known: true}
}
