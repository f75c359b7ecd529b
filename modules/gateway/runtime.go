package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/byteproxy/byteproxy/internal/httpx"
	"github.com/byteproxy/byteproxy/internal/netguard"
)

// Runtime services are stored one record per key under this storage
// prefix, so two instances changing different services never overwrite
// each other, and a change is one atomic write.
const storagePrefix = "byteproxy/services"

// storageTimeout bounds a locked storage change. It is detached from the
// request: a client that hangs up must not leave a change half done.
const storageTimeout = time.Minute

// Registry errors the management API maps to statuses.
var (
	ErrExists        = errors.New("service already exists")
	ErrNotFound      = errors.New("service not found")
	ErrConfigDefined = errors.New("service is defined in the Caddy config")
	// ErrTooManyServices: runtime_services max_services are stored already.
	ErrTooManyServices = errors.New("too many runtime services")
	// ErrKeyCase: another service's key differs from the new one only in
	// letter case (a KeyCaseError says which).
	ErrKeyCase = errors.New("service key differs only in letter case from an existing service")
)

// KeyCaseError names the existing service a new key clashes with.
type KeyCaseError struct{ Existing string }

func (e *KeyCaseError) Error() string {
	return fmt.Sprintf("%v %q", ErrKeyCase, e.Existing)
}

func (e *KeyCaseError) Unwrap() error { return ErrKeyCase }

// caseClash returns the key of a service in m other than key that differs
// from it only in letter case, or "". Keys are exact in /proxy/{key}/, but
// two that differ only in case would share one record on a file system
// that ignores case (macOS, Windows), and are easily confused.
func caseClash(m map[string]*Service, key string) string {
	for k := range m {
		if k != key && strings.EqualFold(k, key) {
			return k
		}
	}
	return ""
}

// Limits on one runtime service, so the management API cannot be used to
// bloat storage or every instance's memory.
const (
	maxNameLen     = 200
	maxMapEntries  = 64
	maxHeaderValue = 8 << 10
)

// storedService is the storage record of a runtime service.
type storedService struct {
	Key     string        `json:"key"`
	Config  ServiceConfig `json:"config"`
	Updated time.Time     `json:"updated"`
}

func storageKey(key string) string { return path.Join(storagePrefix, key+".json") }

// NormalizeRuntime returns cfg as it is stored and as the live service
// reports it, so a stored record and a live service compare equal.
func NormalizeRuntime(key string, cfg ServiceConfig) ServiceConfig {
	cfg = cfg.clone()
	if cfg.Name == "" {
		cfg.Name = key
	}
	if cfg.Auth != nil && cfg.Auth.Type == "" {
		cfg.Auth = nil
	}
	if len(cfg.Headers) == 0 {
		cfg.Headers = nil
	}
	if len(cfg.Versions) == 0 {
		cfg.Versions = nil
	}
	return cfg
}

// BuildRuntime validates a runtime service as the management API would add
// it, with every abuse guard applied (including resolving the upstream
// host), without storing it.
func (a *App) BuildRuntime(ctx context.Context, key string, cfg ServiceConfig) (*Service, error) {
	svc, err := a.ValidateRuntime(key, cfg)
	if err != nil {
		return nil, err
	}
	if !a.allowPrivate() {
		for _, host := range hostsOf(svc) {
			if err := a.addrGuard().CheckResolved(ctx, host); err != nil {
				return nil, privateErr(svc, host, err)
			}
		}
	}
	return svc, nil
}

// ValidateRuntime is BuildRuntime without name resolution: every check
// that needs no network. Services loaded from storage go through it (the
// dial guard still refuses private addresses when they connect), and so
// does the fuzz target.
func (a *App) ValidateRuntime(key string, cfg ServiceConfig) (*Service, error) {
	if cfg.Preset != "" {
		return nil, httpx.Fieldf("preset", "runtime services cannot use presets")
	}
	if err := checkRuntimeFields(cfg); err != nil {
		return nil, err
	}
	if cfg.Auth != nil && cfg.Auth.Token != "" {
		m := envPlaceholder.FindStringSubmatch(cfg.Auth.Token)
		if m == nil {
			return nil, httpx.Fieldf("auth.tokenEnvVar", "a runtime service's token must name an environment variable")
		}
		if !a.TokenEnvAllowed(m[1]) {
			return nil, httpx.Fieldf("auth.tokenEnvVar", "environment variable %q is not allowed by runtime_services token_env", m[1])
		}
	}
	svc, err := BuildService(key, NormalizeRuntime(key, cfg), "runtime", a.runtOpts)
	if err != nil {
		return nil, err
	}
	if !a.allowPrivate() {
		for _, host := range hostsOf(svc) {
			if err := a.addrGuard().CheckHost(host); err != nil {
				return nil, privateErr(svc, host, err)
			}
		}
	}
	return svc, nil
}

