package services

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/byteproxy/byteproxy/internal/budget"
	"github.com/byteproxy/byteproxy/internal/httpx"
	"github.com/byteproxy/byteproxy/internal/metrics"
	"github.com/byteproxy/byteproxy/internal/routes"
	"github.com/byteproxy/byteproxy/modules/gateway"
	"github.com/byteproxy/byteproxy/modules/services/internal/leanhttp"
)

// forwarder forwards requests to one service, with everything a request
// needs computed once: bodiless GET/HEAD/OPTIONS to a plain-http route (or
// an https one, as http_version says) on the lean path (lean.go) unless the operator turned it off, everything
// else through a ReverseProxy over the service's own Transport; both build
// the outgoing request with outgoing (headers.go). There is one per
// *gateway.Service (see Service.Proxy).
type forwarder struct {
	svc      *gateway.Service
	key      string
	keyVar   any // key boxed once for the request variable (BenchmarkModules/services: 36 allocs/op with, 37 boxing per request)
	base     route
	versions map[string]*route
	links    []linkBase // the URLs response headers are rewritten from (links.go)
	defaults []headerValue
	rp       *httputil.ReverseProxy
	pools    []*leanhttp.Pool // the lean path's, one per scheme and host (poolRoutes); none when it is off
	budget   *gateway.Budget  // the upstream budget; nil when upstream_limits are off (budget.go)
	metrics  *metrics.Recorder
	logger   *zap.Logger
}

// headerValue is a default request header; vals is shared by every
// outgoing request and never modified.
type headerValue struct {
	key  string
	vals []string
}

// newForwarder builds the forwarder of service s; lean says whether the
// lean path is on (the byteproxy app's lean_path).
func newForwarder(s *gateway.Service, m *metrics.Recorder, logger *zap.Logger, lean bool) *forwarder {
	f := &forwarder{
		svc:     s,
		key:     s.Key,
		keyVar:  s.Key,
		base:    newRoute(s.BaseURL),
		links:   newLinkBases(s),
		budget:  s.Budget(),
		metrics: m,
		logger:  logger.With(zap.String("service", s.Key)),
	}
	if len(s.Versions) > 0 {
		f.versions = make(map[string]*route, len(s.Versions))
		for v, u := range s.Versions {
			rt := newRoute(u)
			f.versions[v] = &rt
		}
	}
	for k, vals := range s.Headers {
		f.defaults = append(f.defaults, headerValue{key: k, vals: vals[:len(vals):len(vals)]})
	}
	if lean {
		f.poolRoutes()
	}
	var transport http.RoundTripper = s.Transport
	if s.HTTPVersion != gateway.HTTP1 {
		transport = newFirstConn(transport, f) // HTTP/2 is possible
	}
	if s.Retries > 0 {
		transport = &retryTransport{next: transport, f: f}
	}
	f.rp = &httputil.ReverseProxy{
		Rewrite:      f.rewrite,
		Transport:    transport,
		BufferPool:   buffers,
		ErrorHandler: f.handleError,
		ErrorLog:     log.New(logWriter{f}, "", 0),
	}
	return f
}

// poolRoutes gives each route the lean path may take a connection pool,
// one per scheme and host: plain-http routes, and https routes unless the
// service's http_version is 2. Under auto an https pool speaks HTTP/1.1
// only to an upstream that agrees to it by ALPN (leanhttp.NewAutoTLSPool;
// the others go through the Transport: see serveLean); under 1.1 to any.
// An https pool verifies the upstream as the Transport does (the service's
// TLSConfig) and dials with the Transport's dialer, so the address guard
// applies to both paths.
func (f *forwarder) poolRoutes() {
	pools := make(map[string]*leanhttp.Pool)
	version := f.svc.HTTPVersion
	add := func(rt *route) {
		if rt.scheme != "http" && (rt.scheme != "https" || version == gateway.HTTP2) {
			return
		}
		k := rt.scheme + "://" + rt.host
		if pools[k] == nil {
			switch {
			case rt.scheme == "https" && version == gateway.HTTP1:
				pools[k] = leanhttp.NewTLSPool(rt.host, f.svc.Transport.DialContext, f.svc.TLSConfig)
			case rt.scheme == "https":
				pools[k] = leanhttp.NewAutoTLSPool(rt.host, f.svc.Transport.DialContext, f.svc.TLSConfig)
			default:
				pools[k] = leanhttp.NewPool(rt.host, f.svc.Transport.DialContext)
			}
			f.pools = append(f.pools, pools[k])
		}
		rt.pool = pools[k]
	}
	add(&f.base)
	for _, rt := range f.versions {
		add(rt)
	}
}

