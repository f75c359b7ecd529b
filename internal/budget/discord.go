package budget

import (
	"net/http"
	"strconv"
	"time"
)

// maxRouteKey caps a folded route; a longer one is not tracked per route
// (see overflowRoute).
const maxRouteKey = 192

// discordEpoch is the first millisecond of a snowflake (2015).
const discordEpoch = 1420070400000

// oldMessage is the age from which deleting a message has its own bucket.
const oldMessage = 14 * 24 * time.Hour

// discordRoute folds a Discord request into its route key (written into
// buf) and its top-level resource, as Discord keys its per-route limits:
//
//   - a leading /api and version segment (/v10) are dropped;
//   - the top-level resource is kept aside: /channels/{id}, /guilds/{id},
//     /webhooks/{id}[/{token}] (the webhook id stands for id + token: a
//     webhook has one token, and the token is a secret not to be kept);
//   - every other all-digit segment folds to {id}; /invites/{code} to
//     {code}; everything after /reactions folds to {reaction} (adding,
//     removing and listing reactions are told apart by the method);
//   - DELETE of a message older than 14 days is its own route ({old}), as
//     Discord gives it its own bucket;
//   - interaction callbacks are not tracked per route and, with webhooks
//     called with their token, do not count against the global limit.
//
// Folding less than Discord does is safe (two routes then learn the same
// bucket hash and share it); folding more is not, hence only ids.
func discordRoute(buf []byte, method, path string, now time.Time) (key []byte, major string, flags routeFlags) {
	buf = append(append(buf[:0], method...), ' ')
	seg, i := nextSegment(path, 0)
	if seg == "api" {
		seg, i = nextSegment(path, i)
	}
	if isVersion(seg) {
		seg, i = nextSegment(path, i)
	}
	if seg == "" {
		return append(buf, '/'), "", 0
	}
	top := seg
	buf = append(append(buf, '/'), seg...)
	switch seg {
	case "channels", "guilds":
		if id, j := nextSegment(path, i); isDigits(id) {
			major, i = id, j
			buf = append(buf, "/{id}"...)
		}
	case "webhooks":
		if id, j := nextSegment(path, i); isDigits(id) {
			major, i = id, j
			buf = append(buf, "/{id}"...)
			if tok, k := nextSegment(path, i); tok != "" {
				i = k
				buf = append(buf, "/{token}"...)
				flags |= routeNoGlobal
			}
		}
	case "interactions":
		// /interactions/{id}/{token}/callback: a one-off per interaction.
		return append(buf, "/{id}/{token}/callback"...), "", routeNoGlobal | routeNoBucket
	case "invites":
		if _, j := nextSegment(path, i); j > i {
			i = j
			buf = append(buf, "/{code}"...)
		}
	}
	prev := ""
	for {
		seg, j := nextSegment(path, i)
		if seg == "" {
			break
		}
		i = j
		switch {
		case seg == "reactions":
			return append(buf, "/reactions/{reaction}"...), major, flags
		case isDigits(seg):
			last, _ := nextSegment(path, i)
			if method == "DELETE" && top == "channels" && prev == "messages" && last == "" && oldSnowflake(seg, now) {
				buf = append(buf, "/{old}"...)
			} else {
				buf = append(buf, "/{id}"...)
			}
		default:
			buf = append(append(buf, '/'), seg...)
		}
		prev = seg
		if len(buf) > maxRouteKey {
			return nil, major, flags
		}
	}
	return buf, major, flags
}

// routeFlags are what a folded route is exempt from.
type routeFlags uint8

const (
	routeNoGlobal routeFlags = 1 << iota // not counted against the global limit
	routeNoBucket                        // not tracked per route
)

// nextSegment returns the path segment starting at or after i (skipping
// empty ones) and the index after it; "" at the end.
func nextSegment(path string, i int) (string, int) {
	for i < len(path) && path[i] == '/' {
		i++
	}
	j := i
	for j < len(path) && path[j] != '/' && path[j] != '?' {
		j++
	}
	if j < len(path) && path[j] == '?' {
		return path[i:j], len(path)
	}
	return path[i:j], j
}

