package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"path"
	"strings"
	"time"

	"go.uber.org/zap"
)

// Runtime services are stored one per key under this storage prefix, so two
// instances changing different services never overwrite each other.
const storagePrefix = "byteproxy/services"

// Registry errors the management API maps to statuses.
var (
	ErrExists        = errors.New("service already exists")
	ErrNotFound      = errors.New("service not found")
	ErrConfigDefined = errors.New("service is defined in the Caddy config")
)

// storedService is the storage record of a runtime service.
type storedService struct {
	Key     string        `json:"key"`
	Config  ServiceConfig `json:"config"`
	Updated time.Time     `json:"updated"`
}

func storageKey(key string) string { return path.Join(storagePrefix, key+".json") }

// BuildRuntime validates a runtime service as the management API would add
// it, with the abuse guards applied, without storing it.
func (a *App) BuildRuntime(ctx context.Context, key string, cfg ServiceConfig) (*Service, error) {
	if cfg.Preset != "" {
		return nil, fieldErr("preset", "runtime services cannot use presets")
	}
	if cfg.Auth != nil && cfg.Auth.Token != "" {
		m := envPlaceholder.FindStringSubmatch(cfg.Auth.Token)
		if m == nil {
			return nil, fieldErr("auth.tokenEnvVar", "a runtime service's token must name an environment variable")
		}
		if !a.TokenEnvAllowed(m[1]) {
			return nil, fieldErr("auth.tokenEnvVar", "environment variable %q is not allowed by runtime_services token_env", m[1])
		}
	}
	svc, err := BuildService(key, cfg, "runtime", a.runtOpts)
	if err != nil {
		return nil, err
	}
	if !a.RuntimeServices.AllowPrivateUpstreams {
		for _, u := range append(urlsOf(svc), svc.BaseURL.Hostname()) {
			if err := checkHostPublic(ctx, u); err != nil {
				return nil, fieldErr("baseUrl", "%v", err)
			}
		}
	}
	return svc, nil
}

func urlsOf(s *Service) []string {
	var hosts []string
	for _, u := range s.Versions {
		hosts = append(hosts, u.Hostname())
	}
	return hosts
}

// TokenEnvAllowed reports whether a runtime service may read this
// environment variable as its token.
func (a *App) TokenEnvAllowed(name string) bool {
	for _, pat := range a.RuntimeServices.TokenEnv {
		if ok, _ := path.Match(pat, name); ok {
			return true
		}
	}
	return false
}

// PutRuntime stores a runtime service durably, then makes it live. With
// create, an existing service with the key is an ErrExists; without, the
// service must exist as a runtime service and is replaced.
func (a *App) PutRuntime(ctx context.Context, key string, cfg ServiceConfig, create bool) (*Service, error) {
	svc, err := a.BuildRuntime(ctx, key, cfg)
	if err != nil {
		return nil, err
	}
	a.writeMu.Lock()
	defer a.writeMu.Unlock()
	if _, ok := a.configServices[key]; ok {
		if create {
			return nil, ErrExists
		}
		return nil, ErrConfigDefined
	}
	lockName := "byteproxy-service-" + key
	if err := a.storage.Lock(ctx, lockName); err != nil {
		return nil, fmt.Errorf("locking storage: %w", err)
	}
	defer func() { _ = a.storage.Unlock(context.WithoutCancel(ctx), lockName) }()
	exists := a.storage.Exists(ctx, storageKey(key))
	if create && exists {
		return nil, ErrExists
	}
	if !create && !exists {
		return nil, ErrNotFound
	}
	rec, _ := json.Marshal(storedService{Key: key, Config: cfg, Updated: time.Now().UTC()})
	if err := a.storage.Store(ctx, storageKey(key), rec); err != nil {
		return nil, fmt.Errorf("storing service: %w", err)
	}
	a.swap(func(m map[string]*Service) { m[key] = svc })
	a.logger.Info("runtime service stored", zap.String("service", key), zap.Bool("created", create))
	return svc, nil
}

