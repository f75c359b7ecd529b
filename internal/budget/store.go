package budget

import (
	"context"
	"time"
)

// Store holds the budget state of every credential and applies the two
// decisions of the algorithm to it atomically: Take (may this request be
// sent now?) and Settle (what did the upstream answer?). The engine
// computes everything else (route folding, header parsing, waiting, fair
// share) and hands the store plain values, so that a store shared by a
// cluster (Redis: one Lua script per call) can implement the same two
// calls as the in-memory MemStore.
//
// Every string in a Plan is stable for the life of the engine (interned)
// or a substring of the request, and the store may keep it.
type Store interface {
	// Take reserves one request against every limit the plan is subject to,
	// all or nothing. A refusal says until when (zero: until a reservation
	// of this credential is settled) and which limit refused.
	Take(ctx context.Context, p Plan, now time.Time) (Grant, error)
	// Settle releases a reservation and applies what the upstream said.
	Settle(ctx context.Context, p Plan, g Grant, o Outcome, now time.Time) (Settled, error)
}

// Rules are an engine's constants that the store needs; they travel with
// every Plan (a pointer, shared by all requests of the engine).
type Rules struct {
	// GlobalLimit requests per GlobalWindow per credential, for plans with
	// Global set (0: no global limit). Counted over a sliding window of
	// GlobalWindow+GlobalSlack.
	GlobalLimit  int
	GlobalWindow time.Duration
	GlobalSlack  time.Duration
	// ResetSlack is added to every reset and lock the upstream announces.
	ResetSlack time.Duration
	// MutationSpacing: plans with Serial set go one at a time per
	// credential, each at least this long after the previous one answered.
	MutationSpacing time.Duration
	// MaxInFlight requests per credential (0: no limit).
	MaxInFlight int
	// BanThreshold invalid responses per credential within BanWindow stop
	// the credential until the count falls below it (0: off).
	BanThreshold int
	BanWindow    time.Duration
	// IdleAfter: state untouched this long (and holding nothing) is
	// forgotten.
	IdleAfter time.Duration
	// MaxRoutes is the most learned routes per credential.
	MaxRoutes int
	// Share divides every bucket's limit (at least 1 request per window
	// is left): a cluster instance deciding on its own during a Redis
	// outage takes 1/Share of each window. 0 or 1: the whole limit.
	Share int
}

// Plan is what one request is subject to.
type Plan struct {
	// Cred identifies the credential (never the secret itself).
	Cred string
	// Route is the request's route key: for Discord the method and folded
	// route, whose bucket name is learned from responses; with Direct, the
	// bucket's name itself (a GitHub resource). Empty: no bucket.
	Route string
	// Major is the top-level resource (Discord: channel, guild or webhook);
	// buckets are kept per name and major.
	Major string
	// Direct: Route names the bucket (no learning).
	Direct bool
	// Global: the request counts against the credential's global limit.
	Global bool
	// Serial: a mutating request (one at a time, spaced).
	Serial bool
	// Wide: the request spends from every policy the credential has learned
	// (services that describe their limits with IETF RateLimit fields or
	// X-RateLimit headers, for the whole credential).
	Wide bool
	// Rules are the engine's constants.
	Rules *Rules
}

