package gateway

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/byteproxy/byteproxy/internal/budget"
	"github.com/byteproxy/byteproxy/internal/httpx"
)

// Upstream budgets (issue 14, docs/BUDGETS.md): a service with
// upstream_limits on gets an engine of internal/budget that mirrors the
// upstream's limits for the service's credential. The app owns the
// engines and the store they keep their state in; the proxy
// (modules/services) borrows a service's engine through Service.Budget.
//
// Engines and the store live in appState (a caddy.UsagePool), so that a config reload
// forgets nothing (a bucket Discord said is spent stays spent, a held
// request keeps its place): an engine is keyed by the store, the service,
// its credential and its settings, and is acquired when its service is
// published in the registry (attachBudgets) and released when the service
// leaves it (Service.Close). An engine released for the last time is
// closed, which refuses the requests it holds (they are answered 503 with
// a Retry-After, never left hanging).

// Budget is a service's upstream budget as the proxy uses it.
type Budget struct {
	// Engine reserves before a request is sent and settles with the
	// upstream's answer.
	Engine *budget.Engine
	// Credential names the service's token for the engine: a hash of the
	// upstream host and the token, never the token.
	Credential string
	// Kind says whose rules apply (Discord's, GitHub's, any service's).
	Kind budget.Kind
	// MaxWait is the most a request is held (upstream_limits max_wait).
	MaxWait time.Duration
}

// budgetSpec is a service's compiled upstream_limits, before an engine is
// attached to it.
type budgetSpec struct {
	cfg  budget.Config
	cred string
	id   string // the settings, for the pool key
}

// Budget returns the service's upstream budget, or nil when its
// upstream_limits are off (or the service was never published).
func (s *Service) Budget() *Budget { return s.budget }

// pooledEngine is an engine in the pool: closed when released for the
// last time.
type pooledEngine struct{ *budget.Engine }

func (p pooledEngine) Destruct() error {
	p.Close()
	return nil
}

// pooledStore is a budget store in the pool.
type pooledStore struct {
	budget.Store
	close func() error
}

func (p *pooledStore) Destruct() error {
	if p.close != nil {
		return p.close()
	}
	return nil
}

// budgetStore names the store this config's budgets keep their state in
// and says how to open it: the one place that chooses it. With the app's
// redis set, the Redis store of internal/budget (every instance sharing
// that Redis decides against the same state; during an outage each
// decides in memory with its share, and carries back what it saw);
// otherwise the process's in-memory store. Everything else (engines,
// reloads, cleanup) follows from the key.
func (a *App) budgetStore() (key string, open func() (caddy.Destructor, error)) {
	if url := strings.TrimSpace(caddy.NewReplacer().ReplaceAll(a.Redis, "")); url != "" {
		log := a.logger
		if log == nil {
			log = zap.NewNop()
		}
		// The URL may hold a password: the key holds a hash of it.
		sum := sha256.Sum256([]byte(url))
		return "budget-store|redis|" + hex.EncodeToString(sum[:8]), func() (caddy.Destructor, error) {
			s, err := budget.NewRedisStoreURL(url, budget.RedisOptions{Logger: log.Named("budget")})
			if err != nil {
				return nil, fmt.Errorf("redis: %w", redactURLError(err))
			}
			return &pooledStore{Store: s, close: s.Close}, nil
		}
	}
	return "budget-store|memory", func() (caddy.Destructor, error) {
		return &pooledStore{Store: budget.NewMemStore()}, nil
	}
}

// redactURLError keeps a URL parse error from quoting the URL (and a
// password in it).
func redactURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return fmt.Errorf("not a valid URL: %w", ue.Err)
	}
	return err
}

// appBudgets is the app's share of the pool: its store, acquired with
// the first service that has a budget and released at Cleanup.
type appBudgets struct {
	mu       sync.Mutex
	storeKey string
	store    budget.Store
	released bool
}

// attachBudgets gives every service of m with upstream_limits on that has
// no engine yet its engine, before m is published.
func (a *App) attachBudgets(m map[string]*Service) {
	for _, s := range m {
		if s.budgetSpec == nil || s.budget != nil {
			continue
		}
		if err := a.attachBudget(s); err != nil && a.logger != nil {
			// Only a store that cannot be opened fails here; the service
			// then forwards without a budget, and says so.
			a.logger.Error("upstream budget unavailable; the service forwards without it",
				zap.String("service", s.Key), zap.Error(err))
		}
	}
}

