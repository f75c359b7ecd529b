// Package discord simulates the rate limits of Discord's REST API on a real
// net/http server on loopback, with Discord's header names and semantics,
// for the upstream-budget tests and benchmarks.
//
// What it models (https://discord.com/developers/docs/topics/rate-limits):
//
//   - Per-route buckets. A route names a bucket hash (X-RateLimit-Bucket);
//     several routes may name the same hash and then share one budget. A
//     bucket is counted per bot token and per top-level resource of the path
//     (the channel, the guild, or the webhook id + token): the same route on
//     two channels has two budgets. A bucket's window opens at the first
//     request that arrives after the previous window ended and holds Limit
//     requests; Discord counts requests as they arrive.
//   - The global limit: GlobalLimit requests per GlobalWindow per bot token,
//     counted over a sliding window (the strictest reading of "50 per
//     second"). Interaction callbacks and webhooks executed with their token
//     are exempt.
//   - 429s with Retry-After (whole seconds, rounded up), X-RateLimit-Scope
//     (user, global, shared), X-RateLimit-Global on a global 429, and the
//     JSON body {"message", "retry_after" (seconds, ms precision), "global",
//     "code"}. A bucket may have a shared limit across all tokens (a
//     resource shared with others): its 429s say scope shared.
//   - X-RateLimit-Limit, -Remaining, -Reset (epoch seconds with ms),
//     -Reset-After and -Bucket on every response of a route with a bucket.
//   - 401 for a missing or wrong bot token, 403 for resources marked
//     forbidden (Forbid), and the invalid-request count: 401, 403 and 429
//     (except scope shared) within BanWindow; at BanThreshold the host is
//     "banned" (Cloudflare's 429 error 1015, no Discord headers) until the
//     count in the window falls below it again.
//
// The default routes are listed in FastRoutes; the pairs that share a hash
// are documented there.
package discord

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Route is one endpoint of the simulated API.
type Route struct {
	// Method is the HTTP method.
	Method string
	// Pattern is the path below /api/v10 (the version prefix is optional),
	// segment by segment: literal segments, "{channel}", "{guild}",
	// "{webhook}" and "{token}" (the top-level resource: they key the
	// bucket), and any other "{name}" matching one segment.
	Pattern string
	// Bucket is the X-RateLimit-Bucket hash; empty for a route without a
	// per-route limit (no X-RateLimit headers at all).
	Bucket string
	// NoGlobal exempts the route from the global limit.
	NoGlobal bool
	// NoAuth lets the route be called without a bot token.
	NoAuth bool
	// Status is the status of a successful call (default 200).
	Status int

	segs []string
}

// Bucket is the budget of one bucket hash.
type Bucket struct {
	// Limit is the number of requests per Window.
	Limit int
	// Window is the time a window stays open after its first request.
	Window time.Duration
	// SharedLimit, when positive, is a limit per top-level resource across
	// every bot token (a resource shared with others) over SharedWindow;
	// its 429s carry X-RateLimit-Scope: shared.
	SharedLimit  int
	SharedWindow time.Duration
}

// Config configures a simulator.
type Config struct {
	// Tokens are the valid bot tokens.
	Tokens []string
	// GlobalLimit is the global limit per bot token per GlobalWindow
	// (default 50 per 1s).
	GlobalLimit  int
	GlobalWindow time.Duration
	// Buckets are the limits per bucket hash.
	Buckets map[string]Bucket
	// Routes are the endpoints; default FastRoutes().
	Routes []Route
	// BanThreshold is the number of invalid requests within BanWindow at
	// which every request is refused (default 10,000 in 10 minutes).
	BanThreshold int
	BanWindow    time.Duration
	// Latency delays every response after the request was counted.
	Latency time.Duration
	// Body, when set, is the body of every successful answer that has one
	// (default {"id": "<snowflake>"}): the load benchmark checks it.
	Body string
	// NoArrivals stops recording every arrival (MaxArrivals and FirstLast
	// then see none), so that a long load run does not grow the record.
	NoArrivals bool
}