// DeleteRuntime removes a runtime service durably.
func (a *App) DeleteRuntime(ctx context.Context, key string) error {
	a.writeMu.Lock()
	defer a.writeMu.Unlock()
	if _, ok := a.configServices[key]; ok {
		return ErrConfigDefined
	}
	lockName := "byteproxy-service-" + key
	if err := a.storage.Lock(ctx, lockName); err != nil {
		return fmt.Errorf("locking storage: %w", err)
	}
	defer func() { _ = a.storage.Unlock(context.WithoutCancel(ctx), lockName) }()
	if !a.storage.Exists(ctx, storageKey(key)) {
		a.swap(func(m map[string]*Service) { delete(m, key) })
		return ErrNotFound
	}
	if err := a.storage.Delete(ctx, storageKey(key)); err != nil {
		return fmt.Errorf("deleting service: %w", err)
	}
	a.swap(func(m map[string]*Service) { delete(m, key) })
	a.logger.Info("runtime service deleted", zap.String("service", key))
	return nil
}

// swap publishes a modified copy of the registry. Callers hold writeMu.
func (a *App) swap(change func(map[string]*Service)) {
	old := *a.services.Load()
	next := make(map[string]*Service, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	change(next)
	a.services.Store(&next)
}

// syncRuntime re-reads every runtime service from storage and publishes
// the result: adds, replacements and removals made by other instances.
func (a *App) syncRuntime(ctx context.Context) error {
	a.writeMu.Lock()
	defer a.writeMu.Unlock()
	keys, err := a.storage.List(ctx, storagePrefix, false)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	old := *a.services.Load()
	next := make(map[string]*Service, len(a.configServices)+len(keys))
	for k, v := range a.configServices {
		next[k] = v
	}
	for _, sk := range keys {
		raw, err := a.storage.Load(ctx, sk)
		if err != nil {
			continue // deleted between List and Load
		}
		var rec storedService
		if err := json.Unmarshal(raw, &rec); err != nil || storageKey(rec.Key) != sk {
			a.logger.Warn("ignoring unreadable runtime service record", zap.String("storage_key", sk))
			continue
		}
		if _, clash := a.configServices[rec.Key]; clash {
			continue // the Caddy config wins
		}
		if cur, ok := old[rec.Key]; ok && cur.Source == "runtime" && sameConfig(cur.Config, rec.Config) {
			next[rec.Key] = cur // unchanged: keep its warm connection pool
			continue
		}
		svc, err := a.BuildRuntime(ctx, rec.Key, rec.Config)
		if err != nil {
			a.logger.Warn("ignoring invalid runtime service", zap.String("service", rec.Key), zap.Error(err))
			continue
		}
		next[rec.Key] = svc
	}
	a.services.Store(&next)
	return nil
}

// sameConfig compares a live service's effective config with a stored one.
func sameConfig(live, stored ServiceConfig) bool {
	merged := mergePreset(stored)
	if merged.Name == "" {
		merged.Name = live.Name
	}
	a, _ := json.Marshal(live)
	b, _ := json.Marshal(merged)
	return string(a) == string(b)
}

// RefusePrivate is the dial guard for runtime services: it refuses
// loopback, private, link-local, unspecified, CGNAT and metadata addresses,
// so DNS rebinding cannot reach them after validation.
func RefusePrivate(ip net.IP) error {
	addr, ok := netip.AddrFromSlice(ip)
	if !ok {
		return fmt.Errorf("refusing to dial unparsable address")
	}
	if IsPrivate(addr) {
		return fmt.Errorf("refusing to dial private address %s (runtime_services allow_private_upstreams is off)", addr)
	}
	return nil
}

var cgnat = netip.MustParsePrefix("100.64.0.0/10")

// IsPrivate reports addresses a runtime service must not reach.
func IsPrivate(addr netip.Addr) bool {
	addr = addr.Unmap()
	return addr.IsLoopback() || addr.IsPrivate() || addr.IsLinkLocalUnicast() ||
		addr.IsLinkLocalMulticast() || addr.IsUnspecified() || addr.IsMulticast() ||
		cgnat.Contains(addr) || addr == netip.MustParseAddr("fd00:ec2::254")
}

// checkHostPublic resolves host and refuses it if any address is private.
func checkHostPublic(ctx context.Context, host string) error {
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return fmt.Errorf("upstream host %q is loopback; private upstreams are not allowed", host)
	}
	if addr, err := netip.ParseAddr(host); err == nil {
		if IsPrivate(addr) {
			return fmt.Errorf("upstream address %s is private; private upstreams are not allowed", addr)
		}
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		// An unresolvable host is not refused here: the dial guard still
		// applies when it does resolve.
		return nil
	}
	for _, ad := range addrs {
		if IsPrivate(ad) {
			return fmt.Errorf("upstream host %q resolves to private address %s; private upstreams are not allowed", host, ad.Unmap())
		}
	}
	return nil
}
