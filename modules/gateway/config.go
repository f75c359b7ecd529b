package gateway

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// ServiceConfig configures one upstream API reachable at /proxy/{key}/...
// When preset names a preset ("discord", "github"), the preset is the
// starting point and every field set here overrides it.
type ServiceConfig struct {
	// Preset to start from: "discord" or "github". Empty for none.
	Preset string `json:"preset,omitempty"`

	// Human-readable name, shown in service listings.
	Name string `json:"name,omitempty"`

	// Absolute http(s) URL that /proxy/{key}/{path} maps onto; the path is
	// appended to it and can never climb above it.
	BaseURL string `json:"base_url,omitempty"`

	// Versioned base URLs: a first path segment equal to a key here selects
	// that base URL instead, e.g. "v10" -> "https://discord.com/api/v10/".
	Versions map[string]string `json:"versions,omitempty"`

	// Default request headers. A header the client sends wins over these.
	Headers map[string]string `json:"headers,omitempty"`

	// The credential the gateway adds to every upstream request.
	Auth *ServiceAuth `json:"auth,omitempty"`

	// At most this many requests per window for the whole service (a fixed
	// window opened by the first request). The presets set the quota of an
	// authenticated client, discord 50 per 1s and github 5000 per 1h, but
	// only while their upstream_limits are off: the upstream budget tracks
	// the real limits, and a fixed window in front of it would refuse
	// bursts that the budget holds and sends in time.
	RateLimit *RateLimit `json:"rate_limit,omitempty"`

	// Upstream budgets: the gateway mirrors the upstream's own rate limits
	// for the service's credential from its responses and never sends a
	// request the upstream would refuse for rate limiting; it holds the
	// request until its budget resets (within max_wait) or answers at once
	// in the upstream's shape (README, Upstream budgets). On by default
	// for services built from the discord and github presets, off for
	// other services unless set ({} turns it on with the defaults).
	UpstreamLimits *UpstreamLimits `json:"upstream_limits,omitempty"`

	// Upstream timeout for this service: dialing, and waiting for the
	// response headers once the request is sent. Defaults to the gateway's.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// Retries of idempotent requests that failed to connect (nothing was
	// sent). Defaults to the gateway's.
	Retries *int `json:"retries,omitempty"`

	// Do not verify the upstream's TLS certificate. Also implied for every
	// service when the gateway's strict_tls is off.
	TLSInsecureSkipVerify bool `json:"tls_insecure_skip_verify,omitempty"`

	// The HTTP version spoken to an https upstream: "auto" (the default:
	// bodiless GET, HEAD and OPTIONS take the lean HTTP/1.1 path while the
	// gateway's lean_path is on, where the upstream agrees to HTTP/1.1 by
	// ALPN; an upstream that speaks HTTP/2 alone declines in the TLS
	// handshake, before anything is sent, and gets them in HTTP/2, the host
	// remembered for 5 minutes; other requests HTTP/2 when the upstream
	// offers it, else HTTP/1.1), "1.1" (HTTP/1.1 only; the lean path takes
	// bodiless requests whatever ALPN says, for an upstream without it) or
	// "2" (HTTP/2 only: a request fails with 502 when the upstream does not
	// negotiate it; needs https base URLs). Plain-http upstreams are always
	// spoken to in HTTP/1.1.
	HTTPVersion string `json:"http_version,omitempty"`
}

// ServiceAuth is the credential added upstream.
type ServiceAuth struct {
	// One of: "bot" (Authorization: Bot <token>), "bearer"
	// (Authorization: Bearer <token>), "basic" (Authorization: Basic
	// base64(<token>), the token being "user:password"), "header" (the
	// header named by name carries the token; "api-key", the original
	// ByteProxy's name, is accepted for it), "query" (the query parameter
	// named by name carries the token).
	Type string `json:"type,omitempty"`

	// The token. Placeholders are resolved once at provisioning, so
	// "{env.GITHUB_TOKEN}" reads the environment variable.
	Token string `json:"token,omitempty"`

	// Header name (type "header") or query parameter name (type "query").
	Name string `json:"name,omitempty"`
}