// Bucket hashes of FastRoutes.
const (
	HashMessages  = "8f5d1c3a9e2b47d6a0c4e1f3b5d7a9c2" // create + edit message
	HashDelete    = "1b3d5f7a9c0e2a4c6e8a0b2d4f6a8c0e" // delete message
	HashRead      = "c2a4e6a8c0b2d4f6a8c0e2a4c6e8a0b2" // get messages, get message
	HashReactions = "e4c6a8e0a2c4b6d8f0a2c4e6a8c0e2b4" // add + remove own reaction
	HashChannel   = "a0e2c4b6d8f0a2c4e6a8c0e2b4d6f8a1"
	HashGuild     = "b7d9f1a3c5e7a9c1e3a5c7e9b1d3f5a6"
	HashMe        = "d0f2a4c6e8a0c2e4a6c8e0b2d4f6a8c3"
	HashWebhook   = "f6a8c0e2a4c6e8a0b2d4f6a8c0e2a4c5"
	HashGateway   = "0a2c4e6a8c0e2b4d6f8a0c2e4a6c8e0d"
)

// FastRoutes are the simulated endpoints. Two pairs share a bucket hash,
// as Discord groups similar routes: creating and editing a message
// (HashMessages), adding and removing one's own reaction (HashReactions);
// getting messages and one message share HashRead.
func FastRoutes() []Route {
	return []Route{
		{Method: "POST", Pattern: "/channels/{channel}/messages", Bucket: HashMessages},
		{Method: "PATCH", Pattern: "/channels/{channel}/messages/{message}", Bucket: HashMessages},
		{Method: "DELETE", Pattern: "/channels/{channel}/messages/{message}", Bucket: HashDelete, Status: 204},
		{Method: "GET", Pattern: "/channels/{channel}/messages", Bucket: HashRead},
		{Method: "GET", Pattern: "/channels/{channel}/messages/{message}", Bucket: HashRead},
		{Method: "PUT", Pattern: "/channels/{channel}/messages/{message}/reactions/{emoji}/@me", Bucket: HashReactions, Status: 204},
		{Method: "DELETE", Pattern: "/channels/{channel}/messages/{message}/reactions/{emoji}/@me", Bucket: HashReactions, Status: 204},
		{Method: "GET", Pattern: "/channels/{channel}", Bucket: HashChannel},
		{Method: "GET", Pattern: "/guilds/{guild}", Bucket: HashGuild},
		{Method: "GET", Pattern: "/users/@me", Bucket: HashMe},
		{Method: "GET", Pattern: "/gateway/bot", Bucket: HashGateway},
		{Method: "POST", Pattern: "/webhooks/{webhook}/{token}", Bucket: HashWebhook, NoGlobal: true, NoAuth: true},
		{Method: "POST", Pattern: "/interactions/{id}/{itoken}/callback", NoGlobal: true, NoAuth: true, Status: 204},
	}
}

// FastBuckets are FastRoutes' limits, Discord's scaled down so that tests
// run in seconds: messages 5 per 500ms (Discord: 5 per 5s), reactions 1 per
// 250ms (tighter than messages, as on Discord).
func FastBuckets() map[string]Bucket {
	return map[string]Bucket{
		HashMessages:  {Limit: 5, Window: 500 * time.Millisecond},
		HashDelete:    {Limit: 5, Window: 500 * time.Millisecond},
		HashRead:      {Limit: 5, Window: 500 * time.Millisecond},
		HashReactions: {Limit: 1, Window: 250 * time.Millisecond},
		HashChannel:   {Limit: 5, Window: 500 * time.Millisecond},
		HashGuild:     {Limit: 5, Window: 500 * time.Millisecond},
		HashMe:        {Limit: 5, Window: 500 * time.Millisecond},
		HashWebhook:   {Limit: 5, Window: 500 * time.Millisecond},
		HashGateway:   {Limit: 2, Window: 500 * time.Millisecond},
	}
}