// Close closes the lean path's pools: idle connections now, those in use
// when their requests end (the service closes its Transport's; see
// gateway.Service.Close).
func (f *forwarder) Close() {
	for _, p := range f.pools {
		p.Close()
	}
}

// ServeHTTP forwards r, which the handler has checked, and records it.
func (f *forwarder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, rest, _ := routes.ProxyPath(r.URL.EscapedPath())
	f.forward(w, r, rest)
}

// forward is ServeHTTP for a caller that has already split the path: rest
// is the escaped path below the service key.
func (f *forwarder) forward(w http.ResponseWriter, r *http.Request, rest string) {
	pw := writers.Get().(*proxyWriter)
	now := time.Now()
	*pw = proxyWriter{ResponseWriter: w, f: f, r: r, rest: rest, start: now, sent: now}
	defer f.finish(pw, r)
	if b := f.budget; b != nil && !f.reserve(pw, r, rest, b) {
		return // held, then answered here (or the client left)
	}
	if leanMethod(r) {
		if rt, tail := f.route(rest); rt.pool != nil && !rt.pool.Declined() {
			f.serveLean(pw, r, rt, tail)
			return
		}
	}
	f.rp.ServeHTTP(pw, r)
}

// finish records the request once it is over (also when the response copy
// was aborted) and recycles its writer.
func (f *forwarder) finish(pw *proxyWriter, r *http.Request) {
	if pw.budgeted {
		// Reserved and not settled by a response head: sent perhaps,
		// answered never (an error, a timeout, the client gone).
		f.budget.Engine.Done(&pw.ticket, budget.StatusNoResponse, nil)
	}
	total := time.Since(pw.start)
	status := pw.status
	if status == 0 {
		status = 499 // the client went away before anything was written
	}
	f.metrics.ProxyRequest(f.key, status, total, pw.upstream)
	if !pw.failed && pw.status != 0 {
		// The access log's status is the client's; these say what the
		// upstream answered and how long it took to.
		gateway.AddLogField(r, zap.Int("upstream_status", status))
		gateway.AddLogField(r, zap.Duration("upstream_duration", pw.upstream))
	}
	if ce := f.logger.Check(zap.DebugLevel, "proxied request"); ce != nil {
		ce.Write(zap.String("method", r.Method), zap.Int("status", status),
			zap.Duration("duration", total), zap.Duration("upstream_duration", pw.upstream),
			zap.Bool("lean", pw.lean))
	}
	*pw = proxyWriter{}
	writers.Put(pw)
	// On a service that left the registry, what this request gave back
	// to the Transport's pool is closed rather than kept for 90 s.
	f.svc.Finished()
}

// rewrite builds ReverseProxy's outgoing request with outgoing, as the
// lean path does. ReverseProxy has already applied most of these rules to
// its copy of the client's headers; starting again from the client's keeps
// one set of rules for both paths.
func (f *forwarder) rewrite(pr *httputil.ProxyRequest) {
	in, out := pr.In, pr.Out
	_, rest, _ := routes.ProxyPath(in.URL.EscapedPath())
	rt, tail := f.route(rest)

	u := out.URL
	u.Opaque, u.User = "", nil
	u.Fragment, u.RawFragment, u.ForceQuery, u.OmitHost = "", "", false, false
	out.Host = "" // the upstream's host, from u
	h := out.Header
	clear(h)
	f.outgoing(h, u, in, rt, tail)
	if upgrading(in.Header) {
		// A WebSocket upgrade (the only one the handler lets through):
		// ReverseProxy asks the upstream for it with these, as it
		// would have before Rewrite.
		h["Connection"] = []string{"Upgrade"}
		h["Upgrade"] = []string{in.Header.Get("Upgrade")}
	}
}

