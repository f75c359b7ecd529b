package services

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/byteproxy/byteproxy/internal/budget"
	"github.com/byteproxy/byteproxy/internal/metrics"
	"github.com/byteproxy/byteproxy/internal/routes"
	"github.com/byteproxy/byteproxy/modules/gateway"
)

// The forwarder's side of the upstream budget (gateway.Budget, the engine
// of internal/budget; docs/BUDGETS.md, "What the forwarder calls"): before
// a request of a service with upstream_limits is sent, reserve makes the
// engine decide (send now, hold, or answer in the upstream's shape); the
// response head settles the reservation (proxyWriter.WriteHeader, for both
// forwarding paths); a request that got no response settles as such when
// it ends (finish). Exactly one settlement per reservation.

// budgetPolicy is the name of the consumer's share in the RateLimit field.
const budgetPolicy = "upstream"

// reserve asks the service's budget whether r may be sent now, holding it
// while its budget resets within the wait budget. It reports whether the
// request goes on; when it does not, the answer is written (or the client
// has gone).
func (f *forwarder) reserve(pw *proxyWriter, r *http.Request, rest string, b *gateway.Budget) bool {
	consumer := consumerOf(r)
	req := budget.Request{Credential: b.Credential, Method: r.Method, Path: rest, Consumer: consumer, Hold: pw}
	req.Wait, req.HasWait = budget.PreferWait(r.Header)
	if req.HasWait && req.Wait <= b.MaxWait {
		// RFC 7240: the client's wait is the one that bounds the hold.
		pw.preferWait, pw.preferApplied = req.Wait, true
	}
	t, err := b.Engine.Reserve(r.Context(), req)
	if err != nil {
		f.refuseBudget(pw, r, err)
		return false
	}
	if t.Waited > 0 {
		if r.Context().Err() != nil {
			// Granted as the client went away: nothing was sent.
			b.Engine.Cancel(&t)
			pw.failed = true
			f.clientGone(r)
			return false
		}
		f.metrics.BudgetHeld(f.key, t.Waited)
		gateway.AddLogField(r, zap.Duration("budget_wait", t.Waited))
		pw.sent = time.Now()
	}
	pw.ticket, pw.budgeted, pw.consumer = t, true, consumer
	// What the gateway's own handlers put in the IETF fields before the
	// upstream's answer is copied after them (see settle).
	h := pw.ResponseWriter.Header()
	pw.gwRateLimit, pw.gwPolicy = len(h["Ratelimit"]), len(h["Ratelimit-Policy"])
	return true
}

// maxHeldBody is the largest request body read before a request is held.
const maxHeldBody = 64 << 10

// Holding is called when the budget is about to hold the request. Go's
// HTTP/1 server notices a client that disconnects (and cancels the
// request's context, which frees its place in the queue) only once the
// request body has been read: a body of known length up to maxHeldBody
// (a Discord message, a GitHub comment) is read now, so that abandoning
// such a request while it is held is noticed. Larger bodies stream when
// the request is sent, as always; an abandoned one is noticed then.
func (w *proxyWriter) Holding() {
	r := w.r
	if r.ContentLength <= 0 || r.ContentLength > maxHeldBody {
		return
	}
	buf := make([]byte, r.ContentLength)
	n, err := io.ReadFull(r.Body, buf)
	var rest io.Reader = bytes.NewReader(buf[:n])
	if err != nil {
		// Sent as far as it came, then failing as the client's body did.
		rest = io.MultiReader(rest, errReader{err})
	}
	r.Body = heldBody{rest, r.Body}
}

// heldBody is a request body read while the request was held.
type heldBody struct {
	io.Reader
	orig io.ReadCloser
}

func (b heldBody) Close() error { return b.orig.Close() }

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// settle gives the upstream's answer to the budget (status and headers:
// the response head, copied into the client's response by either path),
// then tells the consumer its share in the RateLimit field.
func (w *proxyWriter) settle(status int, h http.Header) {
	w.budgeted = false
	// The engine reads the upstream's fields only: the lines that
	// byteproxy_ratelimit set before them are hidden for the call.
	rl, pol := h["Ratelimit"], h["Ratelimit-Policy"]
	if w.gwRateLimit > 0 {
		h["Ratelimit"] = rl[min(w.gwRateLimit, len(rl)):]
	}
	if w.gwPolicy > 0 {
		h["Ratelimit-Policy"] = pol[min(w.gwPolicy, len(pol)):]
	}
	w.f.budget.Engine.Done(&w.ticket, status, h)
	if w.gwRateLimit > 0 {
		h["Ratelimit"] = rl
	}
	if w.gwPolicy > 0 {
		h["Ratelimit-Policy"] = pol
	}
	if s := w.ticket.Share(); s.Limit > 0 {
		// Appended to the gateway's own entries and the upstream's: a
		// field of several lines is one list.
		var buf [128]byte
		h["Ratelimit"] = append(h["Ratelimit"], string(s.AppendRateLimit(buf[:0], budgetPolicy, w.consumer)))
	}
}