// RateLimit is "at most max_requests per window".
type RateLimit struct {
	// Requests allowed per window.
	MaxRequests int `json:"max_requests,omitempty"`
	// Window length.
	Window caddy.Duration `json:"window,omitempty"`
}

// Validate reports a limit that cannot be enforced.
func (r *RateLimit) Validate() error {
	if r == nil {
		return nil
	}
	if r.MaxRequests <= 0 {
		return fmt.Errorf("max_requests must be positive, got %d", r.MaxRequests)
	}
	if time.Duration(r.Window) <= 0 {
		return fmt.Errorf("window must be positive, got %s", time.Duration(r.Window))
	}
	return nil
}

// UpstreamLimits configures a service's upstream budget. What the gateway
// tracks depends on the service: Discord's route buckets, global limit and
// 429 scopes (discord preset); GitHub's resources (core, search, ...),
// secondary limits and spaced mutations (github preset); Retry-After, and
// optionally IETF RateLimit or X-RateLimit-* headers, for any other
// service. Settings left out take the defaults of the service's kind.
type UpstreamLimits struct {
	// Switch upstream budgets off for this service (Caddyfile:
	// upstream_limits off), e.g. for a preset whose token is also used
	// elsewhere and whose limits another proxy already keeps.
	Disabled bool `json:"disabled,omitempty"`

	// The longest a request is held waiting for its budget before it is
	// answered with the upstream's 429 (or 403) instead. A client may ask
	// for less with the request header Prefer: wait=N (seconds, RFC 7240);
	// the smaller wins. Default 5s; 0 never holds. Each held request keeps
	// its client connection open.
	MaxWait *caddy.Duration `json:"max_wait,omitempty"`

	// Added to every reset and lock the upstream announces, for clock and
	// rounding effects at the upstream. Defaults: discord 50ms, github
	// 250ms, other services 100ms. Raise it when the gateway is far from
	// the upstream.
	ResetSlack *caddy.Duration `json:"reset_slack,omitempty"`

	// discord only: requests per global_window per bot token (Discord's
	// global limit). Interaction callbacks and webhooks called with their
	// token do not count, as on Discord. Default 50 (per 1s); set the
	// limit Discord granted a large bot.
	GlobalLimit int `json:"global_limit,omitempty"`

	// discord only: the window of global_limit. Default 1s.
	GlobalWindow caddy.Duration `json:"global_window,omitempty"`

	// github only: mutating requests (POST, PATCH, PUT, DELETE) go one at a
	// time per token, each at least this long after the previous one was
	// answered, as GitHub asks of integrators. Default 1s; 0 turns the
	// spacing off.
	MutationSpacing *caddy.Duration `json:"mutation_spacing,omitempty"`

	// At most this many requests of the service's credential in flight at
	// once. Default: github 50 (GitHub's secondary limit is 100
	// concurrent), others none (0).
	MaxInFlight *int `json:"max_in_flight,omitempty"`

	// Ban guard: after this many invalid responses (401, 403, and 429
	// except Discord's scope "shared") within ban_window, the credential
	// is paused and requests are answered 503 until the count falls below
	// it, before the upstream bans the token or the host (Discord: 10,000
	// invalid requests in 10 minutes). Default: discord 5000, others off
	// (0).
	BanThreshold *int `json:"ban_threshold,omitempty"`

	// The ban guard's sliding window. Default 10m.
	BanWindow caddy.Duration `json:"ban_window,omitempty"`

	// After a 401 for the service's token (the token is wrong or revoked),
	// the token is not used for this long and requests are answered 503.
	// Default: discord and github 5m, others off (0).
	UnauthorizedLock *caddy.Duration `json:"unauthorized_lock,omitempty"`

	// At most this many requests held per credential; when full, the
	// consumer with the most held requests loses its newest one, or a
	// newcomer is answered at once. Default 1024.
	MaxQueue int `json:"max_queue,omitempty"`

	// Fair-share weights by consumer: an API key id as it appears in the
	// access log ("key:53e07d8c8ec1"), or a client IP for requests without
	// a key. While requests wait for the credential's budget, each
	// consumer gets its weight's share of what frees up. Default 1.
	Weights map[string]float64 `json:"weights,omitempty"`

	// Services other than the presets: which response headers describe
	// the upstream's limits. "ietf" reads RateLimit and RateLimit-Policy
	// (draft-ietf-httpapi-ratelimit-headers); "x-ratelimit" reads
	// X-RateLimit-Limit, -Remaining and -Reset. Default: none, only
	// Retry-After on a 429 or 503 is honoured.
	Headers string `json:"headers,omitempty"`

	// With headers "x-ratelimit": whether X-RateLimit-Reset is an epoch
	// time in seconds ("epoch", as GitHub) or seconds from now ("delta").
	// Default "epoch".
	Reset string `json:"reset,omitempty"`
}