// Server is a running simulator.
type Server struct {
	URL string // http://127.0.0.1:port

	cfg    Config
	tokens map[string]bool
	ln     net.Listener
	srv    *http.Server

	mu           sync.Mutex
	buckets      map[string]*window     // token \x00 hash \x00 resource
	shared       map[string]*window     // hash \x00 resource
	global       map[string][]time.Time // token -> accepted arrivals in the sliding window
	invalid      []time.Time            // invalid responses, oldest first
	arrivals     []time.Time            // every request, in arrival order
	forbidden    map[string]bool
	forcedGlobal map[string]time.Time // token -> until: answer global 429s
	byStatus     map[int]int
	tooMany      map[string]int // 429s by scope: user, global, shared, cloudflare
	perBucket    map[string]int // accepted requests per hash

	received  atomic.Int64
	inFlight  atomic.Int64
	maxFlight atomic.Int64
	seq       atomic.Int64
}

// window is a fixed window that opens at its first request.
type window struct {
	count int
	reset time.Time
}

// New starts a simulator on a loopback port.
func New(cfg Config) (*Server, error) {
	s, err := NewHandler(cfg)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s.ln = ln
	s.URL = "http://" + ln.Addr().String()
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = s.srv.Serve(ln) }()
	return s, nil
}

// NewHandler is a simulator that does not listen: the caller serves it
// (an http.Handler) itself, e.g. to watch its connections. URL is empty
// and Close does nothing.
func NewHandler(cfg Config) (*Server, error) {
	if cfg.GlobalLimit == 0 {
		cfg.GlobalLimit = 50
	}
	if cfg.GlobalWindow == 0 {
		cfg.GlobalWindow = time.Second
	}
	if cfg.Buckets == nil {
		cfg.Buckets = FastBuckets()
	}
	if cfg.Routes == nil {
		cfg.Routes = FastRoutes()
	}
	if cfg.BanThreshold == 0 {
		cfg.BanThreshold = 10000
	}
	if cfg.BanWindow == 0 {
		cfg.BanWindow = 10 * time.Minute
	}
	for i := range cfg.Routes {
		r := &cfg.Routes[i]
		r.segs = splitPath(r.Pattern)
		if r.Bucket != "" {
			if _, ok := cfg.Buckets[r.Bucket]; !ok {
				return nil, fmt.Errorf("route %s %s: bucket %q has no limits", r.Method, r.Pattern, r.Bucket)
			}
		}
	}
	s := &Server{
		cfg:          cfg,
		tokens:       make(map[string]bool),
		buckets:      make(map[string]*window),
		shared:       make(map[string]*window),
		global:       make(map[string][]time.Time),
		forbidden:    make(map[string]bool),
		forcedGlobal: make(map[string]time.Time),
		byStatus:     make(map[int]int),
		tooMany:      make(map[string]int),
		perBucket:    make(map[string]int),
	}
	for _, t := range cfg.Tokens {
		s.tokens[t] = true
	}
	return s, nil
}

// Close stops the server.
func (s *Server) Close() {
	if s.srv != nil {
		_ = s.srv.Close()
	}
}

// Forbid makes every request on a top-level resource (a channel or guild
// id) answer 403 Missing Access, as Discord does without permissions.
func (s *Server) Forbid(resource string) {
	s.mu.Lock()
	s.forbidden[resource] = true
	s.mu.Unlock()
}

// ForceGlobal answers every request of token that the global limit covers
// with a global 429 for d, as Discord does when it lowers a bot's limit.
func (s *Server) ForceGlobal(token string, d time.Duration) {
	s.mu.Lock()
	s.forcedGlobal[token] = time.Now().Add(d)
	s.mu.Unlock()
}

