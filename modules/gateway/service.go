package gateway

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/byteproxy/byteproxy/internal/httpx"
	"github.com/byteproxy/byteproxy/internal/netguard"
	"github.com/byteproxy/byteproxy/internal/routes"
)

// Service is a provisioned service: its settings compiled for the hot path.
// It is immutable once built; a change builds a new Service.
type Service struct {
	// Key is the name in /proxy/{key}/...
	Key string
	// Config is the effective configuration (preset merged), placeholders
	// unresolved, so it is safe to show: it never holds a resolved token.
	Config ServiceConfig
	// Source is "config" for services of the Caddy config, "runtime" for
	// those added through the management API.
	Source string

	// BaseURL is the parsed base URL, its path ending in "/".
	BaseURL *url.URL
	// Versions maps a first path segment to its base URL.
	Versions map[string]*url.URL
	// Headers are the default request headers, canonicalized.
	Headers http.Header
	// Timeout bounds dialing and waiting for response headers.
	Timeout time.Duration
	// Retries of idempotent requests that failed to connect.
	Retries int
	// Transport is this service's own connection pool.
	Transport *http.Transport
	// HTTPVersion is the effective http_version: "auto", "1.1" or "2".
	HTTPVersion string
	// TLSConfig is what Transport verifies an https upstream with; the
	// proxy's lean path clones it (ServerName, ALPN and session cache are
	// set per pool), so that both paths trust the same certificates.
	TLSConfig *tls.Config

	// TokenEnv is the environment variable the token comes from, if the
	// token is an {env.X} placeholder; used in hints, never a secret.
	TokenEnv string

	token      string // resolved credential; never logged or shown
	authHeader string // precomputed header value for bot/bearer/basic
	authName   string // canonical header name the credential goes in (bot, bearer, basic, header)
	authValue  string // that header's value
	queryName  string // query parameter the credential goes in (query)
	queryPair  string // "name=escaped-token", appended to the upstream query (query)

	proxyMu sync.Mutex
	proxy   atomic.Pointer[http.Handler]
	closed  atomic.Bool // Close was called

	budgetSpec *budgetSpec // upstream_limits compiled; nil when off
	budget     *Budget     // set before the service is published (attachBudgets)
	budgetKey  string      // the engine's key in the pool
	budgetOnce sync.Once   // releases the engine once
}

// Proxy returns the handler that forwards requests to this service,
// calling build the first time only. The proxy module keeps its
// per-service forwarder (a ReverseProxy over Transport) here, so that it
// lives exactly as long as the Service: a changed service is a new
// Service with a new forwarder, and an old one is dropped with it.
func (s *Service) Proxy(build func(*Service) http.Handler) http.Handler {
	if p := s.proxy.Load(); p != nil {
		return *p
	}
	s.proxyMu.Lock()
	defer s.proxyMu.Unlock()
	if p := s.proxy.Load(); p != nil {
		return *p
	}
	h := build(s)
	s.proxy.Store(&h)
	if s.closed.Load() {
		closeProxy(h) // built for a late request after Close: see Close
	}
	return h
}

// Close releases the service's upstream connections when it leaves the
// registry or its config unloads: the idle ones at once, and those in use
// as their requests end, instead of keeping them for 90 s in a pool no
// request will use again. Requests in flight finish normally, and a late
// request still works (on a connection of its own). The forwarder, if one
// was built, closes its own pools (a Close method); connections of the
// Transport are closed by Finished.
func (s *Service) Close() {
	s.closed.Store(true)
	s.releaseBudget()
	s.Transport.CloseIdleConnections()
	if p := s.proxy.Load(); p != nil {
		closeProxy(*p)
	}
}

func closeProxy(h http.Handler) {
	if c, ok := h.(interface{ Close() }); ok {
		c.Close()
	}
}

// Finished is called after each request sent through Transport, once its
// response body is closed. On a closed service it closes the Transport's
// idle connections: the one the request gave back, and (because the
// Transport then closes what becomes idle until it is asked for a new
// connection) one it gives back a moment later.
func (s *Service) Finished() {
	if s.closed.Load() {
		s.Transport.CloseIdleConnections()
	}
}

// HasAuth reports whether the service is configured to send a credential.
func (s *Service) HasAuth() bool { return s.Config.Auth != nil && s.Config.Auth.Type != "" }

// TokenConfigured reports whether the credential resolved to a non-empty value.
func (s *Service) TokenConfigured() bool { return s.token != "" }