// AuthScope configures the API keys that open one scope of the gateway
// ("proxy" for /proxy/*, "management" for /manage/*).
type AuthScope struct {
	// Accepted keys; several allow rotation. Placeholders are resolved at
	// provisioning and empty results are ignored, as long as one key is
	// left: when keys are listed and every one resolves to nothing (say
	// {env.PROXY_API_KEY} with the variable unset), the configuration does
	// not load unless `required` is explicitly false. A key shorter than 16
	// characters is accepted with a warning in the log.
	Keys []string `json:"keys,omitempty"`

	// Require a key. A required scope without any non-empty key is a
	// configuration error (fail closed). Defaults to true when keys are
	// listed, even if they resolve to nothing; write false to run the scope
	// without a key on purpose (the management scope then answers local
	// clients only).
	Required *bool `json:"required,omitempty"`
}

// AuthFailures throttles key guessing: a client address that presented
// wrong keys too often is answered 429 for a while, without its keys being
// checked, and its connection is closed. It is a token bucket per address
// (IPv6 per /64): MaxFailures wrong keys at once, then one more every
// Window/MaxFailures. The address is Caddy's client IP, so behind a
// reverse proxy set the server's trusted_proxies, or every client shares
// the proxy's budget.
type AuthFailures struct {
	// Turn the throttle off.
	Disabled bool `json:"disabled,omitempty"`

	// Wrong keys one client address may present per window. Default 20.
	MaxFailures int `json:"max_failures,omitempty"`

	// The window. Default 1m.
	Window caddy.Duration `json:"window,omitempty"`
}

// Defaults of AuthFailures.
const (
	DefaultAuthFailures      = 20
	DefaultAuthFailureWindow = time.Minute
)

// Limit returns the effective throttle: at most n failures per window;
// ok is false when it is off. A nil AuthFailures is the default.
func (f *AuthFailures) Limit() (n int, window time.Duration, ok bool) {
	if f == nil {
		return DefaultAuthFailures, DefaultAuthFailureWindow, true
	}
	if f.Disabled {
		return 0, 0, false
	}
	n, window = f.MaxFailures, time.Duration(f.Window)
	if n == 0 {
		n = DefaultAuthFailures
	}
	if window == 0 {
		window = DefaultAuthFailureWindow
	}
	return n, window, true
}

// Validate reports a throttle that cannot be enforced.
func (f *AuthFailures) Validate() error {
	if f == nil || f.Disabled {
		return nil
	}
	if f.MaxFailures < 0 {
		return fmt.Errorf("max_failures must not be negative, got %d", f.MaxFailures)
	}
	if f.Window < 0 {
		return fmt.Errorf("window must not be negative, got %s", time.Duration(f.Window))
	}
	return nil
}