func (a *App) attachBudget(s *Service) error {
	store, storeKey, err := a.acquireStore()
	if err != nil {
		return err
	}
	spec := s.budgetSpec
	key := "budget-engine|" + storeKey + "|" + s.Key + "|" + spec.cred + "|" + spec.id
	rec, service, log := a.Metrics(), s.Key, a.logger
	if log == nil {
		log = zap.NewNop() // an app used without Provision (unit tests)
	}
	v, _, err := appState.LoadOrNew(key, func() (caddy.Destructor, error) {
		cfg := spec.cfg
		cfg.Logger = log.With(zap.String("service", service))
		cfg.OnBanTrip = func() { rec.BudgetBanTrip(service) }
		return pooledEngine{budget.New(cfg, store)}, nil
	})
	if err != nil {
		return err
	}
	s.budget = &Budget{Engine: v.(pooledEngine).Engine, Credential: spec.cred, Kind: spec.cfg.Kind, MaxWait: spec.cfg.MaxWait}
	s.budgetKey = key
	return nil
}

// acquireStore returns the app's store, acquiring it on first use.
func (a *App) acquireStore() (budget.Store, string, error) {
	b := &a.budgetState
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.store != nil {
		return b.store, b.storeKey, nil
	}
	if b.released {
		return nil, "", fmt.Errorf("the configuration was unloaded")
	}
	key, open := a.budgetStore()
	v, _, err := appState.LoadOrNew(key, open)
	if err != nil {
		return nil, "", err
	}
	b.store, b.storeKey = v.(*pooledStore).Store, key
	return b.store, key, nil
}

// releaseStore gives the app's store back to the pool (Cleanup, after
// every service released its engine).
func (a *App) releaseStore() {
	b := &a.budgetState
	b.mu.Lock()
	defer b.mu.Unlock()
	b.released = true
	if b.store != nil {
		_, _ = appState.Delete(b.storeKey)
		b.store = nil
	}
}

// releaseBudget gives the service's engine back to the pool, once.
func (s *Service) releaseBudget() {
	s.budgetOnce.Do(func() {
		if s.budgetKey != "" {
			_, _ = appState.Delete(s.budgetKey)
		}
	})
}

// upstreamLimitsOn reports whether a merged service config has a budget:
// set and not disabled, or unset on a preset.
func upstreamLimitsOn(cfg ServiceConfig) bool {
	if l := cfg.UpstreamLimits; l != nil {
		return !l.Disabled
	}
	return cfg.Preset == "discord" || cfg.Preset == "github"
}

// Bounds of the settings, so that no value is absurd or overflows.
const (
	maxBudgetWait   = time.Hour
	maxBudgetSlack  = 10 * time.Second
	maxBudgetWindow = time.Hour
	maxBudgetLock   = 24 * time.Hour
	maxBudgetCount  = 1_000_000_000
	maxGlobalLimit  = 100_000 // the engine keeps a time per request in the window
	maxBudgetQueue  = 1_000_000
	maxBudgetWeight = 1000
	maxWeights      = 10_000
)

// compileBudget compiles the service's upstream_limits (after its base URL
// and credential): the engine's settings from the defaults of the
// service's kind and what the config sets.
func (s *Service) compileBudget() error {
	cfg := s.Config
	if !upstreamLimitsOn(cfg) {
		return nil
	}
	var c budget.Config
	switch cfg.Preset {
	case "discord":
		c = budget.DiscordConfig()
	case "github":
		c = budget.GitHubConfig()
	default:
		c = budget.GenericConfig()
	}
	if l := cfg.UpstreamLimits; l != nil {
		if err := l.apply(&c, cfg.Preset); err != nil {
			return err
		}
	}
	s.budgetSpec = &budgetSpec{cfg: c, cred: budget.CredentialID(s.BaseURL.Host, s.token), id: fmt.Sprintf("%+v", c)}
	return nil
}

