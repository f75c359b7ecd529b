package budget

import "time"

// maxWindow caps a learned window length: a header promising a longer one
// is not believed for pacing (the lock still applies).
const maxWindow = 24 * time.Hour

// bucket mirrors one upstream window (a Discord route bucket of one
// top-level resource, a GitHub resource, an IETF policy) from the
// responses, and counts the reservations the upstream has not answered.
//
// The upstream counts requests as they arrive. What it reported is the
// most it has counted in this window (used); requests still in flight may
// or may not be counted yet, so they are assumed not to be: the room left
// is limit - used - inflight. Responses may come back in any order; used
// only grows within a window, so a late, stale answer never gives room
// back.
//
// A window is identified by the instant it ends as the upstream reports it
// (Discord's X-RateLimit-Reset, GitHub's x-ratelimit-reset), so answers of
// the same window agree and an answer of the next window is recognised
// even when it comes before this window has run out locally. The local end
// is the receipt of an answer plus its reset-after plus slack: never
// earlier than the upstream's end.
//
// When the local end passes, the window rolls over: used starts from
// zero, but requests still in flight count against the new window (they
// may arrive in it). Until an answer of the new window comes, answers of
// the old one are stale and ignored, and the new window is assumed to end
// one window length after the rollover; but the upstream opened it when
// the first of them arrived, which may be as late as its answer, so it is
// not rolled over again while requests sent in it are unanswered, and an
// answer that does not describe it moves its end to a window length after
// that answer.
//
// The same transitions are what a cluster store implements in Lua.
type bucket struct {
	key       string        // name \x00 major
	name      string        // Discord hash, GitHub resource, policy
	limit     int64         // per window; 0 while unknown
	used      int64         // most the upstream reported used in this window
	inflight  int64         // reservations not settled (any window)
	genFlight int64         // of them, made in the current local window
	untracked int64         // of them, granted before this bucket existed (policies)
	window    int64         // this window's end as the upstream says (ms); 0 unknown
	reset     time.Time     // local end of this window, slack included; zero unknown
	length    time.Duration // longest reset-after seen: the window length
	rolled    bool          // ran out locally; no answer of the next window yet
	gen       uint32        // local rollovers
	lockUntil time.Time     // a 429 said wait
	lockScope Scope
	touched   time.Time
}

// check says whether one more request fits now, rolling the window over
// when its end has passed. With share > 1 only 1/share of the limit is
// this store's (at least one request per window; see Rules.Share).
func (b *bucket) check(now time.Time, slack time.Duration, share int) (ok bool, until time.Time, scope Scope) {
	if now.Before(b.lockUntil) {
		return false, b.lockUntil, b.lockScope
	}
	if b.limit > 0 && !b.reset.IsZero() && !now.Before(b.reset) {
		if b.rolled && b.genFlight > 0 {
			// This window's end is not known before its requests are
			// answered.
			return false, time.Time{}, ScopeBucket
		}
		b.rollover(now, slack)
	}
	limit := b.limit
	if share > 1 && limit > 0 {
		limit = max(limit/int64(share), 1)
	}
	room := limit - b.used - b.inflight
	if b.limit <= 0 || (b.reset.IsZero() && room <= 0) {
		// Nothing known yet, or exhausted with no known end: one request at
		// a time until an answer tells more.
		if b.inflight == 0 {
			return true, time.Time{}, ScopeNone
		}
		return false, time.Time{}, ScopeBucket
	}
	if room > 0 {
		return true, time.Time{}, ScopeNone
	}
	return false, b.reset, ScopeBucket
}

// rollover starts the next window locally.
func (b *bucket) rollover(now time.Time, slack time.Duration) {
	b.used = 0
	b.rolled = true
	b.gen++
	b.genFlight = 0
	if b.length > 0 {
		b.reset = now.Add(b.length + slack)
	} else {
		b.reset = time.Time{}
	}
}

// take records a reservation.
func (b *bucket) take(now time.Time) {
	b.inflight++
	b.genFlight++
	b.touched = now
}

// room is what is left after the reservations.
func (b *bucket) room() int64 {
	if r := b.limit - b.used - b.inflight; r > 0 {
		return r
	}
	return 0
}

// release ends a reservation of local window gen. counted: the request
// may have reached the upstream but no answer described this bucket (a
// transport error, an answer without rate-limit headers): it is assumed
// counted in the current window, and a window rolled over locally is
// assumed to end no earlier than a window length after now.
func (b *bucket) release(gen uint32, counted bool, now time.Time, slack time.Duration) {
	if b.inflight > 0 {
		b.inflight--
	}
	if gen == b.gen && b.genFlight > 0 {
		b.genFlight--
	}
	if !counted || b.limit <= 0 {
		return
	}
	if (gen == b.gen || b.rolled) && b.used < b.limit {
		b.used++
	}
	if b.rolled && b.length > 0 {
		if end := now.Add(b.length + slack); end.After(b.reset) {
			b.reset = end
		}
	}
}

// observe applies what an answer received at now said of this window.
func (b *bucket) observe(f *Fact, now time.Time, slack time.Duration) {
	b.touched = now
	if f.ResetAfter > b.length && f.ResetAfter <= maxWindow {
		b.length = f.ResetAfter
	}
	if f.NoCount {
		return
	}
	limit := f.Limit
	if limit <= 0 {
		limit = max(b.limit, f.Remaining, 1)
	}
	used := max(limit-f.Remaining, 0)
	if f.Window == 0 {
		// No window named: mirror the latest answer.
		b.limit, b.used = limit, used
		if f.ResetAfter > 0 {
			b.reset = now.Add(min(f.ResetAfter, maxWindow) + slack)
		}
		return
	}
	reset := now.Add(min(f.ResetAfter, maxWindow) + slack)
	tol := max(f.Tolerance, b.length/2).Milliseconds()
	switch {
	case b.window == 0 || f.Window > b.window+tol:
		// The first answer, or one of a newer window.
		b.window, b.used, b.reset, b.rolled = f.Window, used, reset, false
	case f.Window >= b.window-tol && !b.rolled:
		// Another answer of this window: it only ever says more is used;
		// the earliest local end is the closest to the upstream's.
		b.used = max(b.used, used)
		if b.reset.IsZero() || reset.Before(b.reset) {
			b.reset = reset
		}
	}
	b.limit = limit
}

// lock refuses the bucket until the given time.
func (b *bucket) lock(until time.Time, scope Scope) {
	if until.After(b.lockUntil) {
		b.lockUntil, b.lockScope = until, scope
	}
}

// idle: nothing to remember any more.
func (b *bucket) idle(now time.Time, after time.Duration) bool {
	return b.inflight == 0 && !now.Before(b.lockUntil) &&
		(b.reset.IsZero() || !now.Before(b.reset)) && now.Sub(b.touched) > after
}
