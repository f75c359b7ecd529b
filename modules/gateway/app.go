// Package gateway is the byteproxy Caddy app (apps.byteproxy): the
// gateway's settings, the service registry (config-defined and runtime
// services), persistence of runtime services in Caddy storage, and the
// state that must outlive a config reload. Handlers borrow it through
// ctx.App("byteproxy").
package gateway

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/byteproxy/byteproxy/internal/metrics"
	"github.com/byteproxy/byteproxy/internal/netguard"
)

func init() {
	caddy.RegisterModule(new(App))
}

// App is the byteproxy app: every setting of the gateway.
type App struct {
	// Services by key, the name in /proxy/{key}/...
	Services map[string]*ServiceConfig `json:"services,omitempty"`

	// API keys per scope: "proxy" protects /proxy/*, "management"
	// protects /manage/*.
	Auth map[string]*AuthScope `json:"auth,omitempty"`

	// Also accept the key in the api_key query parameter. Default true,
	// as the original did.
	QueryKey *bool `json:"query_key,omitempty"`

	// Throttling of key guessing per client address. Default: 20 wrong
	// keys per minute, then 429 until the budget refills.
	AuthFailures *AuthFailures `json:"auth_failures,omitempty"`

	// Default upstream timeout for every service. Default 30s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// Default retries of idempotent requests that failed to connect.
	// Default 2.
	Retries *int `json:"retries,omitempty"`

	// Verify upstream TLS certificates. Default true.
	StrictTLS *bool `json:"strict_tls,omitempty"`

	// Send bodiless GET, HEAD and OPTIONS requests to plain-http
	// upstreams, and to https ones as each service's http_version allows,
	// through the gateway's lean HTTP/1.1 client (about half the CPU per
	// request of Go's http.Transport; same guarantees, see
	// docs/OPERATIONS.md, Upstream connections). Default true; false sends
	// every request through Go's httputil.ReverseProxy and http.Transport.
	LeanPath *bool `json:"lean_path,omitempty"`

	// Cross-origin settings. Default: any origin, without credentials.
	CORS *CORSConfig `json:"cors,omitempty"`

	// Load shedding settings.
	Pressure *PressureConfig `json:"pressure,omitempty"`

	// Fair-use limit per consumer (the authenticated key id, else the
	// client IP), across all services: a token bucket.
	ClientRateLimit *RateLimit `json:"client_rate_limit,omitempty"`

	// Redis URL (redis://host:port/db). When set, rate-limit counters live
	// in Redis and are exact across every instance sharing it. While Redis
	// is unreachable, each instance enforces its share of every limit (the
	// limit divided by the number of instances last seen alive in Redis)
	// and adds what it admitted back to Redis when it returns.
	Redis string `json:"redis,omitempty"`

	// Rules for services added through the management API.
	RuntimeServices *RuntimeServicesConfig `json:"runtime_services,omitempty"`

	// URL of a release feed that /version/check compares the running
	// version with. Without it, /version/check reports that no check is
	// configured; the check never blocks startup.
	UpdateCheck string `json:"update_check,omitempty"`

	ctx        caddy.Context
	logger     *zap.Logger
	configured bool // the config had an apps.byteproxy object (see UnmarshalJSON)
	started    time.Time
	storage    certmagic.Storage
	scopes     map[string]*Scope
	opts       BuildOptions
	runtOpts   BuildOptions

	configServices map[string]*Service
	services       atomic.Pointer[map[string]*Service]
	writeMu        sync.Mutex // serializes registry writers
	// records holds, per live runtime service, the stored record it was
	// built from, so a sync skips decoding records that did not change.
	// Guarded by writeMu.
	records map[string]string

	metrics     *metrics.Recorder
	peers       *peerSet                       // the apps of this process (runtime.go), nil until joined
	warned      sync.Map                       // key -> raw record warned about (warnOnce)
	guard       atomic.Pointer[netguard.Guard] // see addrGuard
	budgetState appBudgets                     // the store of upstream budgets (budget.go)

	statusMu sync.RWMutex
	statuses map[string]any

	stop chan struct{}
	wg   sync.WaitGroup
}