// setPreferenceApplied answers a Prefer: wait the gateway honoured.
func (w *proxyWriter) setPreferenceApplied(h http.Header) {
	if w.preferApplied {
		h["Preference-Applied"] = []string{"wait=" + strconv.FormatInt(int64(w.preferWait/time.Second), 10)}
	}
}

// refuseBudget answers a request the budget did not let through: a
// refusal in the upstream's shape, 503 when the budget cannot decide (its
// configuration was unloaded while the request waited), nothing when the
// client went away while it was held.
func (f *forwarder) refuseBudget(pw *proxyWriter, r *http.Request, err error) {
	pw.failed = true
	var rf *budget.Refusal
	if !errors.As(err, &rf) {
		if r.Context().Err() != nil {
			f.clientGone(r) // it left while held, and its place is free
			return
		}
		rf = &budget.Refusal{Status: http.StatusServiceUnavailable, RetryAfter: time.Second}
	}
	reason := f.refusalReason(rf, err)
	f.metrics.BudgetRefused(f.key, reason, rf.Waited)
	gateway.AddLogField(r, zap.String("budget_refused", reason))
	if ce := f.logger.Check(zap.DebugLevel, "upstream budget refused a request"); ce != nil {
		ce.Write(zap.String("method", r.Method), zap.String("reason", reason),
			zap.Duration("retry_after", rf.RetryAfter), zap.Duration("waited", rf.Waited))
	}
	_, path, _ := routes.ProxyPath(r.URL.Path) // the body's path, decoded as the original's
	g := f.shapeRefusal(rf, reason, path)
	pw.status = g.Status
	w := pw.ResponseWriter
	pw.setPreferenceApplied(w.Header())
	w.Header().Set("X-Proxy-Service", f.key) // as on the gateway's other answers for a known service
	_ = gateway.WriteRefusal(w, r, g)
}

// refusalReason names what refused, for the metric and the log.
func (f *forwarder) refusalReason(rf *budget.Refusal, err error) string {
	github := f.budget.Kind == budget.KindGitHub
	switch {
	case rf.QueueFull:
		return metrics.BudgetQueue
	case !errors.As(err, new(*budget.Refusal)):
		return metrics.BudgetUnavailable
	}
	switch rf.Scope {
	case budget.ScopeBucket:
		if github {
			return metrics.BudgetResource
		}
		return metrics.BudgetBucket
	case budget.ScopeGlobal:
		return metrics.BudgetGlobal
	case budget.ScopeShared:
		return metrics.BudgetShared
	case budget.ScopeLocked:
		if github {
			return metrics.BudgetSecondary
		}
		return metrics.BudgetRetryAfter
	case budget.ScopeSerial:
		return metrics.BudgetSerial
	case budget.ScopeConcurrency:
		return metrics.BudgetConcurrency
	case budget.ScopeBanGuard:
		return metrics.BudgetBan
	case budget.ScopeUnauthorized:
		return metrics.BudgetUnauthorized
	}
	return metrics.BudgetUnavailable
}

// GitHub's documentation of its limits, which its clients expect in
// documentation_url (go-github recognises a secondary limit by the
// suffix "secondary-rate-limits").
const (
	githubPrimaryDocs   = "https://docs.github.com/rest/using-the-rest-api/rate-limits-for-the-rest-api"
	githubSecondaryDocs = githubPrimaryDocs + "#about-secondary-rate-limits"
)