// checkRuntimeFields refuses what only a runtime service could abuse:
// placeholders (which could read the environment or files when a value is
// resolved), control characters in header values, and unbounded sizes.
func checkRuntimeFields(cfg ServiceConfig) error {
	if len(cfg.Name) > maxNameLen {
		return httpx.Fieldf("name", "must be at most %d bytes", maxNameLen)
	}
	if hasPlaceholder(cfg.BaseURL) {
		return httpx.Fieldf("baseUrl", "placeholders are not allowed in a runtime service")
	}
	if len(cfg.Versions) > maxMapEntries {
		return httpx.Fieldf("versionedBaseUrls", "at most %d versions", maxMapEntries)
	}
	for v, u := range cfg.Versions {
		if hasPlaceholder(v) || hasPlaceholder(u) {
			return httpx.Fieldf("versionedBaseUrls", "placeholders are not allowed in a runtime service")
		}
	}
	if len(cfg.Headers) > maxMapEntries {
		return httpx.Fieldf("headers", "at most %d headers", maxMapEntries)
	}
	for k, v := range cfg.Headers {
		if hasPlaceholder(k) || hasPlaceholder(v) {
			return httpx.Fieldf("headers", "placeholders are not allowed in a runtime service")
		}
		if len(v) > maxHeaderValue {
			return httpx.Fieldf("headers", "value of %q is longer than %d bytes", k, maxHeaderValue)
		}
		for _, c := range v {
			if c < ' ' && c != '\t' || c == 0x7f {
				return httpx.Fieldf("headers", "value of %q has a control character", k)
			}
		}
	}
	if cfg.Auth != nil && hasPlaceholder(cfg.Auth.Name) {
		return httpx.Fieldf("auth.headerName", "placeholders are not allowed in a runtime service")
	}
	return nil
}

func hasPlaceholder(s string) bool {
	i := strings.IndexByte(s, '{')
	return i >= 0 && strings.IndexByte(s[i:], '}') > 0
}

// hostsOf lists every host a service may connect to.
func hostsOf(s *Service) []string {
	hosts := []string{s.BaseURL.Hostname()}
	for _, u := range s.Versions {
		hosts = append(hosts, u.Hostname())
	}
	return hosts
}

func hostField(s *Service, host string) string {
	if host == s.BaseURL.Hostname() {
		return "baseUrl"
	}
	return "versionedBaseUrls"
}

// privateErr is the validation error of a refused upstream host.
func privateErr(svc *Service, host string, err error) error {
	return httpx.Fieldf(hostField(svc, host), "%v; private upstreams are not allowed (runtime_services allow_private_upstreams)", err)
}

// addrGuard is the address guard of runtime services. Provision creates it
// (reading the host's interface addresses); an app used without Provision
// (unit tests, the fuzz target) creates it on first use.
func (a *App) addrGuard() *netguard.Guard {
	if g := a.guard.Load(); g != nil {
		return g
	}
	a.guard.CompareAndSwap(nil, netguard.New())
	return a.guard.Load()
}

func (a *App) allowPrivate() bool {
	return a.RuntimeServices != nil && a.RuntimeServices.AllowPrivateUpstreams
}

// TokenEnvAllowed reports whether a runtime service may read this
// environment variable as its token.
func (a *App) TokenEnvAllowed(name string) bool {
	if a.RuntimeServices == nil {
		return false
	}
	for _, pat := range a.RuntimeServices.TokenEnv {
		if ok, _ := path.Match(pat, name); ok {
			return true
		}
	}
	return false
}

// IsConfigService reports whether key is defined in the Caddy config (so
// the management API may not change it).
func (a *App) IsConfigService(key string) bool {
	_, ok := a.configServices[key]
	return ok
}

