package gateway

import (
	"fmt"
	"github.com/byteproxy/byteproxy/internal/httpx"
	"net/http"
	"strconv"
	"time"
)

// Refusal is a request the gateway answers itself, without sending it
// upstream, because a rate limit is spent: one of the gateway's own limits
// (byteproxy_ratelimit) or an upstream's budget. WriteRefusal writes it in
// the shape the service's clients already read, so that a client library
// pointed at the gateway waits as it would for the upstream itself.
type Refusal struct {
	// Service is the service the request was for; its preset picks the
	// shape ("discord", "github", else the original ByteProxy's).
	Service *Service
	// Path is the request's path below the service key, for the body.
	Path string
	// Status is the answer's status; 0 means 429.
	Status int

	// RetryAfter is how long until a retry is worth trying. It is
	// written to the millisecond (rounded up) where the shape allows, and
	// in whole seconds (rounded up, at least 1) in Retry-After.
	RetryAfter time.Duration
	// Limit is the quota of the limit that refused, 0 when unknown;
	// Remaining is what is left of it (0 for a spent limit).
	Limit, Remaining int64

	// Error is the original ByteProxy's message ("Rate limit exceeded
	// for x. Reset in N seconds."), also the upstream shapes' message.
	Error string
	// LimitType is the original's limitType ("client"); empty for the
	// service limit, which the original had alone.
	LimitType string
	// Hint says what to do, in the body's troubleshooting.
	Hint string
	// Documentation is where the limit is explained; empty for the
	// README's Rate limits section.
	Documentation string

	// Scope is Discord's X-RateLimit-Scope: "user" (this client's own
	// limit), "shared" (a limit shared with others) or "global".
	Scope string
	// Global is Discord's "global": the limit covers every route. Only
	// then is X-RateLimit-Global sent (discordgo and discord.js treat any
	// value, even "false", as global).
	Global bool
	// Bucket is Discord's X-RateLimit-Bucket, when a bucket hash is known.
	Bucket string
	// Resource is GitHub's x-ratelimit-resource: the budget the request
	// counted against.
	Resource string
}

// RateLimitDocs is where a refusal's documentation points by default.
const RateLimitDocs = ProjectURL + "#rate-limits"

// Troubleshooting is the original ByteProxy's hint block in error bodies.
type Troubleshooting struct {
	Hint          string `json:"hint"`
	Documentation string `json:"documentation"`
}

// refusalBody is the original's 429 body, plus the fields of the
// upstream's shape. The original's fields come first and stay unchanged for
// a service without a preset.
type refusalBody struct {
	Error           string          `json:"error"`
	Service         string          `json:"service"`
	Path            string          `json:"path"`
	LimitType       string          `json:"limitType,omitempty"`
	Troubleshooting Troubleshooting `json:"troubleshooting"`

	// Discord's and GitHub's.
	Message string `json:"message,omitempty"`
	// Discord's retry_after, global and code.
	*discordBody
	// GitHub's.
	DocumentationURL string `json:"documentation_url,omitempty"`
}

// unavailableBody is a 503 refusal's: the gateway cannot use the
// service's credential for now (docs/BUDGETS.md, ban guard).
type unavailableBody struct {
	Error           string          `json:"error"`
	RetryAfter      jsonSeconds     `json:"retry_after"`
	Service         string          `json:"service"`
	Path            string          `json:"path"`
	Troubleshooting Troubleshooting `json:"troubleshooting"`
}

type discordBody struct {
	RetryAfter jsonSeconds `json:"retry_after"`
	Global     bool        `json:"global"`
	Code       int         `json:"code"`
}

// jsonSeconds is a duration written as seconds with a millisecond
// fraction: 1.234.
type jsonSeconds time.Duration

func (s jsonSeconds) MarshalJSON() ([]byte, error) {
	return appendSeconds(nil, time.Duration(s)), nil
}

// WriteRefusal answers a refused request in its service's shape. Every
// shape has Retry-After and the original ByteProxy's body fields (error,
// service, path, troubleshooting). On top of those:
//
//   - discord preset: Discord's 429 body fields message, retry_after
//     (seconds, millisecond fraction), global and code (0), and the
//     headers discord.js and discordgo read: X-RateLimit-Limit (when
//     known), X-RateLimit-Remaining, X-RateLimit-Reset (epoch seconds with
//     a fraction), X-RateLimit-Reset-After, X-RateLimit-Scope, and
//     X-RateLimit-Global and X-RateLimit-Bucket when they apply.
//   - github preset: GitHub's message and documentation_url, and, when the
//     limit is known, x-ratelimit-limit, -remaining, -used, -reset (epoch
//     seconds, rounded up) and -resource: what octokit's throttling plugin
//     and go-github take for a primary rate limit (403 or 429 with
//     x-ratelimit-remaining 0), waiting until the reset.
//   - any other service: nothing more; no X-RateLimit-* is invented.
//
// A 503 (Status: the upstream budget paused the service's credential) is
// not a rate limit of the client's and has no upstream shape: its body is
// {"error", "retry_after" (seconds, millisecond fraction), "service",
// "path", "troubleshooting"}, with Retry-After.
func WriteRefusal(w http.ResponseWriter, r *http.Request, rf Refusal) error {
	return writeRefusal(w, r, rf, time.Now())
}

