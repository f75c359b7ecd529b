// Package gateway is the byteproxy Caddy app (apps.byteproxy): the
// gateway's settings, the service registry (config-defined and runtime
// services), persistence of runtime services in Caddy storage, and the
// state that must outlive a config reload. Handlers borrow it through
// ctx.App("byteproxy").
package gateway

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
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

	// Default upstream timeout for every service. Default 30s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// Default retries of idempotent requests that failed to connect.
	// Default 2.
	Retries *int `json:"retries,omitempty"`

	// Verify upstream TLS certificates. Default true.
	StrictTLS *bool `json:"strict_tls,omitempty"`

	// Send bodiless GET, HEAD and OPTIONS requests to plain-http
	// upstreams through the gateway's lean HTTP/1.1 client (about half the
	// CPU per request of Go's http.Transport; same guarantees, see
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
	// in Redis and are exact across every instance sharing it.
	Redis string `json:"redis,omitempty"`

	// Rules for services added through the management API.
	RuntimeServices *RuntimeServicesConfig `json:"runtime_services,omitempty"`

	// URL of a release feed that /version/check compares the running
	// version with. Without it, /version/check reports that no check is
	// configured; the check never blocks startup.
	UpdateCheck string `json:"update_check,omitempty"`

	ctx      caddy.Context
	logger   *zap.Logger
	started  time.Time
	storage  certmagic.Storage
	scopes   map[string]*Scope
	opts     BuildOptions
	runtOpts BuildOptions

	configServices map[string]*Service
	services       atomic.Pointer[map[string]*Service]
	writeMu        sync.Mutex // serializes registry writers

	metrics *Metrics

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

	if err := a.provisionScopes(repl); err != nil {
		return err
	}
	if a.Timeout == 0 {
		a.Timeout = caddy.Duration(30 * time.Second)
	}
	if a.Timeout < 0 {
		return errors.New("timeout: must not be negative")
	}
	if a.Retries == nil {
		two := 2
		a.Retries = &two
	}
	if *a.Retries < 0 || *a.Retries > 10 {
		return fmt.Errorf("retries: must be between 0 and 10, got %d", *a.Retries)
	}
	if a.RuntimeServices == nil {
		a.RuntimeServices = new(RuntimeServicesConfig)
	}
	if a.RuntimeServices.SyncInterval == 0 {
		a.RuntimeServices.SyncInterval = caddy.Duration(10 * time.Second)
	}
	if err := a.ClientRateLimit.Validate(); err != nil {
		return fmt.Errorf("client_rate_limit: %v", err)
	}
	a.opts = BuildOptions{Timeout: time.Duration(a.Timeout), Retries: *a.Retries, StrictTLS: a.StrictTLSOn(), Replacer: repl}
	a.runtOpts = a.opts
	if !a.RuntimeServices.AllowPrivateUpstreams {
		a.runtOpts.Guard = RefusePrivate
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
			return fmt.Errorf("service %s: %v", key, err)
		}
		if svc.HasAuth() && !svc.TokenConfigured() {
			a.logger.Warn("service credential is not set; its requests will answer 401",
				zap.String("service", key), zap.String("env", svc.TokenEnv))
		}
		a.configServices[key] = svc
	}
	snapshot := make(map[string]*Service, len(a.configServices))
	for k, s := range a.configServices {
		snapshot[k] = s
	}
	a.services.Store(&snapshot)
	if err := a.syncRuntime(ctx); err != nil {
		// Storage trouble must not stop the gateway: config services still work.
		a.logger.Error("loading runtime services", zap.Error(err))
	}
	return nil
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
		for _, k := range cfg.Keys {
			if v := strings.TrimSpace(repl.ReplaceAll(k, "")); v != "" {
				sc.Keys = append(sc.Keys, v)
			}
		}
		sc.Required = len(sc.Keys) > 0
		if cfg.Required != nil {
			sc.Required = *cfg.Required
		}
		if sc.Required && len(sc.Keys) == 0 {
			return fmt.Errorf("auth %s: required, but no key is set (every key is empty); set a key or 'required false'", name)
		}
	}
	return nil
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
// idle ones now, those of requests still in flight when they end.
func (a *App) Cleanup() error {
	if m := a.services.Load(); m != nil {
		for _, s := range *m {
			s.Close()
		}
	}
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
		return nil, fmt.Errorf("loading byteproxy app: %v", err)
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
	_ caddy.CleanerUpper = (*App)(nil)
)