// ServeHTTP answers one request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := s.inFlight.Add(1)
	defer s.inFlight.Add(-1)
	for {
		m := s.maxFlight.Load()
		if n <= m || s.maxFlight.CompareAndSwap(m, n) {
			break
		}
	}
	s.received.Add(1)
	_, _ = io.Copy(io.Discard, r.Body)
	now := time.Now()

	s.mu.Lock()
	if !s.cfg.NoArrivals {
		s.arrivals = append(s.arrivals, now)
	}
	status := s.serve(w, r, now)
	s.byStatus[status]++
	s.mu.Unlock()
	// The response leaves when the handler returns: Latency is the time
	// Discord takes to answer after counting the request.
	if s.cfg.Latency > 0 {
		time.Sleep(s.cfg.Latency)
	}
}

// serve decides the answer under s.mu and returns its status.
func (s *Server) serve(w http.ResponseWriter, r *http.Request, now time.Time) int {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	if s.bannedLocked(now) {
		s.tooMany["cloudflare"]++
		h.Set("Content-Type", "text/html")
		w.WriteHeader(429)
		_, _ = io.WriteString(w, "<html><body>error code: 1015</body></html>")
		return 429
	}
	route, resource := s.match(r.Method, r.URL.Path)
	token := botToken(r.Header.Get("Authorization"))
	if route == nil {
		if !s.tokens[token] {
			return s.unauthorized(w, now)
		}
		w.WriteHeader(404)
		_, _ = io.WriteString(w, `{"message": "404: Not Found", "code": 0}`)
		return 404
	}
	if !route.NoAuth && !s.tokens[token] {
		return s.unauthorized(w, now)
	}
	if route.NoAuth && !s.tokens[token] {
		token = "" // webhook or interaction: limits of the resource alone
	}

	// The global limit, then the route's bucket, then the shared limit;
	// a request counts only when all three let it through.
	var gl []time.Time
	if !route.NoGlobal {
		gl = s.slide(token, now)
		if until, ok := s.forcedGlobal[token]; ok && now.Before(until) {
			return s.globalLimited(w, until.Sub(now), now)
		}
		if len(gl) >= s.cfg.GlobalLimit {
			return s.globalLimited(w, gl[len(gl)-s.cfg.GlobalLimit].Add(s.cfg.GlobalWindow).Sub(now), now)
		}
	}
	var b *window
	var spec Bucket
	if route.Bucket != "" {
		spec = s.cfg.Buckets[route.Bucket]
		b = s.window(s.buckets, token+"\x00"+route.Bucket+"\x00"+resource, spec.Window, now)
		if b.count >= spec.Limit {
			s.bucketHeaders(h, route.Bucket, spec, b, now)
			return s.routeLimited(w, "user", b.reset.Sub(now), now)
		}
		if spec.SharedLimit > 0 {
			sh := s.window(s.shared, route.Bucket+"\x00"+resource, spec.SharedWindow, now)
			if sh.count >= spec.SharedLimit {
				s.bucketHeaders(h, route.Bucket, spec, b, now)
				return s.routeLimited(w, "shared", sh.reset.Sub(now), now)
			}
			sh.count++
		}
		b.count++
		s.perBucket[route.Bucket]++
	}
	if !route.NoGlobal {
		s.global[token] = append(gl, now)
	}
	if b != nil {
		s.bucketHeaders(h, route.Bucket, spec, b, now)
	}
	if s.forbidden[resource] {
		s.invalid = append(s.invalid, now)
		w.WriteHeader(403)
		_, _ = io.WriteString(w, `{"message": "Missing Access", "code": 50001}`)
		return 403
	}
	status := route.Status
	if status == 0 {
		status = 200
	}
	w.WriteHeader(status)
	switch {
	case status == 204:
	case s.cfg.Body != "":
		_, _ = io.WriteString(w, s.cfg.Body)
	default:
		fmt.Fprintf(w, `{"id": "%d"}`, s.snowflake(now))
	}
	return status
}