// CaddyModule returns the Caddy module information.
func (*App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "byteproxy",
		New: func() caddy.Module { return new(App) },
	}
}

// Scope is a provisioned auth scope.
type Scope struct {
	// Name is "proxy" or "management".
	Name string
	// Keys are the accepted keys, non-empty.
	Keys []string
	// Required means a request without a valid key is refused.
	Required bool
}

// Scope names.
const (
	ScopeProxy      = "proxy"
	ScopeManagement = "management"
)

// Provision resolves the settings and builds the service registry.
func (a *App) Provision(ctx caddy.Context) error {
	a.ctx = ctx
	a.logger = ctx.Logger()
	a.metrics = newMetrics(ctx, a)
	a.started = time.Now()
	a.stop = make(chan struct{})
	a.storage = ctx.Storage()
	repl := caddy.NewReplacer()

	if !a.configured {
		a.logger.Warn("the byteproxy app is not configured (no byteproxy global option, no apps.byteproxy): " +
			"the gateway runs with no services and no API keys; proxy requests need no key and /manage/* answers loopback clients only. " +
			"Configure it in the byteproxy global option (README, docs/REFERENCE.md)")
	}
	if err := a.provisionScopes(repl); err != nil {
		return ConfigErrorIn(err)
	}
	if a.Timeout == 0 {
		a.Timeout = caddy.Duration(30 * time.Second)
	}
	if a.Retries == nil {
		two := 2
		a.Retries = &two
	}
	if a.RuntimeServices == nil {
		a.RuntimeServices = new(RuntimeServicesConfig)
	}
	if a.RuntimeServices.SyncInterval == 0 {
		a.RuntimeServices.SyncInterval = caddy.Duration(10 * time.Second)
	}
	if a.RuntimeServices.MaxServices == 0 {
		a.RuntimeServices.MaxServices = DefaultMaxServices
	}
	a.opts = BuildOptions{Timeout: time.Duration(a.Timeout), Retries: *a.Retries, StrictTLS: a.StrictTLSOn(), Replacer: repl}
	a.runtOpts = a.opts
	if !a.RuntimeServices.AllowPrivateUpstreams {
		a.runtOpts.Guard = dialGuard(a.addrGuard())
	}

	a.configServices = make(map[string]*Service, len(a.Services))
	for key, cfg := range a.Services {
		if cfg == nil {
			cfg = &ServiceConfig{}
		}
		c := *cfg
		if c.Preset == "" {
			if _, ok := Presets[key]; ok {
				c.Preset = key
			}
		}
		svc, err := BuildService(key, c, "config", a.opts)
		if err != nil {
			return serviceConfigError(key, c, err)
		}
		if other := caseClash(a.configServices, key); other != "" {
			return fmt.Errorf("services: the keys %q and %q differ only in letter case; rename one", min(key, other), max(key, other))
		}
		if svc.HasAuth() && !svc.TokenConfigured() {
			a.logger.Warn("service credential is not set; its requests will answer 401",
				zap.String("service", key), zap.String("env", svc.TokenEnv))
		}
		a.configServices[key] = svc
	}
	a.warnOpenProxy()
	snapshot := make(map[string]*Service, len(a.configServices))
	for k, s := range a.configServices {
		snapshot[k] = s
	}
	a.attachBudgets(snapshot)
	a.services.Store(&snapshot)
	if err := a.joinPeers(); err != nil {
		return err
	}
	if err := a.syncRuntime(ctx); err != nil {
		// Storage trouble must not stop the gateway: config services still work.
		a.logger.Error("loading runtime services", zap.Error(err))
	}
	return nil
}