// apply sets what l sets on c, a kind's defaults, and refuses values that
// cannot be enforced or that do not apply to the service (preset is the
// service's: "discord", "github" or "").
func (l *UpstreamLimits) apply(c *budget.Config, preset string) error {
	dur := func(field string, d *caddy.Duration, limit time.Duration, dst *time.Duration) error {
		if d == nil {
			return nil
		}
		if *d < 0 || time.Duration(*d) > limit {
			return budgetErr(field, "must be between 0 and %s, got %s", limit, time.Duration(*d))
		}
		*dst = time.Duration(*d)
		return nil
	}
	if err := dur("maxWait", l.MaxWait, maxBudgetWait, &c.MaxWait); err != nil {
		return err
	}
	if err := dur("resetSlack", l.ResetSlack, maxBudgetSlack, &c.ResetSlack); err != nil {
		return err
	}
	if l.GlobalLimit != 0 || l.GlobalWindow != 0 {
		if preset != "discord" {
			return budgetErr("globalLimit", "applies to services built from the discord preset only")
		}
		if l.GlobalLimit < 0 || l.GlobalLimit > maxGlobalLimit {
			return budgetErr("globalLimit", "must be between 1 and %d, got %d", maxGlobalLimit, l.GlobalLimit)
		}
		if l.GlobalLimit > 0 {
			c.GlobalLimit = l.GlobalLimit
		}
		if l.GlobalWindow < 0 || time.Duration(l.GlobalWindow) > maxBudgetWindow {
			return budgetErr("globalWindow", "must be between 0 and %s, got %s", maxBudgetWindow, time.Duration(l.GlobalWindow))
		}
		if l.GlobalWindow > 0 {
			c.GlobalWindow = time.Duration(l.GlobalWindow)
		}
	}
	if l.MutationSpacing != nil && preset != "github" {
		return budgetErr("mutationSpacing", "applies to services built from the github preset only")
	}
	if err := dur("mutationSpacing", l.MutationSpacing, time.Minute, &c.MutationSpacing); err != nil {
		return err
	}
	if n := l.MaxInFlight; n != nil {
		if *n < 0 || *n > maxBudgetCount {
			return budgetErr("maxInFlight", "must be between 0 and %d, got %d", maxBudgetCount, *n)
		}
		c.MaxInFlight = *n
	}
	if n := l.BanThreshold; n != nil {
		if *n < 0 || *n > maxBudgetCount {
			return budgetErr("banThreshold", "must be between 0 and %d, got %d", maxBudgetCount, *n)
		}
		c.BanThreshold = *n
	}
	if l.BanWindow != 0 {
		if l.BanWindow < 0 || time.Duration(l.BanWindow) > 24*time.Hour {
			return budgetErr("banWindow", "must be between 1s and 24h, got %s", time.Duration(l.BanWindow))
		}
		c.BanWindow = time.Duration(l.BanWindow)
	}
	if err := dur("unauthorizedLock", l.UnauthorizedLock, maxBudgetLock, &c.UnauthorizedLock); err != nil {
		return err
	}
	if l.MaxQueue != 0 {
		if l.MaxQueue < 0 || l.MaxQueue > maxBudgetQueue {
			return budgetErr("maxQueue", "must be between 1 and %d, got %d", maxBudgetQueue, l.MaxQueue)
		}
		c.MaxQueue = l.MaxQueue
	}
	if err := l.applyWeights(c); err != nil {
		return err
	}
	return l.applyHeaders(c, preset)
}

func (l *UpstreamLimits) applyWeights(c *budget.Config) error {
	if len(l.Weights) == 0 {
		return nil
	}
	if len(l.Weights) > maxWeights {
		return budgetErr("weights", "at most %d consumers", maxWeights)
	}
	c.Weights = make(map[string]float64, len(l.Weights))
	for who, w := range l.Weights {
		if strings.TrimSpace(who) == "" {
			return budgetErr("weights", "a consumer (an API key id such as key:53e07d8c8ec1, or a client IP) is required")
		}
		if math.IsNaN(w) || w <= 0 || w > maxBudgetWeight {
			return budgetErr("weights", "the weight of %q must be above 0 and at most %d, got %v", who, maxBudgetWeight, w)
		}
		c.Weights[who] = w
	}
	return nil
}

func (l *UpstreamLimits) applyHeaders(c *budget.Config, preset string) error {
	if (l.Headers != "" || l.Reset != "") && preset != "" {
		return budgetErr("headers", "the %s preset reads %s's own headers; headers and reset apply to other services", preset, preset)
	}
	switch l.Headers {
	case "":
	case "ietf":
		c.Family = budget.FamilyIETF
	case "x-ratelimit":
		c.Family, c.ResetEpoch = budget.FamilyXRateLimit, true
	default:
		return budgetErr("headers", "unknown header family %q (want ietf or x-ratelimit)", l.Headers)
	}
	switch l.Reset {
	case "":
	case "epoch", "delta":
		if l.Headers != "x-ratelimit" {
			return budgetErr("reset", "applies to headers x-ratelimit only")
		}
		c.ResetEpoch = l.Reset == "epoch"
	default:
		return budgetErr("reset", "want epoch or delta, got %q", l.Reset)
	}
	return nil
}

// budgetErr is a validation error of an upstream_limits setting; field is
// the setting's management API name (upstreamLimits.maxWait).
func budgetErr(field, format string, args ...any) error {
	return httpx.Fieldf("upstreamLimits."+field, format, args...)
}

// clone returns a deep copy.
func (l *UpstreamLimits) clone() *UpstreamLimits {
	c := *l
	if l.Weights != nil {
		c.Weights = make(map[string]float64, len(l.Weights))
		for k, v := range l.Weights {
			c.Weights[k] = v
		}
	}
	return &c
}