// CORSConfig configures cross-origin access for browsers.
type CORSConfig struct {
	// Disable CORS handling entirely.
	Disabled bool `json:"disabled,omitempty"`

	// Allowed origins; "*" allows any origin without credentials. A list of
	// origins reflects only a listed origin and allows credentials.
	// Default: ["*"].
	Origins []string `json:"origins,omitempty"`

	// Allowed request headers in preflight answers. Default: Authorization,
	// X-API-Key, Content-Type, X-Requested-With, plus every valid header
	// name the preflight asks for (Access-Control-Request-Headers), such as
	// If-None-Match or X-GitHub-Api-Version. A list set here is exactly
	// what is allowed.
	AllowHeaders []string `json:"allow_headers,omitempty"`

	// Allowed methods in preflight answers. Default: GET, POST, PUT, PATCH,
	// DELETE, OPTIONS.
	AllowMethods []string `json:"allow_methods,omitempty"`

	// How long browsers may cache a preflight answer. Default: 24h.
	MaxAge caddy.Duration `json:"max_age,omitempty"`
}

// Validate checks the cors settings (App.Validate): each origin is
// scheme://host[:port] or "null" (unless "*" allows every origin), max_age
// is not negative. A disabled config is not checked.
func (c *CORSConfig) Validate() error {
	if c == nil || c.Disabled {
		return nil
	}
	if !slices.Contains(c.Origins, "*") {
		for _, o := range c.Origins {
			if _, ok := NormalizeOrigin(o); !ok {
				return fmt.Errorf("cors origins: %q is not an origin; want scheme://host[:port], e.g. https://app.example.com", o)
			}
		}
	}
	if c.MaxAge < 0 {
		return errors.New("cors max_age: must not be negative")
	}
	return nil
}

// NormalizeOrigin is the form of an origin setting that a request's Origin
// is compared with (lower case, no trailing slash), and whether it is an
// origin: http(s)://host[:port] or "null".
func NormalizeOrigin(o string) (string, bool) {
	norm := strings.ToLower(strings.TrimSuffix(strings.TrimSpace(o), "/"))
	if norm == "null" {
		return norm, true
	}
	u, err := url.Parse(norm)
	ok := err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != "" && u.Path == "" && u.RawQuery == "" && u.User == nil
	return norm, ok
}

// PressureConfig configures load shedding. A threshold left at zero takes
// its default; set it very high to make it irrelevant.
//
// Request bodies that the management API reads whole are admitted while
// what they may allocate at once (24 times their size, plus 16 KiB each)
// fits in an eighth of the smaller of max_heap and max_rss (64 MiB at the
// defaults); more get 503 with Retry-After: 1 (type "requestBodies").
type PressureConfig struct {
	// Disable shedding; readings are still reported at /up.
	Disabled bool `json:"disabled,omitempty"`

	// Shed when the Go heap in use exceeds this many bytes. Default 512 MiB.
	// The heap in use counts garbage not yet collected, so a reading over
	// the limit is taken again after a garbage collection (at most one per
	// interval) before it counts: garbage left by a burst never keeps the
	// gateway shedding once the burst is over.
	MaxHeap int64 `json:"max_heap,omitempty"`

	// Shed when the process's resident set exceeds this many bytes.
	// Default 1 GiB. A reading over the limit is taken again after a
	// garbage collection that returns freed memory to the operating system
	// (at most one per interval).
	MaxRSS int64 `json:"max_rss,omitempty"`

	// Shed when the p99 Go scheduler latency over the last interval exceeds
	// this. Default 250ms.
	MaxSchedLatency caddy.Duration `json:"max_sched_latency,omitempty"`

	// Shed when process CPU use, as a fraction of GOMAXPROCS between 0
	// and 1, exceeds this (0.98, not 98). Default 0.98.
	MaxCPU float64 `json:"max_cpu,omitempty"`

	// At most this many proxied requests in flight; more are shed with 503
	// (type "inFlight"). Management requests are not counted. Default (0):
	// max_heap / 128 KiB, 4096 at the default max_heap of 512 MiB. 128 KiB
	// is what one proxied request holds at most in the usual case
	// (goroutine stacks, the client and upstream connections' buffers, a
	// 32 KiB copy buffer, headers), so the default cap keeps what requests
	// in flight hold within max_heap. A WebSocket counts for as long as it
	// is open. -1 (Caddyfile: off) is no limit.
	MaxInFlight int64 `json:"max_in_flight,omitempty"`

	// How often the monitor samples. Default 1s.
	Interval caddy.Duration `json:"interval,omitempty"`

	// Retry-After sent with a 503. Default 10s.
	RetryAfter caddy.Duration `json:"retry_after,omitempty"`

	// Optional URL of a dependency to probe; failing it is pressure of
	// type "healthCheck".
	HealthCheckURL string `json:"health_check_url,omitempty"`

	// How often the dependency is probed. Default 10s.
	HealthCheckInterval caddy.Duration `json:"health_check_interval,omitempty"`
}