// shapeRefusal maps the engine's refusal onto the gateway's writer, which
// answers in the service's shape: Discord's 429 (retry_after to the
// millisecond, global, X-RateLimit-Scope, the bucket), GitHub's 403 with
// x-ratelimit-* for a spent resource or its secondary-limit 403 with
// Retry-After, the original's 429 for other services; 503 with
// retry_after when the credential is paused (ban guard, rejected token).
func (f *forwarder) shapeRefusal(rf *budget.Refusal, reason, path string) gateway.Refusal {
	g := gateway.Refusal{
		Service: f.svc, Path: path, Status: rf.Status, RetryAfter: rf.RetryAfter,
		Scope: rf.DiscordScope(), Global: rf.Global,
	}
	retry := strconv.FormatFloat(rf.RetryAfter.Seconds(), 'f', 3, 64)
	if rf.Status == http.StatusServiceUnavailable {
		g.Error, g.Hint = f.pausedMessage(rf, reason, retry)
		return g
	}
	g.Error = fmt.Sprintf("Upstream rate limit reached for %s (%s). Retry in %s seconds.", f.key, reason, retry)
	g.Hint = "The gateway sends nothing the upstream would refuse for rate limiting: it holds a request until its budget resets when that is within the service's max_wait (and the request's Prefer: wait), else answers at once. Retry after Retry-After."
	switch f.budget.Kind {
	case budget.KindDiscord:
		g.Error = "You are being rate limited. " + g.Error
		if rf.Scope == budget.ScopeBucket || rf.Scope == budget.ScopeShared {
			g.Limit, g.Bucket = rf.Limit, rf.Name
		}
	case budget.KindGitHub:
		// 403, as GitHub answers both its primary and secondary limits.
		g.Status = http.StatusForbidden
		if rf.Scope == budget.ScopeBucket && rf.Limit > 0 {
			g.Limit, g.Resource = rf.Limit, rf.Name
			g.Error = fmt.Sprintf("API rate limit exceeded for the gateway's token (resource %s, %d requests per window); the window resets in %s seconds.", rf.Name, rf.Limit, retry)
			g.Documentation = githubPrimaryDocs
		} else {
			g.Error = fmt.Sprintf("You have exceeded a secondary rate limit (%s). Please wait %s seconds before you try again.", reason, retry)
			g.Documentation = githubSecondaryDocs
		}
	default:
		g.Limit = rf.Limit
	}
	return g
}

// pausedMessage explains a 503: the credential is paused, or the budget
// could not decide.
func (f *forwarder) pausedMessage(rf *budget.Refusal, reason, retry string) (msg, hint string) {
	switch reason {
	case metrics.BudgetBan:
		return fmt.Sprintf("The upstream credential of %s is paused: it received too many invalid responses (401, 403, 429) recently, and sending more would risk a ban. Retry in %s seconds.", f.key, retry),
			"Look for the requests that fail with 401, 403 or 429 (the gateway's log names the trip); the ban guard's threshold is the service's upstream_limits ban_threshold."
	case metrics.BudgetUnauthorized:
		return fmt.Sprintf("The upstream rejected the credential of %s (401); it is not used again for a while. Retry in %s seconds.", f.key, retry),
			"Check the service's token (its environment variable) and reload; the lock lasts upstream_limits unauthorized_lock."
	}
	return fmt.Sprintf("The upstream budget of %s could not decide (its configuration changed while the request waited). Retry in %s seconds.", f.key, retry),
		"Retry the request."
}

// consumerOf names who sends a request, for fair share: the API key id
// byteproxy_auth set, else the client IP Caddy resolved (honouring
// trusted_proxies), else the peer address.
func consumerOf(r *http.Request) string {
	// One walk up the request's contexts for both (caddyhttp.GetVar walks
	// per call).
	vars, _ := r.Context().Value(caddyhttp.VarsCtxKey).(map[string]any)
	if id, _ := vars[gateway.VarClient].(string); id != "" {
		return id
	}
	if ip, _ := vars[caddyhttp.ClientIPVarKey].(string); ip != "" {
		return ip
	}
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		return host
	}
	return strings.TrimSuffix(strings.TrimPrefix(r.RemoteAddr, "["), "]")
}

// upstreamLimitScope classifies an upstream answer that refused a request
// for rate limiting: a 429 by Discord's scope (user, global, shared),
// "exhausted" (x-ratelimit-remaining: 0), "retry_after" (Retry-After),
// else "other"; a 403 only as GitHub refuses with it, "exhausted" for a
// spent resource (x-ratelimit-remaining: 0 with x-ratelimit-resource) and
// "retry_after" for a secondary limit. ok is false for any other 403 (a
// permission error; Discord's carry its bucket's headers, remaining 0
// included, and are no rate limit).
func upstreamLimitScope(status int, h http.Header) (string, bool) {
	spent := len(h["X-Ratelimit-Remaining"]) > 0 && h["X-Ratelimit-Remaining"][0] == "0"
	if status == http.StatusForbidden {
		switch {
		case spent && h["X-Ratelimit-Resource"] != nil:
			return "exhausted", true
		case h["Retry-After"] != nil:
			return "retry_after", true
		}
		return "", false
	}
	if s := h["X-Ratelimit-Scope"]; len(s) > 0 {
		switch s[0] {
		case "user", "global", "shared":
			return s[0], true
		}
	}
	switch {
	case h["X-Ratelimit-Global"] != nil:
		return "global", true
	case spent:
		return "exhausted", true
	case h["Retry-After"] != nil:
		return "retry_after", true
	}
	return "other", true
}
