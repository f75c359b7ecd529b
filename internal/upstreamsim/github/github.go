// Package github simulates the rate limits of GitHub's REST API on a real
// net/http server on loopback, with GitHub's header names and semantics,
// for the upstream-budget tests and benchmarks.
//
// What it models ("Rate limits for the REST API" and "Best practices for
// using the REST API" in GitHub's documentation):
//
//   - Primary limits per token and resource: core, search, code_search,
//     graphql, integration_manifest (the path decides: /search/code,
//     /search/*, /graphql, /app-manifests/{code}/conversions, else core).
//     A resource's window opens at its first counted request and ends on a
//     whole second. Every response carries x-ratelimit-limit, -remaining,
//     -used, -reset (epoch seconds) and -resource. Over the limit: 403 (or
//     429, ExhaustedStatus) with x-ratelimit-remaining: 0.
//   - Requests without a token count against an unauthenticated budget
//     (UnauthenticatedLimit per hour); a wrong token answers 401.
//   - Secondary limits: a mutating request (POST, PATCH, PUT, DELETE) less
//     than MutationGap after the token's previous one, or more than
//     MaxConcurrent requests of one token at once, trips it: 403 with
//     retry-after, and every request of the token gets that answer until
//     then.
//   - Conditional requests: If-None-Match with the resource's ETag answers
//     304 and does not count. GET /rate_limit does not count either.
//   - Pagination: GET /repos/{owner}/{repo}/issues has Issues items, pages
//     of per_page (default 30), and a Link header with absolute URLs.
package github

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Resource is the primary limit of one resource.
type Resource struct {
	Limit  int
	Window time.Duration
}

// Config configures a simulator.
type Config struct {
	// Tokens are the valid tokens (Authorization: Bearer or token).
	Tokens []string
	// Resources are the primary limits; missing ones get GitHub's: core and
	// graphql 5,000 per hour, search 30 and code_search 10 per minute,
	// integration_manifest 5,000 per hour.
	Resources map[string]Resource
	// UnauthenticatedLimit is core's limit per hour without a token
	// (default 60).
	UnauthenticatedLimit int
	// ExhaustedStatus answers a request over a primary limit: 403
	// (default) or 429.
	ExhaustedStatus int
	// MutationGap is the least time between two mutating requests of one
	// token before the secondary limit trips (default 1s).
	MutationGap time.Duration
	// MaxConcurrent is the most requests of one token at once before the
	// secondary limit trips (default 100).
	MaxConcurrent int
	// SecondaryRetryAfter is how long a tripped secondary limit lasts
	// (default 60s); it is sent as retry-after in whole seconds.
	SecondaryRetryAfter time.Duration
	// Issues is the number of items of the paginated issue list
	// (default 95).
	Issues int
	// Latency delays every response after the request was counted.
	Latency time.Duration
}

// Server is a running simulator.
type Server struct {
	URL string

	cfg    Config
	tokens map[string]bool
	srv    *http.Server

	mu        sync.Mutex
	windows   map[string]*window // identity \x00 resource
	inFlight  map[string]int
	lastMut   map[string]time.Time // last accepted mutating arrival per identity
	prevMut   map[string]time.Time // last mutating arrival of any outcome
	locked    map[string]time.Time // secondary limit until
	received  int
	byStatus  map[int]int
	counted   map[string]int // requests counted per resource
	primary   int            // refusals for an exhausted primary limit
	tripped   int            // secondary limits tripped
	secondary int            // responses refused by a secondary limit
	notMod    int
	minGap    time.Duration
	maxFlight int
}

type window struct {
	used  int
	reset time.Time
}

// New starts a simulator on a loopback port.
func New(cfg Config) (*Server, error) {
	res := map[string]Resource{
		"core":                 {5000, time.Hour},
		"graphql":              {5000, time.Hour},
		"search":               {30, time.Minute},
		"code_search":          {10, time.Minute},
		"integration_manifest": {5000, time.Hour},
	}
	for k, v := range cfg.Resources {
		res[k] = v
	}
	cfg.Resources = res
	if cfg.UnauthenticatedLimit == 0 {
		cfg.UnauthenticatedLimit = 60
	}
	if cfg.ExhaustedStatus == 0 {
		cfg.ExhaustedStatus = 403
	}
	if cfg.MutationGap == 0 {
		cfg.MutationGap = time.Second
	}
	if cfg.MaxConcurrent == 0 {
		cfg.MaxConcurrent = 100
	}
	if cfg.SecondaryRetryAfter == 0 {
		cfg.SecondaryRetryAfter = time.Minute
	}
	if cfg.Issues == 0 {
		cfg.Issues = 95
	}
	s := &Server{
		cfg:      cfg,
		tokens:   make(map[string]bool),
		windows:  make(map[string]*window),
		inFlight: make(map[string]int),
		lastMut:  make(map[string]time.Time),
		prevMut:  make(map[string]time.Time),
		locked:   make(map[string]time.Time),
		byStatus: make(map[int]int),
		counted:  make(map[string]int),
		minGap:   -1,
	}
	for _, t := range cfg.Tokens {
		s.tokens[t] = true
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s.URL = "http://" + ln.Addr().String()
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = s.srv.Serve(ln) }()
	return s, nil
}