// AuthType is the credential type, or "" when the service sends none.
func (s *Service) AuthType() string {
	if !s.HasAuth() {
		return ""
	}
	return s.Config.Auth.Type
}

// ApplyCredential sets the service's credential on an outgoing request,
// replacing anything the client sent in the same place. It returns false
// when the service needs a token that is not configured.
func (s *Service) ApplyCredential(h http.Header, u *url.URL) bool {
	if !s.HasAuth() {
		return true
	}
	if s.token == "" {
		return false
	}
	if s.queryName != "" {
		// Replace any client value of the parameter, and leave the rest of
		// the query byte for byte as the client sent it.
		q := httpx.StripQueryParam(u.RawQuery, s.queryName)
		if q == "" {
			u.RawQuery = s.queryPair
		} else {
			u.RawQuery = q + "&" + s.queryPair
		}
		return true
	}
	h[s.authName] = []string{s.authValue}
	return true
}

// QueryCredentialName is the query parameter the service's credential
// goes in upstream (auth type query), or "". The proxy keeps it out of
// the URLs it hands back to clients.
func (s *Service) QueryCredentialName() string { return s.queryName }

// RedactURL returns u as text with the service's query credential hidden,
// for messages that name the upstream.
func (s *Service) RedactURL(u *url.URL) string {
	c := *u
	c.User = nil
	if s.HasAuth() && s.Config.Auth.Type == "query" && c.RawQuery != "" {
		q := c.Query()
		if q.Has(s.Config.Auth.Name) {
			q.Set(s.Config.Auth.Name, "REDACTED")
			c.RawQuery = q.Encode()
		}
	}
	return c.String()
}

// Redact removes the service's token from text (an error message, say).
func (s *Service) Redact(text string) string {
	if s.token == "" {
		return text
	}
	text = strings.ReplaceAll(text, s.token, "REDACTED")
	text = strings.ReplaceAll(text, url.QueryEscape(s.token), "REDACTED")
	if s.authValue != "" {
		text = strings.ReplaceAll(text, s.authValue, "REDACTED")
	}
	return text
}

var envPlaceholder = regexp.MustCompile(`^\{env\.([A-Za-z_][A-Za-z0-9_]*)\}$`)

// ServiceKeyPattern is what a service key may look like: the original's
// keys (letters in either case, digits, '_', '-' and '.'), at most 63
// characters. CheckServiceKey adds the rules a pattern does not say.
var ServiceKeyPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)

// CheckServiceKey reports why key cannot name a service: it does not match
// ServiceKeyPattern, holds "..", or is reserved (routes.IsReservedKey).
// Keys are used as they are in /proxy/{key}/ (letter case counts) and in
// storage keys (byteproxy/services/{key}.json), where ".." could climb
// out.
func CheckServiceKey(key string) error {
	switch {
	case !ServiceKeyPattern.MatchString(key):
		return fmt.Errorf("service key %q must match %s", key, ServiceKeyPattern)
	case strings.Contains(key, ".."):
		return fmt.Errorf("service key %q must not contain '..'", key)
	case routes.IsReservedKey(key):
		return fmt.Errorf("service key %q is reserved", key)
	}
	return nil
}

// DialGuard decides whether the gateway may connect to an address: it is
// a net.Dialer Control function, called with the resolved address just
// before each connection. nil allows everything.
type DialGuard func(network, address string, c syscall.RawConn) error

// dialGuard is the DialGuard of runtime services: the address guard, with
// the setting that lifts it named in the error (it reaches the log and the
// 502 answer).
func dialGuard(g *netguard.Guard) DialGuard {
	return func(network, address string, c syscall.RawConn) error {
		if err := g.Control(network, address, c); err != nil {
			return fmt.Errorf("%w (runtime_services allow_private_upstreams is off)", err)
		}
		return nil
	}
}

// BuildOptions are the gateway-wide defaults a service inherits.
type BuildOptions struct {
	Timeout   time.Duration
	Retries   int
	StrictTLS bool
	Guard     DialGuard
	Replacer  *caddy.Replacer
}