// route picks the base URL for the escaped path rest: a first segment that
// names a version selects that version's. tail is the path below it.
func (f *forwarder) route(rest string) (*route, string) {
	tail := rest[1:]
	if f.versions != nil {
		first, after, _ := strings.Cut(tail, "/")
		if rt, ok := f.versions[first]; ok {
			return rt, after
		}
	}
	return &f.base, tail
}

// proxyWriter is the ResponseWriter a forwarded request writes to: it adds
// the X-Proxy-* headers just before the status goes out and remembers what
// the metrics need. Unwrap gives http.ResponseController (flush, hijack
// for upgrades, deadlines) the writer below.
type proxyWriter struct {
	http.ResponseWriter
	f        *forwarder
	r        *http.Request // the client's request
	rest     string        // its escaped path below the service key
	start    time.Time
	sent     time.Time // when the upstream budget let it go (start without one)
	status   int
	upstream time.Duration // until the upstream's response headers
	failed   bool          // the gateway answered (an error, a refusal)
	lean     bool          // sent on the lean path (see lean.go)

	// The upstream budget's (budget.go).
	ticket        budget.Ticket
	budgeted      bool // ticket is to be settled
	consumer      string
	gwRateLimit   int // lines of RateLimit the gateway set before the upstream's
	gwPolicy      int // lines of RateLimit-Policy, likewise
	preferWait    time.Duration
	preferApplied bool // the client's Prefer: wait bounded the hold
}

// writers recycles proxyWriters, which the upstream budget's fields make
// large (BenchmarkModules/services: 36 allocs, 3.2 KB/op with; 37 allocs,
// 3.7 KB/op with one allocated per request).
var writers = sync.Pool{New: func() any { return new(proxyWriter) }}

func (w *proxyWriter) WriteHeader(code int) {
	if w.status != 0 { // a superfluous call
		w.ResponseWriter.WriteHeader(code)
		return
	}
	h := w.ResponseWriter.Header()
	w.rewriteLocations(h) // also of a 1xx: 103 Early Hints carry Link
	if code < 200 {
		w.ResponseWriter.WriteHeader(code)
		return
	}
	w.status = code
	d := time.Since(w.start)
	if !w.failed {
		w.upstream = time.Since(w.sent)
		w.upstreamAnswered(code, h)
	}
	w.setProxyHeaders(h, d)
	// Caddy set its own Server header before the gateway ran; where the
	// upstream sent one, the upstream's wins rather than both being sent.
	// (The gateway sets no X-RateLimit-* or Retry-After on forwarded
	// responses: the upstream's pass untouched.)
	if s := h["Server"]; len(s) > 1 {
		h["Server"] = s[len(s)-1:]
	}
	w.ResponseWriter.WriteHeader(code)
}

// upstreamAnswered takes note of the upstream's final answer (its headers
// are in h): the upstream budget settles, a rate-limit refusal is counted.
func (w *proxyWriter) upstreamAnswered(code int, h http.Header) {
	if code == http.StatusTooManyRequests || code == http.StatusForbidden {
		if scope, ok := upstreamLimitScope(code, h); ok {
			w.f.metrics.UpstreamRateLimited(w.f.key, scope)
		}
	}
	if w.budgeted {
		w.settle(code, h)
		w.setPreferenceApplied(h)
	}
}

// setProxyHeaders sets X-Proxy-Service (replacing one the upstream sent)
// and X-Proxy-Duration (d). The values are this response's own: Caddy's
// `header` directive and other handlers edit response headers in place,
// so a slice shared between responses would carry one's edits into all.
func (w *proxyWriter) setProxyHeaders(h http.Header, d time.Duration) {
	// One allocation for both (BenchmarkModules/services: 36 allocs/op
	// with, 37 with a slice each).
	vals := make([]string, 2)
	vals[0], vals[1] = w.f.key, durationMS(d)
	h["X-Proxy-Service"] = vals[0:1:1]
	h["X-Proxy-Duration"] = vals[1:2:2]
}

func (w *proxyWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(p)
}