// Grant is the answer of Take.
type Grant struct {
	// OK: reserved. The fields below OK say from what, for Settle.
	OK bool
	// Bucket is the name of the bucket reserved from, or with Probe the
	// route whose bucket is still unknown.
	Bucket string
	Probe  bool
	Gen    uint32 // the bucket's local window when reserved
	Wide   uint8  // bit i: reserved from wide policy i
	Global bool   // counted against the global limit
	Serial bool   // holds the credential's mutation slot
	Flight bool   // counted against MaxInFlight
	// Lease is the store's name for the reservation: RedisStore's lease id
	// (> 0), or its fallback's (< 0); 0 in MemStore.
	Lease int64
	// MemStore's own, so that its Settle finds the state reserved from
	// without a lookup (nil from any other store): the store, the
	// credential, the bucket (unless Probe) and the credential's routes
	// generation at Take (BenchmarkReserveDone, BenchmarkBudgetSimServer).
	mem    *MemStore
	mcred  *memCred
	mb     *bucket
	mroute uint64

	// The most restrictive limit of the request after this reservation
	// (Limit 0: none known), for the share reported to the consumer, or,
	// on a refusal, the limit that refused.
	Name      string
	Limit     int64
	Remaining int64
	Reset     time.Time // local time the window ends (zero: unknown)

	// On a refusal: until when (zero: until a reservation of this
	// credential settles), which limit, and a key naming it (requests
	// refused with the same key wait for the same thing).
	Until time.Time
	Scope Scope
	Key   string
}

// Outcome is what a response said, parsed by the engine.
type Outcome struct {
	// Status of the response; StatusNoResponse when the request may have
	// reached the upstream but no response came, StatusNotSent when it was
	// never sent.
	Status int
	// Facts are the windows the response described.
	Facts [maxFacts]Fact
	N     int
	// Unlimited: a success without any rate-limit header; the route has no
	// limit of its own.
	Unlimited bool
	// LockBucket: the bucket (Facts[0], else the one reserved from) must
	// not be used for this long (a 429 for the route or a shared resource).
	LockBucket  time.Duration
	BucketScope Scope
	// LockGlobal: the credential's global limit is exhausted for this long.
	LockGlobal time.Duration
	// LockCred: the credential must not be used for this long (Retry-After,
	// GitHub's secondary limits, a rejected token).
	LockCred  time.Duration
	CredScope Scope
	// Invalid counts toward the ban guard.
	Invalid bool
}

const (
	// StatusNoResponse is an Outcome status: sent (perhaps), no answer.
	StatusNoResponse = 0
	// StatusNotSent is an Outcome status: the reservation was not used.
	StatusNotSent = -1

	maxFacts = 4
)

// Fact is one window a response described.
type Fact struct {
	// Name names the bucket: Discord's X-RateLimit-Bucket, GitHub's
	// x-ratelimit-resource, an IETF policy name.
	Name string
	// Limit per window (0: not said), Remaining in it.
	Limit, Remaining int64
	// Window identifies the window: the instant it ends in upstream
	// milliseconds (0: not said). Tolerance is how far two responses of
	// one window may disagree on it (0: exact).
	Window    int64
	Tolerance time.Duration
	// ResetAfter is how long the window lasts from the response on.
	ResetAfter time.Duration
	// NoCount: learn the name only; the counts are not this credential's
	// (a 429 for a shared resource).
	NoCount bool
}

// Settled is what Settle changed that the engine reports.
type Settled struct {
	// Tripped: this response brought the ban guard to its threshold.
	Tripped bool
	// Invalid is the credential's invalid count in the ban window.
	Invalid int
	// Until is when the tripped guard lets requests through again.
	Until time.Time
}

// Scope names the limit that refused a request.
type Scope uint8

// Scopes.
const (
	ScopeNone         Scope = iota
	ScopeBucket             // a route bucket (Discord scope "user"), a GitHub resource, a policy
	ScopeGlobal             // Discord's global limit per bot
	ScopeShared             // a resource shared with others (Discord scope "shared")
	ScopeLocked             // the upstream asked to wait: Retry-After, a GitHub secondary limit
	ScopeSerial             // mutating requests go one at a time, spaced
	ScopeConcurrency        // too many requests of the credential in flight
	ScopeBanGuard           // too many invalid responses: the credential is paused
	ScopeUnauthorized       // the upstream rejected the credential
)

var scopeNames = [...]string{"none", "bucket", "global", "shared", "locked", "serial", "concurrency", "ban_guard", "unauthorized"}

func (s Scope) String() string {
	if int(s) < len(scopeNames) {
		return scopeNames[s]
	}
	return "unknown"
}