// Validate checks the pressure settings (App.Validate); each error starts
// with the option it names. Disabled settings are checked too: /up still
// judges readings by them.
func (c *PressureConfig) Validate() error {
	if c == nil {
		return nil
	}
	if err := CheckFraction("max_cpu", c.MaxCPU); err != nil {
		return err
	}
	switch {
	case c.MaxHeap < 0:
		return errors.New("max_heap: must not be negative")
	case c.MaxRSS < 0:
		return errors.New("max_rss: must not be negative")
	case c.MaxSchedLatency < 0:
		return errors.New("max_sched_latency: must not be negative")
	case c.MaxInFlight < -1:
		return errors.New("max_in_flight: want a number of requests, 0 for the default derived from max_heap, or -1 for no limit")
	case c.Interval < 0 || c.RetryAfter < 0 || c.HealthCheckInterval < 0:
		return errors.New("interval, retry_after, health_check interval: must not be negative")
	}
	if c.HealthCheckURL != "" {
		u, err := url.Parse(c.HealthCheckURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("health_check: want an absolute http(s) URL, got %q", c.HealthCheckURL)
		}
	}
	return nil
}

// RuntimeServicesConfig governs services added through the management API.
type RuntimeServicesConfig struct {
	// Glob patterns (path.Match syntax, e.g. "CUSTOM_*") of environment
	// variables a runtime service may name as its token. Default: none, so
	// the management API can never read a secret from the environment.
	TokenEnv []string `json:"token_env,omitempty"`

	// Allow upstreams on loopback, private, link-local, unspecified,
	// metadata, documentation and other special-purpose addresses, and on
	// the gateway host's own addresses. Default off: such an upstream is
	// refused when the service is added (as are host names that spell an
	// IPv4 address other than a.b.c.d, like 2130706433 or 127.1), and
	// every connection is checked again when it is dialed.
	AllowPrivateUpstreams bool `json:"allow_private_upstreams,omitempty"`

	// How often storage is re-read so that changes made by other instances
	// sharing it become visible. Default 10s.
	SyncInterval caddy.Duration `json:"sync_interval,omitempty"`

	// At most this many runtime services may be stored; adding one more
	// is refused with 409 until one is deleted. Services of the Caddy
	// config do not count. Records already stored beyond the limit (say
	// after it was lowered) are still served. Default 1000.
	MaxServices int `json:"max_services,omitempty"`
}

// DefaultMaxServices is runtime_services max_services when it is not set.
const DefaultMaxServices = 1000

// clone returns a deep copy, so presets and stored configs are never shared.
func (c ServiceConfig) clone() ServiceConfig {
	b, _ := json.Marshal(c)
	var out ServiceConfig
	_ = json.Unmarshal(b, &out)
	return out
}
