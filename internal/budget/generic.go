package budget

import (
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// HeaderFamily is how a generic service describes its limits.
type HeaderFamily uint8

// Header families.
const (
	// FamilyNone: only Retry-After on 429 and 503 is honoured.
	FamilyNone HeaderFamily = iota
	// FamilyIETF: RateLimit and RateLimit-Policy
	// (draft-ietf-httpapi-ratelimit-headers), one budget per policy.
	FamilyIETF
	// FamilyXRateLimit: X-RateLimit-Limit, -Remaining and -Reset (epoch
	// seconds or seconds from now: Config.ResetEpoch).
	FamilyXRateLimit
)

// genericOutcome reads the response head of a service described by
// Config.Family. Any service: a 429 or 503 with Retry-After (seconds or
// an HTTP date) locks the credential until then.
func (e *Engine) genericOutcome(o *Outcome, status int, h http.Header, now time.Time) {
	switch e.cfg.Family {
	case FamilyIETF:
		ietfFacts(o, h, now)
	case FamilyXRateLimit:
		e.xRateLimitFact(o, h, now)
	}
	if status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable {
		if retry := retryAfter(header(h, "Retry-After"), now); retry > 0 {
			o.LockCred, o.CredScope = retry, ScopeLocked
		}
	}
	if e.cfg.BanThreshold > 0 && (status == 401 || status == 403 || status == 429) {
		o.Invalid = true
	}
	if status == http.StatusUnauthorized && e.cfg.UnauthorizedLock > 0 {
		o.LockCred, o.CredScope = e.cfg.UnauthorizedLock, ScopeUnauthorized
	}
}

// ietfFacts reads RateLimit (r remaining, t seconds to the reset) and
// RateLimit-Policy (q quota, w window) per policy name. The window's
// identity is its end as measured here (t has whole seconds: a tolerance
// of a second).
func ietfFacts(o *Outcome, h http.Header, now time.Time) {
	for _, line := range h["Ratelimit"] {
		for i := 0; i < len(line) && o.N < maxFacts; {
			it, next := sfItem(line, i)
			i = next
			if it.name == "" || !it.hasR {
				continue
			}
			f := &o.Facts[o.N]
			o.N++
			*f = Fact{Name: it.name, Remaining: it.r}
			if q, w, ok := ietfPolicy(h, it.name); ok {
				f.Limit = q
				f.ResetAfter = time.Duration(w) * time.Second
			}
			if it.hasT {
				f.ResetAfter = time.Duration(it.t) * time.Second
				f.Window = now.Add(f.ResetAfter).UnixMilli()
				f.Tolerance = time.Second
			}
		}
	}
}

// ietfPolicy finds a policy's quota and window in RateLimit-Policy.
func ietfPolicy(h http.Header, name string) (q, w int64, ok bool) {
	for _, line := range h["Ratelimit-Policy"] {
		for i := 0; i < len(line); {
			it, next := sfItem(line, i)
			i = next
			if it.name == name && it.hasQ {
				return it.q, it.w, true
			}
		}
	}
	return 0, 0, false
}

// xRateLimitFact reads X-RateLimit-Limit, -Remaining and -Reset.
func (e *Engine) xRateLimitFact(o *Outcome, h http.Header, now time.Time) {
	limit, okL := parseInt(header(h, "X-Ratelimit-Limit"))
	remaining, okR := parseInt(header(h, "X-Ratelimit-Remaining"))
	if !okR {
		return
	}
	f := &o.Facts[0]
	o.N = 1
	f.Name, f.Remaining = "x-ratelimit", remaining
	if okL {
		f.Limit = limit
	}
	reset, okE := parseInt(header(h, "X-Ratelimit-Reset"))
	switch {
	case !okE:
	case e.cfg.ResetEpoch:
		f.Window = reset * 1000
		f.ResetAfter = max(time.Unix(reset, 0).Sub(responseTime(h, now)), 0)
	default:
		f.ResetAfter = time.Duration(reset) * time.Second
		f.Window = now.Add(f.ResetAfter).UnixMilli()
		f.Tolerance = time.Second
	}
}

// item is one member of a Structured Fields list (RFC 8941) as the
// RateLimit fields use it: a string or token with integer parameters.
type item struct {
	name                   string
	q, w, r, t             int64
	hasQ, hasW, hasR, hasT bool
}

// sfItem parses the list member starting at i and returns the index after
// its comma. A member it cannot read comes back without a name.
func sfItem(s string, i int) (item, int) {
	var it item
	i = skipSpace(s, i)
	switch {
	case i < len(s) && s[i] == '"':
		j := i + 1
		for j < len(s) && s[j] != '"' {
			if s[j] == '\\' {
				j++
			}
			j++
		}
		if j >= len(s) {
			return item{}, len(s)
		}
		it.name = s[i+1 : j]
		i = j + 1
	default:
		j := i
		for j < len(s) && s[j] != ';' && s[j] != ',' && s[j] != ' ' {
			j++
		}
		it.name = s[i:j]
		i = j
	}
	for {
		i = skipSpace(s, i)
		if i >= len(s) || s[i] != ';' {
			break
		}
		i = skipSpace(s, i+1)
		k := i
		for i < len(s) && s[i] != '=' && s[i] != ';' && s[i] != ',' {
			i++
		}
		key := s[k:i]
		val := ""
		if i < len(s) && s[i] == '=' {
			v := i + 1
			i = v
			for i < len(s) && s[i] != ';' && s[i] != ',' {
				i++
			}
			val = trimSpace(s[v:i])
		}
		n, err := strconv.ParseInt(val, 10, 64)
		if err != nil || n < 0 {
			continue
		}
		switch key {
		case "q":
			it.q, it.hasQ = n, true
		case "w":
			it.w, it.hasW = n, true
		case "r":
			it.r, it.hasR = n, true
		case "t":
			it.t, it.hasT = n, true
		}
	}
	for i < len(s) && s[i] != ',' {
		i++
	}
	return it, i + 1
}

func skipSpace(s string, i int) int {
	for i < len(s) && (s[i] == ' ' || s[i] == '\t') {
		i++
	}
	return i
}

func trimSpace(s string) string {
	for len(s) > 0 && (s[0] == ' ' || s[0] == '\t') {
		s = s[1:]
	}
	for len(s) > 0 && (s[len(s)-1] == ' ' || s[len(s)-1] == '\t') {
		s = s[:len(s)-1]
	}
	return s
}

// header is the first value of a header by its canonical name, without
// canonicalising on every call.
func header(h http.Header, canonical string) string {
	if v := h[canonical]; len(v) > 0 {
		return v[0]
	}
	return ""
}

func parseInt(s string) (int64, bool) {
	if s == "" {
		return 0, false
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil && n >= 0
}

// parseSeconds reads seconds with an optional fraction, rounded up to the
// millisecond.
func parseSeconds(s string) (time.Duration, bool) {
	if s == "" {
		return 0, false
	}
	if whole, milli, rest, ok := decimalMillis(s); ok && whole <= int64(maxWindow/time.Second) {
		// The upstreams' own form (Discord's "0.988", "3600.000"), read
		// exactly without a float (BenchmarkParseSeconds).
		if rest {
			milli++ // rounded up
		}
		return min(time.Duration(whole*1000+milli)*time.Millisecond, maxWindow), true
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f < 0 || math.IsInf(f, 0) || math.IsNaN(f) {
		return 0, false
	}
	return seconds(f), true
}

// parseEpochMillis reads epoch seconds with an optional fraction as
// milliseconds.
func parseEpochMillis(s string) (int64, bool) {
	if s == "" {
		return 0, false
	}
	if whole, milli, rest, ok := decimalMillis(s); ok && whole < 1e12 {
		// Discord's "1796222454.522", exactly (BenchmarkParseSeconds).
		return whole*1000 + milli + roundDigit(s), whole > 0 || milli > 0 || rest
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f <= 0 || f > 1e12 {
		return 0, false
	}
	return int64(math.Round(f * 1000)), true
}

// decimalMillis reads a plain decimal "digits[.digits]" (at most 12
// digits before the point) as whole units and thousandths; rest: digits
// after the thousandths are not all zero. ok is false for any other form
// (signs, exponents, spaces), which strconv.ParseFloat then reads.
func decimalMillis(s string) (whole, milli int64, rest, ok bool) {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		whole = whole*10 + int64(s[i]-'0')
		i++
	}
	if i == 0 || i > 12 {
		return 0, 0, false, false
	}
	if i == len(s) {
		return whole, 0, false, true
	}
	if s[i] != '.' || i+1 == len(s) {
		return 0, 0, false, false
	}
	for j, k := i+1, 0; j < len(s); j, k = j+1, k+1 {
		c := s[j]
		if c < '0' || c > '9' {
			return 0, 0, false, false
		}
		switch {
		case k < 3:
			milli = milli*10 + int64(c-'0')
		case c != '0':
			rest = true
		}
		if j == len(s)-1 {
			for ; k < 2; k++ {
				milli *= 10 // "0.5": 500 thousandths
			}
		}
	}
	return whole, milli, rest, true
}

// roundDigit is 1 when the digit after the thousandths of a plain decimal
// is 5 or more (rounding half away from zero, as math.Round), else 0.
func roundDigit(s string) int64 {
	if dot := strings.IndexByte(s, '.'); dot >= 0 && dot+4 < len(s) && s[dot+4] >= '5' {
		return 1
	}
	return 0
}

// seconds converts to a duration, rounded up to the millisecond and
// capped at maxWindow.
func seconds(f float64) time.Duration {
	if f > maxWindow.Seconds() {
		return maxWindow
	}
	return time.Duration(math.Ceil(f*1000)) * time.Millisecond
}

// retryAfter reads Retry-After: delta seconds (a fraction accepted) or an
// HTTP date. 0 when absent or unreadable.
func retryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if d, ok := parseSeconds(v); ok {
		return d
	}
	if t, err := http.ParseTime(v); err == nil {
		return min(max(t.Sub(now), 0), maxWindow)
	}
	return 0
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}