func isVersion(s string) bool {
	return len(s) > 1 && s[0] == 'v' && isDigits(s[1:])
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// oldSnowflake: the id was made more than 14 days ago.
func oldSnowflake(id string, now time.Time) bool {
	n, err := strconv.ParseUint(id, 10, 64)
	if err != nil {
		return false
	}
	created := int64(n>>22) + discordEpoch
	return now.UnixMilli()-created > oldMessage.Milliseconds()
}

// discordOutcome reads a Discord response head.
//
// X-RateLimit-Bucket with -Limit, -Remaining, -Reset (the window's end,
// epoch seconds with ms: its identity) and -Reset-After describe the
// route's bucket. A 429 says its scope in X-RateLimit-Scope: global (also
// X-RateLimit-Global) locks every request of the bot that counts against
// the global limit, user locks the bucket, shared locks the bucket without
// counting as invalid (the counts then are the shared resource's, not the
// bot's, and are not mirrored). Retry-After (whole seconds) says how long;
// the more precise retry_after of the body is not read (only the head is
// seen), so the lock is at worst a little long. A 429 with none of these
// headers comes from in front of Discord (Cloudflare) and locks the
// credential. 401 means the bot token itself is wrong.
func (e *Engine) discordOutcome(o *Outcome, status int, h http.Header, now time.Time) {
	bucket := header(h, "X-Ratelimit-Bucket")
	limit, okL := parseInt(header(h, "X-Ratelimit-Limit"))
	remaining, okR := parseInt(header(h, "X-Ratelimit-Remaining"))
	resetAfter, okA := parseSeconds(header(h, "X-Ratelimit-Reset-After"))
	reset, okE := parseEpochMillis(header(h, "X-Ratelimit-Reset"))
	if bucket != "" && okL && okR {
		f := &o.Facts[0]
		o.N = 1
		f.Name, f.Limit, f.Remaining = bucket, limit, remaining
		switch {
		case okE:
			f.Window = reset
			if !okA {
				resetAfter = max(time.Duration(reset-now.UnixMilli())*time.Millisecond, 0)
			}
		case okA:
			f.Window = now.Add(resetAfter).UnixMilli()
			f.Tolerance = time.Second
		}
		f.ResetAfter = resetAfter
	}
	switch {
	case status == http.StatusTooManyRequests:
		scope := header(h, "X-Ratelimit-Scope")
		retry := retryAfter(header(h, "Retry-After"), now)
		if retry <= 0 {
			retry = resetAfter
		}
		switch {
		case scope == "global" || header(h, "X-Ratelimit-Global") != "":
			o.LockGlobal = orDefault(retry, time.Second)
			o.Invalid = true
		case scope == "shared":
			o.LockBucket, o.BucketScope = orDefault(retry, time.Second), ScopeShared
			o.Facts[0].NoCount = true
		case scope == "" && o.N == 0:
			o.LockCred, o.CredScope = orDefault(retry, e.cfg.DefaultLock), ScopeLocked
			o.Invalid = true
		default:
			o.LockBucket, o.BucketScope = orDefault(retry, time.Second), ScopeBucket
			o.Invalid = true
		}
	case status == http.StatusUnauthorized:
		o.Invalid = true
		if e.cfg.UnauthorizedLock > 0 {
			o.LockCred, o.CredScope = e.cfg.UnauthorizedLock, ScopeUnauthorized
		}
	case status == http.StatusForbidden:
		o.Invalid = true
	case status == http.StatusServiceUnavailable:
		if retry := retryAfter(header(h, "Retry-After"), now); retry > 0 {
			o.LockCred, o.CredScope = retry, ScopeLocked
		}
	case status >= 200 && status < 300 && o.N == 0 && bucket == "" && !okL && !okR:
		o.Unlimited = true
	}
}