// Validate refuses the app's settings that are out of range (Provision has
// filled in the defaults). Service configs are checked as Provision
// compiles them, which is where their errors are found.
func (a *App) Validate() error {
	if a.Timeout < 0 {
		return ConfigError(errors.New("must not be negative"), "timeout")
	}
	if r := a.Retries; r != nil && (*r < 0 || *r > 10) {
		return ConfigError(fmt.Errorf("must be between 0 and 10, got %d", *r), "retries")
	}
	if err := a.AuthFailures.Validate(); err != nil {
		return fmt.Errorf("auth_failures: %w", err)
	}
	if rs := a.RuntimeServices; rs != nil && rs.MaxServices < 0 {
		return fmt.Errorf("runtime_services max_services: must be positive, got %d", rs.MaxServices)
	}
	if err := a.ClientRateLimit.Validate(); err != nil {
		return ConfigError(err, "client_rate_limit")
	}
	if err := a.CORS.Validate(); err != nil {
		return err
	}
	if err := a.Pressure.Validate(); err != nil {
		return ConfigErrorIn(err, "pressure")
	}
	return nil
}

// warnOpenProxy says so at startup when /proxy/* needs no key while a
// service of the config carries a credential: anyone who reaches the
// gateway can then call the upstream with it. That is a valid setup on a
// private network, so it is a warning, not an error.
func (a *App) warnOpenProxy() {
	if sc := a.scopes[ScopeProxy]; sc.Required {
		return
	}
	var keys []string
	for key, svc := range a.configServices {
		if svc.HasAuth() && svc.TokenConfigured() {
			keys = append(keys, key)
		}
	}
	if len(keys) == 0 {
		return
	}
	sort.Strings(keys)
	a.logger.Warn("the proxy needs no API key: anyone who can reach this gateway can call these services with their credentials; "+
		"set auth proxy { key ... } in the byteproxy global option, or keep the gateway on a private network",
		zap.Strings("services", keys))
}

func (a *App) provisionScopes(repl *caddy.Replacer) error {
	a.scopes = map[string]*Scope{
		ScopeProxy:      {Name: ScopeProxy},
		ScopeManagement: {Name: ScopeManagement},
	}
	for name, cfg := range a.Auth {
		sc, ok := a.scopes[name]
		if !ok {
			return fmt.Errorf("auth: unknown scope %q (want proxy or management)", name)
		}
		if cfg == nil {
			continue
		}
		var empty []string // key lines that resolved to nothing
		for _, k := range cfg.Keys {
			v := strings.TrimSpace(repl.ReplaceAll(k, ""))
			if v == "" {
				empty = append(empty, k)
				continue
			}
			if utf8.RuneCountInString(v) < MinKeyLength && a.logger != nil {
				// Neither the key nor its length: either is a hint to a guesser.
				a.logger.Warn("an API key is shorter than 16 characters; use a long random key (e.g. openssl rand -hex 32)",
					zap.String("scope", name), zap.Int("key_line", len(sc.Keys)+len(empty)+1))
			}
			sc.Keys = append(sc.Keys, v)
		}
		// Listing a key means a key is wanted: a list that resolves to
		// nothing (an unset variable) fails closed unless `required false`
		// says the scope may run without one.
		sc.Required = len(cfg.Keys) > 0
		if cfg.Required != nil {
			sc.Required = *cfg.Required
		}
		if sc.Required && len(sc.Keys) == 0 {
			return noKeyError(name, cfg.Required != nil, empty)
		}
	}
	return nil
}

// MinKeyLength is the length under which a key is warned about.
const MinKeyLength = 16

// envPlaceholders finds the {env.NAME} placeholders in a key line.
var envPlaceholders = regexp.MustCompile(`\{env\.([^{}]+)\}`)