func (s *Server) unauthorized(w http.ResponseWriter, now time.Time) int {
	s.invalid = append(s.invalid, now)
	w.WriteHeader(401)
	_, _ = io.WriteString(w, `{"message": "401: Unauthorized", "code": 0}`)
	return 401
}

// globalLimited answers a global 429: no bucket headers, as Discord.
func (s *Server) globalLimited(w http.ResponseWriter, retry time.Duration, now time.Time) int {
	h := w.Header()
	h.Set("X-RateLimit-Global", "true")
	h.Set("X-RateLimit-Scope", "global")
	return s.tooManyRequests(w, "global", retry, now)
}

func (s *Server) routeLimited(w http.ResponseWriter, scope string, retry time.Duration, now time.Time) int {
	w.Header().Set("X-RateLimit-Scope", scope)
	return s.tooManyRequests(w, scope, retry, now)
}

func (s *Server) tooManyRequests(w http.ResponseWriter, scope string, retry time.Duration, now time.Time) int {
	s.tooMany[scope]++
	if scope != "shared" {
		s.invalid = append(s.invalid, now)
	}
	secs := ceilMillis(retry)
	w.Header().Set("Retry-After", strconv.FormatInt(int64(math.Ceil(secs)), 10))
	w.WriteHeader(429)
	body, _ := json.Marshal(map[string]any{
		"message":     "You are being rate limited.",
		"retry_after": secs,
		"global":      scope == "global",
		"code":        0,
	})
	_, _ = w.Write(body)
	return 429
}

// bucketHeaders writes the X-RateLimit headers of a bucket's window.
func (s *Server) bucketHeaders(h http.Header, hash string, spec Bucket, b *window, now time.Time) {
	remaining := spec.Limit - b.count
	if remaining < 0 {
		remaining = 0
	}
	h.Set("X-RateLimit-Limit", strconv.Itoa(spec.Limit))
	h.Set("X-RateLimit-Remaining", strconv.Itoa(remaining))
	h.Set("X-RateLimit-Reset", strconv.FormatFloat(float64(ceilUnixMilli(b.reset))/1000, 'f', 3, 64))
	h.Set("X-RateLimit-Reset-After", strconv.FormatFloat(ceilMillis(b.reset.Sub(now)), 'f', 3, 64))
	h.Set("X-RateLimit-Bucket", hash)
}

// window returns the open window under key, opening a new one when the
// last has ended.
func (s *Server) window(m map[string]*window, key string, length time.Duration, now time.Time) *window {
	b := m[key]
	if b == nil {
		b = &window{}
		m[key] = b
	}
	if !now.Before(b.reset) {
		b.count = 0
		b.reset = now.Add(length)
	}
	return b
}

// slide drops the token's global arrivals older than the window.
func (s *Server) slide(token string, now time.Time) []time.Time {
	gl := s.global[token]
	cut := now.Add(-s.cfg.GlobalWindow)
	i := 0
	for i < len(gl) && !gl[i].After(cut) {
		i++
	}
	gl = gl[i:]
	s.global[token] = gl
	return gl
}

func (s *Server) bannedLocked(now time.Time) bool {
	cut := now.Add(-s.cfg.BanWindow)
	i := 0
	for i < len(s.invalid) && !s.invalid[i].After(cut) {
		i++
	}
	s.invalid = s.invalid[i:]
	return len(s.invalid) >= s.cfg.BanThreshold
}