// BuildService validates cfg and compiles it into a Service.
func BuildService(key string, cfg ServiceConfig, source string, opt BuildOptions) (*Service, error) {
	if err := CheckServiceKey(key); err != nil {
		return nil, httpx.Fieldf("key", "%v", err)
	}
	if cfg.Preset != "" {
		if _, ok := Presets[cfg.Preset]; !ok {
			return nil, httpx.Fieldf("preset", "unknown preset %q", cfg.Preset)
		}
	}
	cfg = mergePreset(cfg)
	s := &Service{Key: key, Config: cfg, Source: source, Headers: http.Header{}, Versions: map[string]*url.URL{}}
	if s.Config.Name == "" {
		s.Config.Name = key
	}
	var err error
	if s.BaseURL, err = parseBaseURL(cfg.BaseURL); err != nil {
		return nil, httpx.Fieldf("baseUrl", "%v", err)
	}
	for v, raw := range cfg.Versions {
		if strings.ContainsAny(v, "/?#") || v == "" || v == "." || v == ".." {
			return nil, httpx.Fieldf("versionedBaseUrls", "version %q must be a single path segment", v)
		}
		if s.Versions[v], err = parseBaseURL(raw); err != nil {
			return nil, httpx.Fieldf("versionedBaseUrls", "version %s: %v", v, err)
		}
	}
	for k, v := range cfg.Headers {
		if !validHeaderName(k) {
			return nil, httpx.Fieldf("headers", "invalid header name %q", k)
		}
		s.Headers.Set(k, v)
	}
	if err := cfg.RateLimit.Validate(); err != nil {
		return nil, httpx.Fieldf("rateLimit", "%v", err)
	}
	if err := s.compileAuth(opt.Replacer); err != nil {
		return nil, err
	}
	s.Timeout = opt.Timeout
	if cfg.Timeout > 0 {
		s.Timeout = time.Duration(cfg.Timeout)
	} else if cfg.Timeout < 0 {
		return nil, httpx.Fieldf("timeout", "must not be negative")
	}
	s.Retries = opt.Retries
	if cfg.Retries != nil {
		if *cfg.Retries < 0 || *cfg.Retries > 10 {
			return nil, httpx.Fieldf("retries", "must be between 0 and 10")
		}
		s.Retries = *cfg.Retries
	}
	if err := s.compileBudget(); err != nil {
		return nil, err
	}
	if s.HTTPVersion, err = checkHTTPVersion(cfg.HTTPVersion, s.BaseURL, s.Versions); err != nil {
		return nil, err
	}
	s.TLSConfig = &tls.Config{InsecureSkipVerify: cfg.TLSInsecureSkipVerify || !opt.StrictTLS} //nolint:gosec // asked for by strict_tls off / tls_insecure_skip_verify
	s.Transport = newTransport(s.Timeout, s.TLSConfig, opt.Guard, s.HTTPVersion)
	return s, nil
}

// authTypeAliases maps other names of auth types onto the gateway's:
// "api-key" is the original ByteProxy's name for "header".
var authTypeAliases = map[string]string{"api-key": "header"}

// CanonicalAuthType returns the gateway's name of an auth type, resolving
// an alias ("api-key" is "header"); any other value is returned as it is.
func CanonicalAuthType(t string) string {
	if c, ok := authTypeAliases[t]; ok {
		return c
	}
	return t
}

func (s *Service) compileAuth(repl *caddy.Replacer) error {
	a := s.Config.Auth
	if a == nil || a.Type == "" {
		s.Config.Auth = nil
		return nil
	}
	if c := CanonicalAuthType(a.Type); c != a.Type {
		// The effective config names the type as the gateway does; a copy,
		// since a.Auth may be the app's own config.
		canon := *a
		canon.Type = c
		s.Config.Auth, a = &canon, &canon
	}
	switch a.Type {
	case "bot", "bearer", "basic":
	case "header", "query":
		if a.Name == "" {
			return httpx.Fieldf("auth.headerName", "auth type %q needs a name", a.Type)
		}
		if a.Type == "header" && !validHeaderName(a.Name) {
			return httpx.Fieldf("auth.headerName", "invalid header name %q", a.Name)
		}
		if a.Type == "header" && cannotCarryCredential[http.CanonicalHeaderKey(a.Name)] {
			return httpx.Fieldf("auth.headerName", "header %q cannot carry a credential: it is hop-by-hop or describes the message, and would be dropped or rewritten on the way upstream", a.Name)
		}
	default:
		return httpx.Fieldf("auth.type", "unknown auth type %q (want bot, bearer, basic, header (or api-key) or query)", a.Type)
	}
	if m := envPlaceholder.FindStringSubmatch(a.Token); m != nil {
		s.TokenEnv = m[1]
	}
	if repl == nil {
		repl = caddy.NewReplacer()
	}
	s.token = strings.TrimSpace(repl.ReplaceAll(a.Token, ""))
	s.authName = "Authorization"
	switch a.Type {
	case "bot":
		s.authHeader = "Bot " + s.token
	case "bearer":
		s.authHeader = "Bearer " + s.token
	case "basic":
		s.authHeader = "Basic " + base64.StdEncoding.EncodeToString([]byte(s.token))
	case "header":
		s.authName = http.CanonicalHeaderKey(a.Name)
		s.authHeader = s.token
	case "query":
		s.queryName = a.Name
		s.queryPair = url.QueryEscape(a.Name) + "=" + url.QueryEscape(s.token)
	}
	s.authValue = s.authHeader
	return nil
}

