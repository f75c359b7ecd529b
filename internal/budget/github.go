package budget

import (
	"net/http"
	"strings"
	"time"
)

// githubResource is the primary-limit resource a GitHub request is
// expected to count against, from its path (below the API root): GitHub's
// documented split. "" for GET /rate_limit, which counts against none.
// The engine corrects the guess with what x-ratelimit-resource says (see
// Engine.learnResource).
func githubResource(method, path string) string {
	p := path
	if i := strings.IndexByte(p, '?'); i >= 0 {
		p = p[:i]
	}
	p = strings.TrimSuffix(p, "/")
	p = strings.TrimPrefix(p, "/api/v3") // GitHub Enterprise Server
	switch {
	case p == "/rate_limit":
		return ""
	case p == "/search/code" || strings.HasPrefix(p, "/search/code/"):
		return "code_search"
	case strings.HasPrefix(p, "/search/"):
		return "search"
	case p == "/graphql" || p == "/api/graphql":
		return "graphql"
	case strings.HasPrefix(p, "/app-manifests/") && strings.HasSuffix(p, "/conversions"):
		return "integration_manifest"
	case method == "POST" && strings.HasPrefix(p, "/repos/") && strings.HasSuffix(p, "/code-scanning/sarifs"):
		return "code_scanning_upload"
	case method == "POST" && strings.HasPrefix(p, "/repos/") && strings.HasSuffix(p, "/dependency-graph/snapshots"):
		return "dependency_snapshots"
	}
	return "core"
}

// githubShape folds a GitHub path for the learned-resource table: the
// owner, repository, organisation and user names and every number become
// placeholders, so one entry covers a route.
func githubShape(buf []byte, method, path string) []byte {
	buf = append(append(buf[:0], method...), ' ')
	i, n := 0, 0
	prev := ""
	for {
		seg, j := nextSegment(path, i)
		if seg == "" {
			break
		}
		i = j
		switch {
		case isDigits(seg):
			buf = append(buf, "/{n}"...)
		case n == 1 && (prev == "repos" || prev == "orgs" || prev == "users"):
			buf = append(buf, "/{name}"...)
		case n == 2 && prev != "" && strings.HasPrefix(path, "/repos/"):
			buf = append(buf, "/{repo}"...)
		default:
			buf = append(append(buf, '/'), seg...)
		}
		prev = seg
		n++
		if len(buf) > maxRouteKey {
			return nil
		}
	}
	return buf
}

// githubOutcome reads a GitHub response head.
//
// x-ratelimit-resource names the resource, x-ratelimit-limit/-remaining
// its counts (x-ratelimit-used is limit - remaining) and x-ratelimit-reset
// (epoch seconds) the end of its window: its identity; the time left is
// taken against the response's Date, so clock skew does not matter.
// 403/429 with retry-after is a secondary limit: the credential waits that
// long; with x-ratelimit-remaining 0 the resource is exhausted (the
// mirror refuses until the reset); a 429 with neither waits DefaultLock
// (GitHub: "at least one minute"). A 403 with neither is a permission
// error. A 304 counts nothing, which the mirror sees in the counts.
func (e *Engine) githubOutcome(o *Outcome, status int, h http.Header, now time.Time) {
	resource := header(h, "X-Ratelimit-Resource")
	limit, okL := parseInt(header(h, "X-Ratelimit-Limit"))
	remaining, okR := parseInt(header(h, "X-Ratelimit-Remaining"))
	reset, okE := parseInt(header(h, "X-Ratelimit-Reset"))
	if resource == "" && okL {
		resource = "core"
	}
	if resource != "" && okL && okR {
		f := &o.Facts[0]
		o.N = 1
		f.Name, f.Limit, f.Remaining = resource, limit, remaining
		if okE {
			f.Window = reset * 1000
			f.ResetAfter = max(time.Unix(reset, 0).Sub(responseTime(h, now)), 0)
		}
	}
	switch status {
	case http.StatusForbidden, http.StatusTooManyRequests:
		retry := retryAfter(header(h, "Retry-After"), now)
		switch {
		case retry > 0:
			o.LockCred, o.CredScope = retry, ScopeLocked
		case okR && remaining == 0:
			// The resource is exhausted: its mirror now says so.
		case status == http.StatusTooManyRequests:
			o.LockCred, o.CredScope = e.cfg.DefaultLock, ScopeLocked
		}
		o.Invalid = true
	case http.StatusUnauthorized:
		o.Invalid = true
		if e.cfg.UnauthorizedLock > 0 {
			o.LockCred, o.CredScope = e.cfg.UnauthorizedLock, ScopeUnauthorized
		}
	case http.StatusServiceUnavailable:
		if retry := retryAfter(header(h, "Retry-After"), now); retry > 0 {
			o.LockCred, o.CredScope = retry, ScopeLocked
		}
	}
}

// responseTime is the response's Date, truncated to the second as sent:
// never later than the upstream's clock, so a reset measured from it is
// never early. Without a Date, now.
func responseTime(h http.Header, now time.Time) time.Time {
	if d := header(h, "Date"); d != "" {
		if t, err := http.ParseTime(d); err == nil {
			return t
		}
	}
	return now
}