// Close stops the server.
func (s *Server) Close() { _ = s.srv.Close() }

// ForceSecondary trips token's secondary limit for d, as GitHub does for
// reasons a client cannot see (CPU time, content creation).
func (s *Server) ForceSecondary(token string, d time.Duration) {
	s.mu.Lock()
	s.locked[token] = time.Now().Add(d)
	s.tripped++
	s.mu.Unlock()
}

// ServeHTTP answers one request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	now := time.Now()
	id, ok := s.identity(r.Header.Get("Authorization"))

	s.mu.Lock()
	s.received++
	s.inFlight[id]++
	if n := s.inFlight[id]; n > s.maxFlight {
		s.maxFlight = n
	}
	status := s.serve(w, r, id, ok, now)
	s.byStatus[status]++
	s.mu.Unlock()
	// The response leaves when the handler returns: Latency is the time
	// GitHub takes to answer, during which the request is in flight.
	if s.cfg.Latency > 0 {
		time.Sleep(s.cfg.Latency)
	}
	s.mu.Lock()
	s.inFlight[id]--
	s.mu.Unlock()
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request, id string, ok bool, now time.Time) int {
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	if !ok {
		w.WriteHeader(401)
		_, _ = io.WriteString(w, `{"message":"Bad credentials","documentation_url":"https://docs.github.com/rest","status":"401"}`)
		return 401
	}
	resource := resourceOf(r.URL.Path)
	spec := s.cfg.Resources[resource]
	if id == "" {
		spec = Resource{s.cfg.UnauthenticatedLimit, time.Hour}
	}
	win := s.window(id, resource, spec, now)

	mutating := r.Method == "POST" || r.Method == "PATCH" || r.Method == "PUT" || r.Method == "DELETE"
	if mutating {
		if prev, seen := s.prevMut[id]; seen {
			if gap := now.Sub(prev); s.minGap < 0 || gap < s.minGap {
				s.minGap = gap
			}
		}
		s.prevMut[id] = now
	}
	if until, locked := s.locked[id]; locked && now.Before(until) {
		return s.secondaryLimited(w, spec, win, resource, until.Sub(now))
	}
	if s.inFlight[id] > s.cfg.MaxConcurrent || (mutating && !s.lastMut[id].IsZero() && now.Sub(s.lastMut[id]) < s.cfg.MutationGap) {
		s.tripped++
		s.locked[id] = now.Add(s.cfg.SecondaryRetryAfter)
		return s.secondaryLimited(w, spec, win, resource, s.cfg.SecondaryRetryAfter)
	}

	if r.URL.Path == "/rate_limit" {
		return s.rateLimit(w, id, now)
	}
	etag := `"` + strconv.FormatUint(fnv(r.URL.Path), 16) + `"`
	if r.Method == "GET" && r.Header.Get("If-None-Match") == etag {
		s.notMod++
		s.headers(h, spec, win, resource)
		h.Set("ETag", etag)
		w.WriteHeader(304)
		return 304
	}
	if win.used >= spec.Limit {
		s.primary++
		s.headers(h, spec, win, resource)
		w.WriteHeader(s.cfg.ExhaustedStatus)
		fmt.Fprintf(w, `{"message":"API rate limit exceeded for %s.","documentation_url":"https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"}`, resource)
		return s.cfg.ExhaustedStatus
	}
	win.used++
	s.counted[resource]++
	if mutating {
		s.lastMut[id] = now
	}
	s.headers(h, spec, win, resource)
	h.Set("ETag", etag)
	switch {
	case r.Method == "GET" && isIssueList(r.URL.Path):
		return s.issues(w, r)
	case r.Method == "POST":
		w.WriteHeader(201)
		_, _ = io.WriteString(w, `{"id":1}`)
		return 201
	case r.Method == "DELETE":
		w.WriteHeader(204)
		return 204
	}
	w.WriteHeader(200)
	_, _ = io.WriteString(w, `{}`)
	return 200
}

func (s *Server) secondaryLimited(w http.ResponseWriter, spec Resource, win *window, resource string, retry time.Duration) int {
	s.secondary++
	s.headers(w.Header(), spec, win, resource)
	secs := int64((retry + time.Second - 1) / time.Second)
	w.Header().Set("Retry-After", strconv.FormatInt(secs, 10))
	w.WriteHeader(403)
	_, _ = io.WriteString(w, `{"message":"You have exceeded a secondary rate limit. Please wait a few minutes before you try again.","documentation_url":"https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits"}`)
	return 403
}

func (s *Server) headers(h http.Header, spec Resource, win *window, resource string) {
	h.Set("X-Ratelimit-Limit", strconv.Itoa(spec.Limit))
	h.Set("X-Ratelimit-Remaining", strconv.Itoa(max(0, spec.Limit-win.used)))
	h.Set("X-Ratelimit-Used", strconv.Itoa(win.used))
	h.Set("X-Ratelimit-Reset", strconv.FormatInt(win.reset.Unix(), 10))
	h.Set("X-Ratelimit-Resource", resource)
}