// cannotCarryCredential are the headers that never reach the upstream as
// written: Host, Content-Length, Transfer-Encoding and Trailer are set by
// the HTTP client from the request itself (a value in the header map is
// dropped), the hop-by-hop headers (RFC 9110 section 7.6.1, and those
// httputil.ReverseProxy removes) are consumed by the next hop, and Expect
// changes how the request is sent.
var cannotCarryCredential = map[string]bool{
	"Host": true, "Content-Length": true, "Transfer-Encoding": true, "Trailer": true,
	"Connection": true, "Keep-Alive": true, "Proxy-Connection": true, "Te": true, "Upgrade": true,
	"Trailers": true, "Proxy-Authenticate": true, "Proxy-Authorization": true, "Expect": true,
}

func parseBaseURL(raw string) (*url.URL, error) {
	if raw == "" {
		return nil, errors.New("base URL is required")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, errors.New("base URL is not a valid URL")
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("base URL must be an absolute http or https URL, got %q", raw)
	}
	if u.Host == "" || u.Hostname() == "" {
		return nil, fmt.Errorf("base URL %q has no host", raw)
	}
	if u.User != nil {
		return nil, errors.New("base URL must not carry user information; use auth basic")
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return nil, errors.New("base URL must not have a query or fragment")
	}
	if !strings.HasSuffix(u.Path, "/") {
		u.Path += "/"
		if u.RawPath != "" {
			u.RawPath += "/"
		}
	}
	return u, nil
}

func validHeaderName(name string) bool {
	if name == "" {
		return false
	}
	for _, c := range name {
		if c <= ' ' || c >= 0x7f || strings.ContainsRune("()<>@,;:\\\"/[]?={}", c) {
			return false
		}
	}
	return true
}

// HTTP versions of a service (http_version).
const (
	HTTPAuto = "auto"
	HTTP1    = "1.1"
	HTTP2    = "2"
)

// checkHTTPVersion validates http_version and returns its effective value
// ("auto" when unset). HTTP/2 is only negotiated over TLS, so "2" needs
// https base URLs.
func checkHTTPVersion(v string, base *url.URL, versions map[string]*url.URL) (string, error) {
	switch v {
	case "", HTTPAuto:
		return HTTPAuto, nil
	case HTTP1:
		return v, nil
	case HTTP2:
		if base.Scheme != "https" {
			return "", httpx.Fieldf("http_version", "2 needs an https base URL (HTTP/2 is negotiated over TLS), got %s", base.Scheme)
		}
		for name, u := range versions {
			if u.Scheme != "https" {
				return "", httpx.Fieldf("http_version", "2 needs https base URLs; version %s is %s", name, u.Scheme)
			}
		}
		return v, nil
	}
	return "", httpx.Fieldf("http_version", "unknown HTTP version %q (want auto, 1.1 or 2)", v)
}

// ErrNoHTTP2 is the error of a request to a service with http_version 2
// whose upstream did not negotiate HTTP/2.
var ErrNoHTTP2 = errors.New("the upstream did not negotiate HTTP/2 (ALPN h2), which the service's http_version 2 requires")