// Hijack is called for a protocol upgrade (WebSocket) once the upstream
// answered 101.
func (w *proxyWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if w.status == 0 {
		// ReverseProxy writes the 101 itself, with these headers, after
		// this returns: WriteHeader is not called.
		h := w.ResponseWriter.Header()
		w.upstreamAnswered(http.StatusSwitchingProtocols, h)
		w.setProxyHeaders(h, time.Since(w.start))
	}
	conn, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err == nil && w.status == 0 {
		w.status = http.StatusSwitchingProtocols
		w.upstream = time.Since(w.sent)
	}
	return conn, brw, err
}

func (w *proxyWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// handleError answers a failed upstream exchange: 504 for a timeout, 502
// for anything else, nothing at all when the client went away. Messages
// are written here, never copied from the error, which may hold the
// upstream URL and with it a query credential.
func (f *forwarder) handleError(w http.ResponseWriter, r *http.Request, err error) {
	pw, _ := w.(*proxyWriter)
	if pw != nil {
		pw.failed = true
	}
	if errors.Is(r.Context().Err(), context.Canceled) {
		f.clientGone(r)
		return
	}
	f.answerError(w, r, r.URL.Scheme+"://"+r.URL.Host, err)
}

// clientGone notes a request whose client went away before the upstream
// answered; there is no one to answer.
func (f *forwarder) clientGone(r *http.Request) {
	if ce := f.logger.Check(zap.DebugLevel, "client went away before the upstream answered"); ce != nil {
		ce.Write(zap.String("method", r.Method))
	}
}

// answerError answers a failed exchange with upstream (scheme://host).
func (f *forwarder) answerError(w http.ResponseWriter, r *http.Request, upstream string, err error) {
	status, kind, msg := f.describe(upstream, err)
	f.metrics.UpstreamError(f.key, kind)
	if ce := f.logger.Check(zap.WarnLevel, "upstream request failed"); ce != nil {
		ce.Write(zap.String("method", r.Method), zap.String("upstream", upstream),
			zap.String("kind", kind), zap.Int("status", status), zap.String("error", f.svc.Redact(err.Error())))
	}
	title := "Bad Gateway"
	if status == http.StatusGatewayTimeout {
		title = "Gateway Timeout"
	}
	_ = httpx.WriteError(w, r, status, "", msg, upstreamErrorBody{Error: title, Message: msg, Service: f.key})
}

// describe classifies an upstream error: status, metrics kind, message.
func (f *forwarder) describe(upstream string, err error) (int, string, string) {
	var opErr *net.OpError
	dial := errors.As(err, &opErr) && opErr.Op == "dial"
	var netErr net.Error
	if errors.Is(err, context.DeadlineExceeded) || errors.As(err, &netErr) && netErr.Timeout() {
		if dial {
			return http.StatusGatewayTimeout, metrics.UpstreamErrTimeout,
				"Could not connect to " + upstream + " within " + f.svc.Timeout.String() + "."
		}
		return http.StatusGatewayTimeout, metrics.UpstreamErrTimeout,
			"The upstream " + upstream + " did not answer within " + f.svc.Timeout.String() + "."
	}
	var dnsErr *net.DNSError
	switch {
	case errors.As(err, &dnsErr):
		return http.StatusBadGateway, metrics.UpstreamErrDial,
			"Could not resolve the upstream host " + dnsErr.Name + "."
	case dial:
		reason := "connection failed"
		var sysErr syscall.Errno
		if errors.As(err, &sysErr) {
			reason = sysErr.Error()
		} else if opErr.Err != nil {
			reason = f.svc.Redact(opErr.Err.Error()) // e.g. the private-address guard
		}
		return http.StatusBadGateway, metrics.UpstreamErrDial,
			"Could not connect to " + upstream + ": " + reason + "."
	case errors.Is(err, gateway.ErrNoHTTP2):
		return http.StatusBadGateway, metrics.UpstreamErrOther,
			"The upstream " + upstream + " did not negotiate HTTP/2, which the service's http_version 2 requires."
	case httpx.IsTLSError(err):
		return http.StatusBadGateway, metrics.UpstreamErrOther,
			"The TLS handshake with " + upstream + " failed: " + f.svc.Redact(tlsReason(err)) + "."
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return http.StatusBadGateway, metrics.UpstreamErrReset,
			"The upstream " + upstream + " closed the connection before sending a response."
	}
	return http.StatusBadGateway, metrics.UpstreamErrOther,
		"The request to the upstream " + upstream + " failed."
}

func tlsReason(err error) string {
	var certErr *tls.CertificateVerificationError
	if errors.As(err, &certErr) && certErr.Err != nil {
		return certErr.Err.Error()
	}
	var recErr tls.RecordHeaderError
	if errors.As(err, &recErr) {
		return "the upstream did not answer with TLS"
	}
	return "certificate not accepted"
}

// retryTransport retries what is safe to retry: a request that failed to
// connect (so nothing was sent), with an idempotent method and no body.
// Timeouts are not retried: the service's timeout bounds the wait.
type retryTransport struct {
	next http.RoundTripper
	f    *forwarder
}

func (t *retryTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(req)
	if err == nil || !replayable(req) {
		return resp, err
	}
	return t.f.retry(req.Context(), req.Method, err, func() (*http.Response, error) { return t.next.RoundTrip(req) })
}

// retry sends a replayable request again with send, up to the service's
// retries, while the previous attempt (err) failed to connect.
func (f *forwarder) retry(ctx context.Context, method string, err error, send func() (*http.Response, error)) (*http.Response, error) {
	retries := f.svc.Retries
	for attempt := 1; attempt <= retries && connectFailed(err); attempt++ {
		if ce := f.logger.Check(zap.DebugLevel, "retrying upstream request after a connection failure"); ce != nil {
			ce.Write(zap.String("method", method), zap.Int("attempt", attempt), zap.Int("retries", retries))
		}
		if !pause(ctx, backoff(attempt)) {
			return nil, err
		}
		resp, e := send()
		if e == nil {
			return resp, nil
		}
		err = e
	}
	return nil, err
}

// replayable: an idempotent method without a body to resend.
func replayable(req *http.Request) bool {
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodPut, http.MethodDelete:
		return req.Body == nil || req.Body == http.NoBody
	}
	return false
}

