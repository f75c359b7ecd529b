package budget

import (
	"fmt"
	"net/http"
	"time"
)

// Refusal is the answer for a request that is not sent: the caller writes
// it in the upstream's shape (Discord: 429 {"message", "retry_after",
// "global", "code"} with Retry-After and X-RateLimit-Scope; GitHub: 403 or
// 429 with x-ratelimit-*; the ban guard and a rejected credential: 503).
type Refusal struct {
	// Scope is the limit that refused.
	Scope Scope
	// Global: the bot's global limit (Discord's "global": true).
	Global bool
	// RetryAfter is exact to the millisecond (rounded up): sending after it
	// is worth trying.
	RetryAfter time.Duration
	// Reset is when (now + RetryAfter).
	Reset time.Time
	// Status is the status to answer with: 429 for a rate limit, 503 for
	// the ban guard and a credential the upstream rejected (a fault of the
	// gateway's configuration, not of the client).
	Status int
	// Name and Limit describe the limit when known: Discord's bucket hash,
	// GitHub's resource, an IETF policy.
	Name  string
	Limit int64
	// QueueFull: the request could have waited, but the credential's
	// queue had no room for it.
	QueueFull bool
	// Waited is how long the request was held before the refusal.
	Waited time.Duration
}

func (r *Refusal) Error() string {
	return fmt.Sprintf("upstream budget: %s limit, retry after %s", r.Scope, r.RetryAfter)
}

// DiscordScope is X-RateLimit-Scope for the refusal: "global", "shared" or
// "user".
func (r *Refusal) DiscordScope() string {
	switch r.Scope {
	case ScopeGlobal:
		return "global"
	case ScopeShared:
		return "shared"
	}
	return "user"
}

// RetryAfterSeconds is the delay as Discord's retry_after: seconds with a
// millisecond fraction.
func (r *Refusal) RetryAfterSeconds() float64 {
	return float64(r.RetryAfter.Milliseconds()) / 1000
}

// refusal builds the refusal for a denial at now.
func refusal(d Grant, now time.Time, fallback time.Duration) *Refusal {
	// An end already past (the request was outrun in the queue) or
	// unknown: try again after the fallback.
	retry := fallback
	if d.Until.After(now) {
		retry = d.Until.Sub(now)
	}
	retry = max(retry, time.Millisecond)
	if r := retry % time.Millisecond; r != 0 {
		retry += time.Millisecond - r
	}
	status := http.StatusTooManyRequests
	if d.Scope == ScopeBanGuard || d.Scope == ScopeUnauthorized {
		status = http.StatusServiceUnavailable
	}
	return &Refusal{
		Scope:      d.Scope,
		Global:     d.Scope == ScopeGlobal,
		RetryAfter: retry,
		Reset:      now.Add(retry),
		Status:     status,
		Name:       d.Name,
		Limit:      d.Limit,
	}
}