// PutRuntime stores a runtime service durably, then makes it live. With
// create, an existing service with the key is an ErrExists; without, the
// service must exist as a runtime service and is replaced. When it returns
// nil the record is on stable storage (written, fsynced, renamed into
// place, directory fsynced) and every config of this process serves it.
func (a *App) PutRuntime(ctx context.Context, key string, cfg ServiceConfig, create bool) (*Service, error) {
	cfg = NormalizeRuntime(key, cfg)
	svc, err := a.BuildRuntime(ctx, key, cfg)
	if err != nil {
		return nil, err
	}
	if err := a.putRecord(key, cfg, svc, create); err != nil {
		return nil, err
	}
	a.notifyPeers(key)
	a.logger.Info("runtime service stored", zap.String("service", key), zap.Bool("created", create))
	return svc, nil
}

func (a *App) putRecord(key string, cfg ServiceConfig, svc *Service, create bool) error {
	a.writeMu.Lock()
	defer a.writeMu.Unlock()
	if _, ok := a.configServices[key]; ok {
		if create {
			return ErrExists
		}
		return ErrConfigDefined
	}
	return a.locked(key, func(ctx context.Context) error {
		exists := a.storage.Exists(ctx, storageKey(key))
		if create && exists && !a.readable(ctx, key) {
			exists = false // a damaged record (say a torn copy) is replaced
		}
		if create && exists {
			return ErrExists
		}
		if !create && !exists {
			return ErrNotFound
		}
		if create {
			if other := caseClash(a.AllServices(), key); other != "" {
				return &KeyCaseError{Existing: other}
			}
			if err := a.roomForOneMore(ctx); err != nil {
				return err
			}
		}
		rec, err := json.Marshal(storedService{Key: key, Config: cfg, Updated: time.Now().UTC()})
		if err != nil {
			return err
		}
		if err := a.storage.Store(ctx, storageKey(key), rec); err != nil {
			return fmt.Errorf("storing service: %w", err)
		}
		if err := a.syncDir(key); err != nil {
			return fmt.Errorf("storing service: %w", err)
		}
		a.swap(func(m map[string]*Service) { m[key] = svc })
		a.setRecord(key, string(rec))
		return nil
	})
}

// setRecord remembers the record a live runtime service was built from.
// Callers hold writeMu.
func (a *App) setRecord(key, rec string) {
	if a.records == nil {
		a.records = map[string]string{}
	}
	a.records[key] = rec
}

// roomForOneMore refuses a new runtime service when max_services records
// are stored. It counts the shared storage, not this instance's registry,
// so a cluster enforces one limit; instances adding services at the same
// moment may overshoot it by one each. Callers hold writeMu.
func (a *App) roomForOneMore(ctx context.Context) error {
	limit := a.MaxRuntimeServices()
	keys, err := a.storage.List(ctx, storagePrefix, false)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("counting runtime services: %w", err)
	}
	n := 0
	for _, sk := range keys {
		if _, ok := recordKey(sk); ok {
			n++
		}
	}
	if n >= limit {
		return fmt.Errorf("%w: %d are stored, runtime_services max_services is %d", ErrTooManyServices, n, limit)
	}
	return nil
}

// MaxRuntimeServices is the most runtime services that may be stored
// (runtime_services max_services).
func (a *App) MaxRuntimeServices() int {
	if a.RuntimeServices == nil || a.RuntimeServices.MaxServices <= 0 {
		return DefaultMaxServices
	}
	return a.RuntimeServices.MaxServices
}

// readable reports whether the stored record of key decodes.
func (a *App) readable(ctx context.Context, key string) bool {
	raw, err := a.storage.Load(ctx, storageKey(key))
	if err != nil {
		return !errors.Is(err, fs.ErrNotExist)
	}
	var rec storedService
	return json.Unmarshal(raw, &rec) == nil && rec.Key == key
}

// DeleteRuntime removes a runtime service durably.
func (a *App) DeleteRuntime(ctx context.Context, key string) error {
	err := a.deleteRecord(key)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	a.notifyPeers(key)
	if err == nil {
		a.logger.Info("runtime service deleted", zap.String("service", key))
	}
	return err
}

func (a *App) deleteRecord(key string) error {
	a.writeMu.Lock()
	defer a.writeMu.Unlock()
	if _, ok := a.configServices[key]; ok {
		return ErrConfigDefined
	}
	return a.locked(key, func(ctx context.Context) error {
		if !a.storage.Exists(ctx, storageKey(key)) {
			a.swap(func(m map[string]*Service) { delete(m, key) })
			delete(a.records, key)
			return ErrNotFound
		}
		if err := a.storage.Delete(ctx, storageKey(key)); err != nil {
			return fmt.Errorf("deleting service: %w", err)
		}
		if err := a.syncDir(key); err != nil {
			return fmt.Errorf("deleting service: %w", err)
		}
		a.swap(func(m map[string]*Service) { delete(m, key) })
		delete(a.records, key)
		return nil
	})
}