// match finds the route of a path and its top-level resource.
func (s *Server) match(method, path string) (*Route, string) {
	segs := splitPath(path)
	if len(segs) > 0 && segs[0] == "api" {
		segs = segs[1:]
	}
	if len(segs) > 0 && len(segs[0]) > 1 && segs[0][0] == 'v' && isDigits(segs[0][1:]) {
		segs = segs[1:]
	}
	for i := range s.cfg.Routes {
		r := &s.cfg.Routes[i]
		if r.Method != method || len(r.segs) != len(segs) {
			continue
		}
		var resource []string
		ok := true
		for j, p := range r.segs {
			switch {
			case p == "{channel}" || p == "{guild}" || p == "{webhook}" || p == "{token}":
				resource = append(resource, segs[j])
			case strings.HasPrefix(p, "{"):
			case p != segs[j]:
				ok = false
			}
			if !ok {
				break
			}
		}
		if ok {
			return r, strings.Join(resource, "/")
		}
	}
	return nil, ""
}

func (s *Server) snowflake(now time.Time) int64 {
	return (now.UnixMilli()-1420070400000)<<22 | (s.seq.Add(1) & 0x3fffff)
}

// Stats is what the simulator saw.
type Stats struct {
	Received    int64          // every request
	ByStatus    map[int]int    // responses by status
	TooMany     map[string]int // 429s by scope: user, global, shared, cloudflare
	PerBucket   map[string]int // requests let through per bucket hash
	MaxInFlight int64          // most requests handled at once
}

// Stats returns a copy of the counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Stats{
		Received:    s.received.Load(),
		ByStatus:    make(map[int]int, len(s.byStatus)),
		TooMany:     make(map[string]int, len(s.tooMany)),
		PerBucket:   make(map[string]int, len(s.perBucket)),
		MaxInFlight: s.maxFlight.Load(),
	}
	for k, v := range s.byStatus {
		st.ByStatus[k] = v
	}
	for k, v := range s.tooMany {
		st.TooMany[k] = v
	}
	for k, v := range s.perBucket {
		st.PerBucket[k] = v
	}
	return st
}

// Upstream429s is the number of 429s Discord itself would have sent
// (every scope but the simulated Cloudflare ban).
func (st Stats) Upstream429s() int {
	return st.TooMany["user"] + st.TooMany["global"] + st.TooMany["shared"]
}

// Invalid is the number of invalid requests (401, 403, 429 except scope
// shared) within the last d.
func (s *Server) Invalid(d time.Duration) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	cut := time.Now().Add(-d)
	n := 0
	for _, t := range s.invalid {
		if t.After(cut) {
			n++
		}
	}
	return n
}

// MaxArrivals is the most requests that arrived within any interval of
// length d: the rate the server saw, at arrival.
func (s *Server) MaxArrivals(d time.Duration) int {
	s.mu.Lock()
	a := append([]time.Time(nil), s.arrivals...)
	s.mu.Unlock()
	sort.Slice(a, func(i, j int) bool { return a[i].Before(a[j]) })
	best, j := 0, 0
	for i := range a {
		for a[i].Sub(a[j]) >= d {
			j++
		}
		if n := i - j + 1; n > best {
			best = n
		}
	}
	return best
}

// FirstLast returns the first and last arrival.
func (s *Server) FirstLast() (first, last time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.arrivals) == 0 {
		return
	}
	return s.arrivals[0], s.arrivals[len(s.arrivals)-1]
}

func botToken(auth string) string {
	const p = "Bot "
	if len(auth) > len(p) && strings.EqualFold(auth[:len(p)], p) {
		return strings.TrimSpace(auth[len(p):])
	}
	return ""
}

func splitPath(p string) []string {
	var segs []string
	for _, s := range strings.Split(p, "/") {
		if s != "" {
			segs = append(segs, s)
		}
	}
	return segs
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

// ceilMillis is d in seconds, rounded up to the millisecond: a client
// that waits that long never comes back early.
func ceilMillis(d time.Duration) float64 {
	if d < 0 {
		d = 0
	}
	ms := (d + time.Millisecond - 1) / time.Millisecond
	return float64(ms) / 1000
}

func ceilUnixMilli(t time.Time) int64 {
	ms := t.UnixMilli()
	if t.Sub(time.UnixMilli(ms)) > 0 {
		ms++
	}
	return ms
}