// window returns the open primary window, opening a new one (ending on a
// whole second, as x-ratelimit-reset is whole seconds) when the last
// ended.
func (s *Server) window(id, resource string, spec Resource, now time.Time) *window {
	key := id + "\x00" + resource
	win := s.windows[key]
	if win == nil {
		win = &window{}
		s.windows[key] = win
	}
	if !now.Before(win.reset) {
		end := now.Add(spec.Window)
		if t := end.Truncate(time.Second); t.Before(end) {
			end = t.Add(time.Second)
		}
		win.used, win.reset = 0, end
	}
	return win
}

func (s *Server) rateLimit(w http.ResponseWriter, id string, now time.Time) int {
	out := map[string]any{}
	for name, spec := range s.cfg.Resources {
		win := s.window(id, name, spec, now)
		out[name] = map[string]int64{"limit": int64(spec.Limit), "remaining": int64(max(0, spec.Limit-win.used)), "used": int64(win.used), "reset": win.reset.Unix()}
	}
	core := s.window(id, "core", s.cfg.Resources["core"], now)
	s.headers(w.Header(), s.cfg.Resources["core"], core, "core")
	body, _ := json.Marshal(map[string]any{"resources": out, "rate": out["core"]})
	w.WriteHeader(200)
	_, _ = w.Write(body)
	return 200
}

// issues answers one page of the issue list with a Link header.
func (s *Server) issues(w http.ResponseWriter, r *http.Request) int {
	q := r.URL.Query()
	page, _ := strconv.Atoi(q.Get("page"))
	per, _ := strconv.Atoi(q.Get("per_page"))
	if page < 1 {
		page = 1
	}
	if per < 1 || per > 100 {
		per = 30
	}
	last := (s.cfg.Issues + per - 1) / per
	link := func(p int, rel string) string {
		return fmt.Sprintf(`<%s%s?per_page=%d&page=%d>; rel="%s"`, s.URL, r.URL.Path, per, p, rel)
	}
	var links []string
	if page > 1 {
		links = append(links, link(page-1, "prev"), link(1, "first"))
	}
	if page < last {
		links = append(links, link(page+1, "next"), link(last, "last"))
	}
	if len(links) > 0 {
		w.Header().Set("Link", strings.Join(links, ", "))
	}
	var items []map[string]int
	for i := (page-1)*per + 1; i <= min(page*per, s.cfg.Issues); i++ {
		items = append(items, map[string]int{"number": i})
	}
	body, _ := json.Marshal(items)
	w.WriteHeader(200)
	_, _ = w.Write(body)
	return 200
}

// identity is the token of an Authorization header ("" without one) and
// whether it is acceptable.
func (s *Server) identity(auth string) (string, bool) {
	if auth == "" {
		return "", true
	}
	scheme, tok, found := strings.Cut(auth, " ")
	if !found || !(strings.EqualFold(scheme, "Bearer") || strings.EqualFold(scheme, "token")) {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	return tok, s.tokens[tok]
}

// Stats is what the simulator saw.
type Stats struct {
	Received         int
	ByStatus         map[int]int
	Counted          map[string]int // requests counted against each resource
	PrimaryLimited   int            // refused for an exhausted primary limit
	SecondaryTripped int            // secondary limits tripped (including ForceSecondary)
	SecondaryLimited int            // responses refused by a secondary limit
	NotModified      int            // 304s (not counted)
	MinMutationGap   time.Duration  // least time between two mutating arrivals of one token; -1 if fewer than two
	MaxConcurrent    int            // most requests of one token at once
}

// Stats returns a copy of the counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Stats{
		Received: s.received, ByStatus: map[int]int{}, Counted: map[string]int{},
		PrimaryLimited: s.primary, SecondaryTripped: s.tripped, SecondaryLimited: s.secondary,
		NotModified: s.notMod, MinMutationGap: s.minGap, MaxConcurrent: s.maxFlight,
	}
	for k, v := range s.byStatus {
		st.ByStatus[k] = v
	}
	for k, v := range s.counted {
		st.Counted[k] = v
	}
	return st
}

// Reset returns the epoch second at which token's window of resource ends
// (0 if none is open).
func (s *Server) Reset(token, resource string) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if win := s.windows[token+"\x00"+resource]; win != nil {
		return win.reset.Unix()
	}
	return 0
}

func resourceOf(path string) string {
	switch {
	case path == "/search/code" || strings.HasPrefix(path, "/search/code/"):
		return "code_search"
	case strings.HasPrefix(path, "/search/"):
		return "search"
	case path == "/graphql":
		return "graphql"
	case strings.HasPrefix(path, "/app-manifests/") && strings.HasSuffix(path, "/conversions"):
		return "integration_manifest"
	}
	return "core"
}

func isIssueList(path string) bool {
	segs := strings.Split(strings.Trim(path, "/"), "/")
	return len(segs) == 4 && segs[0] == "repos" && segs[3] == "issues"
}

func fnv(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}