// connectFailed: the connection could not be made, so nothing was sent.
func connectFailed(err error) bool {
	var opErr *net.OpError
	if !errors.As(err, &opErr) || opErr.Op != "dial" || opErr.Timeout() {
		return false
	}
	var dnsErr *net.DNSError
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENETUNREACH) ||
		errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ECONNRESET) ||
		errors.As(err, &dnsErr) && (dnsErr.IsTemporary || dnsErr.IsTimeout)
}

// backoff before retry n (1, 2, ...): 50ms, 100ms, 200ms ... at most 1s.
func backoff(n int) time.Duration {
	d := 50 * time.Millisecond << (n - 1)
	if d > time.Second || d <= 0 {
		d = time.Second
	}
	return d
}

func pause(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// bufferPool lends ReverseProxy and the lean path (copyBody) their 32 KiB
// copy buffers (BenchmarkModules/services: 3.2 KB/op with, 36 KB/op with
// a buffer allocated per response).
type bufferPool struct{ p sync.Pool }

const bufSize = 32 << 10

var buffers = new(bufferPool)

func (b *bufferPool) Get() []byte {
	if buf, ok := b.p.Get().(*[bufSize]byte); ok {
		return buf[:]
	}
	return new([bufSize]byte)[:]
}

func (b *bufferPool) Put(buf []byte) {
	if cap(buf) >= bufSize {
		b.p.Put((*[bufSize]byte)(buf[:bufSize]))
	}
}

// logWriter sends ReverseProxy's own messages (aborted copies, upgrade
// errors) to the service's logger at debug level, redacted.
type logWriter struct{ f *forwarder }

func (l logWriter) Write(p []byte) (int, error) {
	if ce := l.f.logger.Check(zap.DebugLevel, "reverse proxy"); ce != nil {
		ce.Write(zap.String("detail", l.f.svc.Redact(strings.TrimSpace(string(p)))))
	}
	return len(p), nil
}