// noKeyError explains a scope that must have a key and has none: which key
// lines resolved to nothing and why, naming the environment variables. A
// line that resolved to nothing holds only placeholders and blanks, so
// quoting it shows no secret.
func noKeyError(scope string, explicit bool, empty []string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "auth %s: ", scope)
	if explicit {
		b.WriteString("required, but no key is set")
		if len(empty) == 0 {
			b.WriteString(" (no key line)")
		} else {
			b.WriteString(": ")
		}
	}
	for i, line := range empty {
		if i > 0 {
			b.WriteString("; ")
		}
		shown := strings.TrimSpace(line)
		if shown == "" {
			shown = `""`
		}
		fmt.Fprintf(&b, "key %s resolved to an empty value", shown)
		var why []string
		for _, m := range envPlaceholders.FindAllStringSubmatch(line, -1) {
			if v, set := os.LookupEnv(m[1]); !set {
				why = append(why, "environment variable "+m[1]+" is not set")
			} else if strings.TrimSpace(v) == "" {
				why = append(why, "environment variable "+m[1]+" is empty")
			}
		}
		if len(why) > 0 {
			fmt.Fprintf(&b, " (%s)", strings.Join(why, ", "))
		}
	}
	if len(empty) > 1 {
		b.WriteString("; set one of them or write 'required false'")
	} else {
		b.WriteString("; set it or write 'required false'")
	}
	return errors.New(b.String())
}

// Start begins syncing runtime services from shared storage.
func (a *App) Start() error {
	interval := time.Duration(a.RuntimeServices.SyncInterval)
	if interval <= 0 {
		return nil
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-a.stop:
				return
			case <-t.C:
				if err := a.syncRuntime(a.ctx); err != nil {
					a.logger.Warn("syncing runtime services", zap.Error(err))
				}
			}
		}
	}()
	return nil
}

// Stop ends the sync loop.
func (a *App) Stop() error {
	select {
	case <-a.stop:
	default:
		close(a.stop)
	}
	a.wg.Wait()
	return nil
}

// Cleanup releases the upstream connections of this config's services:
// idle ones now, those of requests still in flight when they end; and its
// share of what outlives a config (upstream budgets, metrics, the peer
// set), which lives on in a newer config that has it.
func (a *App) Cleanup() error {
	if m := a.services.Load(); m != nil {
		for _, s := range *m {
			s.Close()
		}
	}
	a.releaseStore()
	a.leavePeers()
	a.metrics.Release()
	return nil
}

// Service returns the service with this key, or nil.
func (a *App) Service(key string) *Service {
	return (*a.services.Load())[key]
}

// AllServices returns the current registry; the map must not be modified.
func (a *App) AllServices() map[string]*Service {
	return *a.services.Load()
}

// ScopeFor returns the provisioned auth scope ("proxy" or "management").
func (a *App) ScopeFor(name string) *Scope { return a.scopes[name] }

// QueryKeyOn reports whether ?api_key= is accepted.
func (a *App) QueryKeyOn() bool { return a.QueryKey == nil || *a.QueryKey }

// LeanPathOn reports whether the proxy's lean HTTP/1.1 path is on.
func (a *App) LeanPathOn() bool { return a.LeanPath == nil || *a.LeanPath }

// StrictTLSOn reports whether upstream certificates are verified.
func (a *App) StrictTLSOn() bool { return a.StrictTLS == nil || *a.StrictTLS }

// Started is when this config was provisioned.
func (a *App) Started() time.Time { return a.started }

// Logger is the app's logger.
func (a *App) Logger() *zap.Logger { return a.logger }

// Context is the Caddy context the app was provisioned with.
func (a *App) Context() caddy.Context { return a.ctx }

// FromContext returns the byteproxy app of this config, loading it (with
// its defaults) if the config does not mention it.
func FromContext(ctx caddy.Context) (*App, error) {
	v, err := ctx.App("byteproxy")
	if err != nil {
		return nil, fmt.Errorf("loading byteproxy app: %w", err)
	}
	return v.(*App), nil
}

// SetStatus publishes a component's state (e.g. "redis") for /status; v
// must marshal to JSON and hold no secret.
func (a *App) SetStatus(component string, v any) {
	a.statusMu.Lock()
	defer a.statusMu.Unlock()
	if a.statuses == nil {
		a.statuses = map[string]any{}
	}
	a.statuses[component] = v
}

// Statuses returns a copy of every component's published state.
func (a *App) Statuses() map[string]any {
	a.statusMu.RLock()
	defer a.statusMu.RUnlock()
	out := make(map[string]any, len(a.statuses))
	for k, v := range a.statuses {
		out[k] = v
	}
	return out
}

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.Validator    = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)
