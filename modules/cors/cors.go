// Package cors is the http.handlers.byteproxy_cors module: CORS headers on
// every response (errors included) and preflight answers that come before
// authentication, so browsers can call the gateway.
package cors

import (
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"golang.org/x/net/http/httpguts"

	"github.com/byteproxy/byteproxy/internal/httpx"
	"github.com/byteproxy/byteproxy/internal/routes"
	"github.com/byteproxy/byteproxy/modules/gateway"
)

func init() {
	caddy.RegisterModule(new(Handler))
}

// Defaults of the cors settings (DESIGN §2).
var (
	defaultHeaders = []string{"Authorization", "X-API-Key", "Content-Type", "X-Requested-With"}
	defaultMethods = []string{"GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
	// Response headers browsers may read: the rate-limit and proxy
	// headers are not CORS-safelisted. RateLimit and RateLimit-Policy are
	// the gateway's own limits; X-RateLimit-* are the upstream's, and
	// those a Discord or GitHub client library reads on a refusal the
	// gateway writes in that upstream's shape.
	exposeHeaders = []string{"RateLimit", "RateLimit-Policy", "Retry-After",
		"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "X-RateLimit-Reset-After",
		"X-RateLimit-Used", "X-RateLimit-Resource", "X-RateLimit-Scope", "X-RateLimit-Global", "X-RateLimit-Bucket",
		"X-Proxy-Service", "X-Proxy-Duration"}
)

const defaultMaxAge = 24 * time.Hour

// Canonical header names, so the hot path indexes the header map directly.
const (
	hOrigin         = "Origin"
	hRequestMethod  = "Access-Control-Request-Method"
	hRequestHeaders = "Access-Control-Request-Headers"
	hAllowOrigin    = "Access-Control-Allow-Origin"
	hAllowCreds     = "Access-Control-Allow-Credentials"
	hAllowMethods   = "Access-Control-Allow-Methods"
	hAllowHeaders   = "Access-Control-Allow-Headers"
	hMaxAge         = "Access-Control-Max-Age"
	hExpose         = "Access-Control-Expose-Headers"
	hVary           = "Vary"
)

// Handler applies the byteproxy app's `cors` settings: CORS headers on
// every answer and preflights answered before authentication.
// docs/HANDLERS.md describes the origins, headers and the management API's
// rules.
type Handler struct {
	app *gateway.App

	// Header values, precomputed in Provision.
	disabled       bool
	allowAll       bool
	origins        map[string]bool // lower-case origins
	allowMethods   string
	allowHeaders   string
	reflectHeaders bool            // add the headers a preflight asks for
	allowedLower   map[string]bool // allowHeaders, lower-case
	maxAge         string
	expose         string
	manageKeyless  bool // the management scope has no key
}

// CaddyModule returns the Caddy module information.
func (*Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.byteproxy_cors",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision reads the app's cors settings (checked by the app's Validate)
// and builds every header value.
func (h *Handler) Provision(ctx caddy.Context) error {
	app, err := gateway.FromContext(ctx)
	if err != nil {
		return err
	}
	h.app = app
	if sc := app.ScopeFor(gateway.ScopeManagement); sc == nil || len(sc.Keys) == 0 {
		h.manageKeyless = true
	}
	h.setup(app.CORS, ctx.Logger())
	return nil
}

// setup precomputes the header values of a (possibly nil) valid config.
func (h *Handler) setup(c *gateway.CORSConfig, logger *zap.Logger) {
	if c == nil {
		c = new(gateway.CORSConfig)
	}
	if h.disabled = c.Disabled; h.disabled {
		return
	}
	h.setupOrigins(c.Origins, logger)
	maxAge := time.Duration(c.MaxAge)
	if maxAge == 0 {
		maxAge = defaultMaxAge
	}
	h.allowMethods = joined(c.AllowMethods, defaultMethods, strings.ToUpper)
	h.allowHeaders = joined(c.AllowHeaders, defaultHeaders, nil)
	h.reflectHeaders = len(c.AllowHeaders) == 0
	h.allowedLower = map[string]bool{}
	for name := range strings.SplitSeq(h.allowHeaders, ", ") {
		h.allowedLower[strings.ToLower(name)] = true
	}
	h.maxAge = strconv.Itoa(int(maxAge / time.Second))
	h.expose = strings.Join(exposeHeaders, ", ")
}

// setupOrigins normalizes the allowed origins; "*" among them allows every
// origin.
func (h *Handler) setupOrigins(list []string, logger *zap.Logger) {
	if len(list) == 0 || slices.Contains(list, "*") {
		if len(list) > 1 {
			logger.Warn("cors origins: '*' allows every origin; the other entries are ignored", zap.Strings("origins", list))
		}
		h.allowAll = true
		return
	}
	h.origins = make(map[string]bool, len(list))
	for _, o := range list {
		norm, _ := gateway.NormalizeOrigin(o)
		h.origins[norm] = true
	}
}

// joined is one comma-separated header value of the configured list, or
// of the default list if none is configured.
func joined(list, def []string, norm func(string) string) string {
	if len(list) == 0 {
		list = def
	}
	out := make([]string, 0, len(list))
	for _, v := range list {
		if norm != nil {
			v = norm(v)
		}
		if !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	return strings.Join(out, ", ")
}

// ServeHTTP sets the CORS headers before calling next, so that responses
// written by any later handler (401, 429, 503) carry them, and answers
// preflights itself.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if h.disabled {
		return next.ServeHTTP(w, r)
	}
	var origin string
	if v := r.Header[hOrigin]; len(v) > 0 {
		origin = v[0]
	}
	isPreflight := r.Method == http.MethodOptions && origin != "" && len(r.Header[hRequestMethod]) > 0
	if h.manageKeyless && routes.Of(r.URL.Path) == routes.Management {
		if isPreflight {
			return refuseManagementPreflight(w, r)
		}
		return next.ServeHTTP(w, r)
	}
	allowed := h.allowOrigin(origin)

	// One allocation holds this response's header values and the wrapper
	// that keeps them from being doubled by a later handler
	// (BenchmarkCORS/list/allowed: 1 alloc, 144 B/op; with a []string per
	// header 5 allocs, 208 B/op; list/preflight 2 against 7). The wrapper
	// is needed without an Origin too: an upstream that sends its own
	// Access-Control-Allow-Origin (GitHub does) would otherwise make it
	// "*, *".
	var rw *responseWriter
	var v *values
	switch {
	case allowed != "" && !isPreflight:
		rw = &responseWriter{ResponseWriterWrapper: caddyhttp.ResponseWriterWrapper{ResponseWriter: w}, h: h, allowed: allowed}
		v = &rw.values
	case allowed != "" || !h.allowAll:
		v = new(values)
	}
	hdr := w.Header()
	if !h.allowAll {
		// The answer depends on Origin, so caches must key on it.
		if len(hdr[hVary]) == 0 {
			hdr[hVary] = v.one(0, hOrigin)
		} else {
			hdr[hVary] = append(hdr[hVary], hOrigin)
		}
	}
	if isPreflight {
		return h.preflight(w, r, hdr, v, allowed, routes.Of(r.URL.Path) != routes.Management)
	}
	if allowed == "" {
		return next.ServeHTTP(w, r)
	}
	hdr[hAllowOrigin] = v.one(1, allowed)
	if !h.allowAll {
		hdr[hAllowCreds] = v.one(2, "true")
	}
	if origin != "" {
		// Only a browser reads Expose-Headers, and a browser always sends
		// Origin: skip its 170 bytes for bots and servers.
		hdr[hExpose] = v.one(3, h.expose)
	}
	if rw == nil {
		return next.ServeHTTP(w, r)
	}
	return next.ServeHTTP(rw, r)
}

// values backs the CORS header values of one response. Each value gets a
// slice of its own with capacity 1: a later handler may Add to it (which
// copies) or edit it in place (Caddy's `header` replacements do), and
// either way no other response sees the change.
type values [6]string

func (v *values) one(i int, s string) []string {
	v[i] = s
	return v[i : i+1 : i+1]
}

// allowOrigin is the Access-Control-Allow-Origin value for a request's
// origin, or "" if the origin is not allowed (or absent, for a list).
func (h *Handler) allowOrigin(origin string) string {
	if h.allowAll {
		return "*"
	}
	if origin == "" {
		return ""
	}
	if h.origins[origin] {
		return origin
	}
	if lower := strings.ToLower(origin); h.origins[lower] {
		return lower
	}
	return ""
}

// preflight answers an OPTIONS preflight: 204 with the allowed methods,
// headers and max age, or 403 for an origin that is not allowed. reflect
// allows the request headers the browser asks for (not on /manage/*).
func (h *Handler) preflight(w http.ResponseWriter, r *http.Request, hdr http.Header, v *values, allowed string, reflect bool) error {
	if allowed == "" {
		const msg = "This origin is not allowed by the gateway's CORS policy."
		return httpx.WriteError(w, r, http.StatusForbidden, "", msg, map[string]string{
			"error":   "Forbidden",
			"message": msg,
		})
	}
	hdr[hAllowOrigin] = v.one(1, allowed)
	if !h.allowAll {
		hdr[hAllowCreds] = v.one(2, "true")
	}
	hdr[hAllowMethods] = v.one(3, h.allowMethods)
	allowHeaders := h.allowHeaders
	if reflect && h.reflectHeaders {
		allowHeaders = h.withRequested(r.Header[hRequestHeaders])
		// The answer depends on what was asked: caches must key on it.
		hdr[hVary] = append(hdr[hVary], hRequestHeaders)
	}
	hdr[hAllowHeaders] = v.one(4, allowHeaders)
	hdr[hMaxAge] = v.one(5, h.maxAge)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// Bounds of the request headers a preflight may have allowed on top of the
// defaults; what goes beyond is left out (the browser then refuses the
// request, as it would without this feature).
const (
	maxRequestedHeaders   = 32
	maxRequestedHeaderLen = 128
)

// withRequested is the allowed-headers value of a preflight that asks for
// the headers in requested (Access-Control-Request-Headers, a comma-
// separated list): the defaults, then each requested name that is a valid
// header name and not among them, as the browser spelled it.
func (h *Handler) withRequested(requested []string) string {
	if len(requested) == 0 {
		return h.allowHeaders
	}
	var b strings.Builder
	b.WriteString(h.allowHeaders)
	added := 0
	var seen map[string]bool
	for _, line := range requested {
		for name := range strings.SplitSeq(line, ",") {
			name = strings.TrimSpace(name)
			if name == "" || len(name) > maxRequestedHeaderLen || !httpguts.ValidHeaderFieldName(name) {
				continue
			}
			lower := strings.ToLower(name)
			if h.allowedLower[lower] || seen[lower] {
				continue
			}
			if added == maxRequestedHeaders {
				return b.String()
			}
			if seen == nil {
				seen = map[string]bool{}
			}
			seen[lower] = true
			added++
			b.WriteString(", ")
			b.WriteString(name)
		}
	}
	return b.String()
}

// refuseManagementPreflight answers a preflight for the management API
// while it has no key: no web page may call it from another origin.
func refuseManagementPreflight(w http.ResponseWriter, r *http.Request) error {
	const msg = "The management API (/manage/*) has no key, so it answers local programs only and no web page of another origin. " +
		"Set a management key (auth management { key ... } in the byteproxy global option) to call it from a browser app."
	return httpx.WriteError(w, r, http.StatusForbidden, "", msg, map[string]string{
		"error":   "Forbidden",
		"message": msg,
	})
}

// responseWriter makes the gateway's CORS headers win over ones copied
// from an upstream response: a proxy copies upstream headers with Add, and
// a second Access-Control-Allow-Origin value makes browsers reject the
// response. A header a later handler deleted stays deleted.
type responseWriter struct {
	caddyhttp.ResponseWriterWrapper
	h           *Handler
	allowed     string
	wroteHeader bool
	values
}

// WriteHeader restores the CORS headers, then writes the status.
func (rw *responseWriter) WriteHeader(status int) {
	if !rw.wroteHeader {
		rw.wroteHeader = status >= 200
		rw.fix(rw.Header())
	}
	rw.ResponseWriterWrapper.WriteHeader(status)
}

// Write writes the header first if nobody did.
func (rw *responseWriter) Write(b []byte) (int, error) {
	if !rw.wroteHeader {
		rw.WriteHeader(http.StatusOK)
	}
	return rw.ResponseWriterWrapper.Write(b)
}

// ReadFrom writes the header first, as the wrapped ReadFrom would not
// call this WriteHeader.
func (rw *responseWriter) ReadFrom(r io.Reader) (int64, error) {
	if !rw.wroteHeader {
		rw.WriteHeader(http.StatusOK)
	}
	return rw.ResponseWriterWrapper.ReadFrom(r)
}

// fix puts back the gateway's value of a CORS header that a later
// handler doubled or changed; an absent header stays absent.
func (rw *responseWriter) fix(hdr http.Header) {
	h := rw.h
	if v, ok := hdr[hAllowOrigin]; ok && !same(v, rw.allowed) {
		hdr[hAllowOrigin] = []string{rw.allowed}
	}
	if v, ok := hdr[hAllowCreds]; ok {
		if h.allowAll {
			delete(hdr, hAllowCreds) // never with "*"
		} else if !same(v, "true") {
			hdr[hAllowCreds] = []string{"true"}
		}
	}
	if v, ok := hdr[hExpose]; ok && !same(v, h.expose) {
		hdr[hExpose] = mergeList(h.expose, v)
	}
}

func same(v []string, want string) bool { return len(v) == 1 && v[0] == want }

// mergeList joins comma-separated header values, ours first, without
// repeating a name.
func mergeList(ours string, values []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, v := range append([]string{ours}, values...) {
		for _, name := range strings.Split(v, ",") {
			name = strings.TrimSpace(name)
			if key := strings.ToLower(name); name != "" && !seen[key] {
				seen[key] = true
				out = append(out, name)
			}
		}
	}
	return []string{strings.Join(out, ", ")}
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ http.ResponseWriter         = (*responseWriter)(nil)
	_ io.ReaderFrom               = (*responseWriter)(nil)
)