// newTransport builds a service's connection pool: a large idle pool, no
// transparent compression (bodies pass through as the upstream sent them),
// TLS session resumption, the HTTP versions http_version allows (auto:
// HTTP/2 to TLS upstreams that offer it), and an optional dial-time
// address guard.
func newTransport(timeout time.Duration, tlsConf *tls.Config, guard DialGuard, version string) *http.Transport {
	dialer := &net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}
	dialer.Control = guard
	tlsConf = tlsConf.Clone()
	tlsConf.ClientSessionCache = tls.NewLRUClientSessionCache(0)
	t := &http.Transport{
		Proxy:                  nil,
		DialContext:            dialer.DialContext,
		TLSClientConfig:        tlsConf,
		ForceAttemptHTTP2:      true,
		MaxIdleConns:           1024,
		MaxIdleConnsPerHost:    512,
		IdleConnTimeout:        90 * time.Second,
		TLSHandshakeTimeout:    timeout,
		ResponseHeaderTimeout:  timeout,
		MaxResponseHeaderBytes: 1 << 20, // as the proxy's lean path (modules/services)
		ExpectContinueTimeout:  time.Second,
		DisableCompression:     true,
		WriteBufferSize:        32 << 10,
		ReadBufferSize:         32 << 10,
	}
	switch version {
	case HTTP1:
		t.ForceAttemptHTTP2 = false
		t.Protocols = new(http.Protocols)
		t.Protocols.SetHTTP1(true)
	case HTTP2:
		t.Protocols = new(http.Protocols)
		t.Protocols.SetHTTP2(true)
		t.DialTLSContext = dialH2(dialer, tlsConf, timeout)
	}
	return t
}

// dialH2 dials a TLS connection offering only HTTP/2 and fails with
// ErrNoHTTP2 when the upstream does not choose it (one without ALPN would
// otherwise be spoken to in HTTP/1.1).
func dialH2(dialer *net.Dialer, conf *tls.Config, timeout time.Duration) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		nc, err := dialer.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		c := conf.Clone()
		c.NextProtos = []string{"h2"}
		if c.ServerName == "" {
			c.ServerName, _, _ = net.SplitHostPort(addr)
		}
		tc := tls.Client(nc, c)
		hctx := ctx
		if timeout > 0 {
			var cancel context.CancelFunc
			hctx, cancel = context.WithTimeout(ctx, timeout)
			defer cancel()
		}
		if err := tc.HandshakeContext(hctx); err != nil {
			_ = nc.Close()
			var opErr *net.OpError
			if errors.As(err, &opErr) && opErr.Op == "remote error" && strings.Contains(opErr.Error(), "no application protocol") {
				// An upstream with ALPN but without h2 refuses the handshake.
				return nil, fmt.Errorf("%w: %w", ErrNoHTTP2, err)
			}
			return nil, err
		}
		if tc.ConnectionState().NegotiatedProtocol != "h2" {
			_ = tc.Close()
			return nil, ErrNoHTTP2
		}
		return tc, nil
	}
}

// ServiceInfo is the public description of a service in listings.
type ServiceInfo struct {
	Key       string     `json:"key"`
	Name      string     `json:"name"`
	BaseURL   string     `json:"baseUrl"`
	HasAuth   bool       `json:"hasAuth"`
	RateLimit *LimitInfo `json:"rateLimit"`
	// The effective version URLs (a preset's moved with an overridden
	// base URL); omitted when the service has none.
	VersionedBaseUrls map[string]string `json:"versionedBaseUrls,omitempty"`
}

// LimitInfo is a rate limit in the original's field names.
type LimitInfo struct {
	MaxRequests int   `json:"maxRequests"`
	WindowMs    int64 `json:"windowMs"`
}

// Info describes the service for listings; it holds no secret.
func (s *Service) Info() ServiceInfo {
	info := ServiceInfo{Key: s.Key, Name: s.Config.Name, BaseURL: s.BaseURL.String(), HasAuth: s.HasAuth()}
	if len(s.Versions) > 0 {
		info.VersionedBaseUrls = make(map[string]string, len(s.Versions))
		for v, u := range s.Versions {
			info.VersionedBaseUrls[v] = u.String()
		}
	}
	if rl := s.Config.RateLimit; rl != nil {
		info.RateLimit = &LimitInfo{MaxRequests: rl.MaxRequests, WindowMs: time.Duration(rl.Window).Milliseconds()}
	}
	return info
}

// PublicListLimit bounds how many services the informational answers list
// (/health, /status, /proxy/services, the 404 of an unknown service): past
// it the list is cut and says so, so that an answer anyone may ask for
// stays small however many runtime services exist. GET /manage/services
// lists them all.
const PublicListLimit = 100

// ListedKeys returns the keys of a service map in order, at most
// PublicListLimit of them, and whether some were left out.
func ListedKeys(m map[string]*Service) (keys []string, truncated bool) {
	keys = SortedKeys(m)
	if len(keys) > PublicListLimit {
		return keys[:PublicListLimit:PublicListLimit], true
	}
	return keys, false
}

// SortedKeys returns the keys of a service map in order.
func SortedKeys(m map[string]*Service) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