// locked runs change holding the storage lock of one key, which excludes
// every other instance sharing the storage from changing the same key.
func (a *App) locked(key string, change func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), storageTimeout)
	defer cancel()
	lockName := "byteproxy-service-" + key
	if err := a.storage.Lock(ctx, lockName); err != nil {
		return fmt.Errorf("locking storage: %w", err)
	}
	defer func() {
		if err := a.storage.Unlock(context.Background(), lockName); err != nil {
			a.logger.Error("unlocking storage", zap.String("service", key), zap.Error(err))
		}
	}()
	return change(ctx)
}

// syncDir makes a rename or removal in the file storage durable. certmagic's
// FileStorage writes a temporary file, fsyncs it and renames it over the
// record, but does not fsync the directory, so without this a power loss
// right after a 2xx could forget the new name.
func (a *App) syncDir(key string) error {
	fsto, ok := a.storage.(*certmagic.FileStorage)
	if !ok {
		return nil
	}
	root := filepath.Clean(fsto.Path)
	dir := filepath.Dir(fsto.Filename(storageKey(key)))
	for {
		if err := fsyncDir(dir); err != nil {
			return err
		}
		parent := filepath.Dir(dir)
		if dir == root || parent == dir || !strings.HasPrefix(parent, root) {
			return nil
		}
		dir = parent
	}
}

func fsyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// swap publishes a modified copy of the registry and releases the idle
// connections of any service it replaced. Callers hold writeMu.
func (a *App) swap(change func(map[string]*Service)) {
	old := *a.services.Load()
	next := make(map[string]*Service, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	change(next)
	a.attachBudgets(next)
	a.services.Store(&next)
	closeReplaced(old, next)
}

// closeReplaced closes the connections of services that left the
// registry; requests in flight on them finish normally.
func closeReplaced(old, next map[string]*Service) {
	for k, s := range old {
		if next[k] != s {
			s.Close()
		}
	}
}

// syncRuntime re-reads every runtime service from storage and publishes
// the result: adds, replacements and removals made by other instances.
// It holds writeMu throughout, so a record read here is never older than a
// change this instance has already answered.
func (a *App) syncRuntime(ctx context.Context) error {
	a.writeMu.Lock()
	defer a.writeMu.Unlock()
	keys, err := a.storage.List(ctx, storagePrefix, false)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	old := *a.services.Load()
	next := make(map[string]*Service, len(a.configServices)+len(keys))
	records := make(map[string]string, len(keys))
	for k, v := range a.configServices {
		next[k] = v
	}
	for _, sk := range keys {
		key, ok := recordKey(sk)
		if !ok {
			continue // a temporary file of an atomic write, or foreign
		}
		if _, clash := a.configServices[key]; clash {
			continue // the Caddy config wins
		}
		raw, err := a.storage.Load(ctx, sk)
		if err != nil {
			if cur := old[key]; cur != nil && cur.Source == "runtime" && !errors.Is(err, fs.ErrNotExist) {
				next[key] = cur // unreadable for now: keep what we had
				records[key] = a.records[key]
			}
			continue
		}
		if svc := a.fromRecord(key, raw, old[key]); svc != nil {
			next[key] = svc
			records[key] = a.recordText(key, raw)
		}
	}
	a.attachBudgets(next)
	a.services.Store(&next)
	a.records = records
	closeReplaced(old, next)
	return nil
}

// recordText is raw as a string, reusing the copy already held when the
// record did not change. Callers hold writeMu.
func (a *App) recordText(key string, raw []byte) string {
	if prev, ok := a.records[key]; ok && prev == string(raw) {
		return prev
	}
	return string(raw)
}

// refreshKey re-reads one runtime service from storage and publishes it (or
// its removal).
func (a *App) refreshKey(ctx context.Context, key string) error {
	a.writeMu.Lock()
	defer a.writeMu.Unlock()
	if _, ok := a.configServices[key]; ok {
		return nil
	}
	raw, err := a.storage.Load(ctx, storageKey(key))
	if errors.Is(err, fs.ErrNotExist) {
		a.swap(func(m map[string]*Service) { delete(m, key) })
		delete(a.records, key)
		return nil
	}
	if err != nil {
		return err
	}
	svc := a.fromRecord(key, raw, a.Service(key))
	a.swap(func(m map[string]*Service) {
		if svc == nil {
			delete(m, key)
		} else {
			m[key] = svc
		}
	})
	if svc == nil {
		delete(a.records, key)
	} else {
		a.setRecord(key, a.recordText(key, raw))
	}
	return nil
}

// recordKey returns the service key of a storage key, or false for
// anything that is not a service record.
func recordKey(storageKey string) (string, bool) {
	name := path.Base(storageKey)
	key, ok := strings.CutSuffix(name, ".json")
	if !ok || CheckServiceKey(key) != nil {
		return "", false
	}
	return key, true
}

// fromRecord builds the service of a stored record, reusing cur (and its
// warm connection pool) when the record did not change. It returns nil for
// a record that is unreadable or no longer valid under this config's
// rules (say token_env was narrowed), logging it once.
func (a *App) fromRecord(key string, raw []byte, cur *Service) *Service {
	if cur != nil && cur.Source == "runtime" && a.records[key] == string(raw) {
		return cur // the very record cur was built from (BenchmarkSyncRuntime)
	}
	var rec storedService
	if err := json.Unmarshal(raw, &rec); err != nil || rec.Key != key {
		a.warnOnce(key, raw, "ignoring unreadable runtime service record", nil)
		return nil
	}
	cfg := NormalizeRuntime(key, rec.Config)
	if cur != nil && cur.Source == "runtime" && sameConfig(cur.Config, cfg) {
		return cur
	}
	svc, err := a.ValidateRuntime(key, cfg)
	if err != nil {
		a.warnOnce(key, raw, "ignoring invalid runtime service", err)
		return nil
	}
	return svc
}

// sameConfig compares a live runtime service's config with a stored one.
func sameConfig(live, stored ServiceConfig) bool {
	a, _ := json.Marshal(live)
	b, _ := json.Marshal(stored)
	return string(a) == string(b)
}

// warnOnce logs a bad record once per config: a sync every few seconds
// does not repeat the warning; a reload (whose rules may differ) says it
// once more.
func (a *App) warnOnce(key string, raw []byte, msg string, err error) {
	if prev, ok := a.warned.Load(key); ok && prev.(string) == string(raw) {
		return
	}
	a.warned.Store(key, string(raw))
	a.logger.Warn(msg, zap.String("service", key), zap.Error(err))
}

// peerSet is the byteproxy apps alive in this process, kept in appState.
// During a config reload the old and the new config overlap: a change
// answered by one is applied at once to the others instead of after
// sync_interval.
type peerSet struct {
	mu   sync.Mutex
	apps map[*App]struct{}
}

// Destruct lets a peerSet live in a caddy.UsagePool; it holds nothing.
func (*peerSet) Destruct() error { return nil }

// joinPeers registers the app in the process's peer set until Cleanup
// (Provision).
func (a *App) joinPeers() error {
	if a.ctx.Context == nil || a.peers != nil {
		return nil // not provisioned by Caddy (unit tests), or joined
	}
	v, _, err := appState.LoadOrNew(peersKey, func() (caddy.Destructor, error) {
		return &peerSet{apps: map[*App]struct{}{}}, nil
	})
	if err != nil {
		return err
	}
	ps := v.(*peerSet)
	ps.mu.Lock()
	ps.apps[a] = struct{}{}
	ps.mu.Unlock()
	a.peers = ps
	return nil
}

// leavePeers undoes joinPeers (Cleanup).
func (a *App) leavePeers() {
	ps := a.peers // never reset: requests still in flight may read it
	if ps == nil {
		return
	}
	ps.mu.Lock()
	_, in := ps.apps[a]
	delete(ps.apps, a)
	ps.mu.Unlock()
	if in {
		_, _ = appState.Delete(peersKey)
	}
}

// notifyPeers makes the other apps of this process re-read key. Each reads
// storage itself, so the result is right whatever its config.
func (a *App) notifyPeers(key string) {
	ps := a.peers
	if ps == nil {
		return
	}
	ps.mu.Lock()
	others := make([]*App, 0, len(ps.apps))
	for p := range ps.apps {
		if p != a {
			others = append(others, p)
		}
	}
	ps.mu.Unlock()
	for _, p := range others {
		ctx, cancel := context.WithTimeout(context.Background(), storageTimeout)
		if err := p.refreshKey(ctx, key); err != nil {
			a.logger.Warn("refreshing runtime service in another config", zap.String("service", key), zap.Error(err))
		}
		cancel()
	}
}