func writeRefusal(w http.ResponseWriter, r *http.Request, rf Refusal, now time.Time) error {
	status := rf.Status
	if status == 0 {
		status = http.StatusTooManyRequests
	}
	docs := rf.Documentation
	if docs == "" {
		docs = RateLimitDocs
	}
	body := refusalBody{
		Error:           rf.Error,
		Path:            rf.Path,
		LimitType:       rf.LimitType,
		Troubleshooting: Troubleshooting{Hint: rf.Hint, Documentation: docs},
	}
	h := w.Header()
	h.Set("Retry-After", strconv.FormatInt(max(ceilDiv(rf.RetryAfter, time.Second), 1), 10))
	var preset string
	if rf.Service != nil {
		body.Service, preset = rf.Service.Key, rf.Service.Config.Preset
	}
	if status == http.StatusServiceUnavailable {
		// Not a rate limit of the client's: no upstream shape, no
		// X-RateLimit-*; the wait to the millisecond in retry_after.
		return httpx.WriteError(w, r, status, "", rf.Error, unavailableBody{Error: rf.Error, RetryAfter: jsonSeconds(rf.RetryAfter),
			Service: body.Service, Path: rf.Path, Troubleshooting: body.Troubleshooting})
	}
	switch preset {
	case "discord":
		wait := discordWait(rf.RetryAfter)
		body.Message = rf.Error
		body.discordBody = &discordBody{RetryAfter: jsonSeconds(wait), Global: rf.Global}
		setDiscordHeaders(h, &rf, wait, now)
	case "github":
		body.Message, body.DocumentationURL = rf.Error, docs
		if rf.Limit > 0 {
			setGitHubHeaders(h, &rf, now)
		}
	}
	return httpx.WriteError(w, r, status, rf.Service.Key, rf.Error, body)
}

// discordWait is the wait a Discord client is told: RetryAfter rounded up
// to the millisecond, plus one. discordgo reads "0.437" as 436ms (it
// truncates the fraction times 1000), so without the millisecond added
// it could retry just before the limit resets and be refused again.
func discordWait(retry time.Duration) time.Duration {
	return time.Duration(ceilDiv(retry, time.Millisecond)+1) * time.Millisecond
}

func setDiscordHeaders(h http.Header, rf *Refusal, wait time.Duration, now time.Time) {
	if rf.Limit > 0 {
		h.Set("X-RateLimit-Limit", strconv.FormatInt(rf.Limit, 10))
	}
	h.Set("X-RateLimit-Remaining", strconv.FormatInt(rf.Remaining, 10))
	// Epoch seconds with a fraction, as Discord sends; rounded up.
	h.Set("X-RateLimit-Reset", string(appendMillis(nil, ceilDiv(time.Duration(now.Add(wait).UnixNano()), time.Millisecond))))
	h.Set("X-RateLimit-Reset-After", string(appendSeconds(nil, wait)))
	scope := rf.Scope
	if scope == "" {
		scope = "user"
	}
	h.Set("X-RateLimit-Scope", scope)
	if rf.Global {
		h.Set("X-RateLimit-Global", "true")
	}
	if rf.Bucket != "" {
		h.Set("X-RateLimit-Bucket", rf.Bucket)
	}
}

func setGitHubHeaders(h http.Header, rf *Refusal, now time.Time) {
	// Whole epoch seconds, as GitHub sends: go-github parses an integer
	// (a fraction would read as 1970). Rounded up, so that a client
	// waiting until then is admitted.
	reset := now.Add(rf.RetryAfter)
	secs := reset.Unix()
	if reset.After(time.Unix(secs, 0)) {
		secs++
	}
	h.Set("X-RateLimit-Limit", strconv.FormatInt(rf.Limit, 10))
	h.Set("X-RateLimit-Remaining", strconv.FormatInt(rf.Remaining, 10))
	h.Set("X-RateLimit-Used", strconv.FormatInt(max(rf.Limit-rf.Remaining, 0), 10))
	h.Set("X-RateLimit-Reset", strconv.FormatInt(secs, 10))
	if rf.Resource != "" {
		h.Set("X-RateLimit-Resource", rf.Resource)
	}
}

// appendSeconds writes d as seconds with three decimals, rounded up to
// the millisecond: 1.234.
func appendSeconds(dst []byte, d time.Duration) []byte {
	return appendMillis(dst, ceilDiv(d, time.Millisecond))
}

// appendMillis writes ms milliseconds as seconds with three decimals.
func appendMillis(dst []byte, ms int64) []byte {
	return fmt.Appendf(dst, "%d.%03d", ms/1000, ms%1000)
}

// ceilDiv is d/unit rounded up; never negative.
func ceilDiv(d, unit time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + unit - 1) / unit)
}
