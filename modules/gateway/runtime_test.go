package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/byteproxy/byteproxy/internal/httpx"
	"github.com/byteproxy/byteproxy/internal/netguard"
)

// TestDialGuardNeverConnects shows that a runtime service's transport
// never connects to a refused address, whatever name or spelling led there
// (a name resolving to loopback, a literal, a mapped or non-canonical
// spelling): this is what defeats DNS rebinding after validation. The same
// service without the guard (allow_private_upstreams) does connect.
func TestDialGuardNeverConnects(t *testing.T) {
	t.Parallel()
	var accepted atomic.Int32
	upstream := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	upstream.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			accepted.Add(1)
		}
	}
	upstream.Start()
	defer upstream.Close()
	_, port, _ := net.SplitHostPort(upstream.Listener.Addr().String())
	opts := BuildOptions{Timeout: 2 * time.Second, Guard: dialGuard(netguard.New())}
	for _, host := range []string{"127.0.0.1", "localhost", "[::ffff:127.0.0.1]", "2130706433", "127.1"} {
		base := "http://" + host + ":" + port + "/"
		guarded, err := BuildService("g", ServiceConfig{BaseURL: base}, "runtime", opts)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := (&http.Client{Transport: guarded.Transport}).Get(base)
		if err == nil {
			resp.Body.Close()
			t.Errorf("%s: the guarded transport connected", host)
			continue
		}
		// A name the resolver does not know never reaches the dial; every
		// other spelling must be refused by the guard, naming the setting.
		if !errors.Is(err, netguard.ErrRefused) && !isNotFound(err) {
			t.Errorf("%s: %v, want a refusal", host, err)
		}
		if errors.Is(err, netguard.ErrRefused) && !strings.Contains(err.Error(), "allow_private_upstreams") {
			t.Errorf("%s: %v does not name the setting", host, err)
		}
		// The proxy's lean path dials with the Transport's DialContext.
		if c, err := guarded.Transport.DialContext(context.Background(), "tcp", net.JoinHostPort(strings.Trim(host, "[]"), port)); err == nil {
			c.Close()
			t.Errorf("%s: DialContext connected", host)
		} else if !errors.Is(err, netguard.ErrRefused) && !isNotFound(err) {
			t.Errorf("%s: DialContext: %v, want a refusal", host, err)
		}
	}
	if n := accepted.Load(); n != 0 {
		t.Fatalf("the upstream accepted %d connections from guarded services", n)
	}
	open, err := BuildService("o", ServiceConfig{BaseURL: upstream.URL}, "config", BuildOptions{Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := (&http.Client{Transport: open.Transport}).Get(upstream.URL)
	if err != nil {
		t.Fatalf("unguarded dial: %v", err)
	}
	resp.Body.Close()
	if accepted.Load() != 1 {
		t.Fatalf("unguarded: %d connections", accepted.Load())
	}
}

func isNotFound(err error) bool {
	var dnsErr *net.DNSError
	return errors.As(err, &dnsErr) && dnsErr.IsNotFound
}

func TestValidateRuntimeGuards(t *testing.T) {
	t.Parallel()
	app := &App{RuntimeServices: &RuntimeServicesConfig{TokenEnv: []string{"CUSTOM_*"}}}
	ok := ServiceConfig{BaseURL: "https://api.example.com/", Auth: &ServiceAuth{Type: "bearer", Token: "{env.CUSTOM_TOKEN}"}}
	if _, err := app.ValidateRuntime("ok", ok); err != nil {
		t.Fatal(err)
	}
	bad := map[string]ServiceConfig{
		"auth.tokenEnvVar":  {BaseURL: "https://a.example/", Auth: &ServiceAuth{Type: "bearer", Token: "{env.MANAGEMENT_API_KEY}"}},
		"auth.tokenEnvVar ": {BaseURL: "https://a.example/", Auth: &ServiceAuth{Type: "bearer", Token: "literal-token"}},
		"preset":            {Preset: "github"},
		"baseUrl":           {BaseURL: "http://192.168.0.1/"},
		"headers":           {BaseURL: "https://a.example/", Headers: map[string]string{"X": "{env.HOME}"}},
		"auth.headerName":   {BaseURL: "https://a.example/", Auth: &ServiceAuth{Type: "header", Name: "{env.X}"}},
		"versionedBaseUrls": {BaseURL: "https://a.example/", Versions: map[string]string{"v1": "http://[::1]/"}},
	}
	for want, cfg := range bad {
		_, err := app.ValidateRuntime("k", cfg)
		fe, isField := err.(*httpx.FieldError)
		if !isField || fe.Field != strings.TrimSpace(want) {
			t.Errorf("%s: got %v", want, err)
		}
	}
	// Every spelling of a refused address, and the host's own addresses
	// (this machine's interfaces), at validation.
	refused := []string{
		"http://2130706433/", "http://0x7f000001/", "http://127.1/", "http://0177.0.0.1/", "http://[::127.0.0.1]/",
		"http://[::ffff:127.0.0.1]/", "http://192.0.2.1/", "http://198.51.100.1/", "http://203.0.113.1/",
		"http://localhost./", "http://[fe80::1%25eth0]/",
	}
	own, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range own {
		if p, err := netip.ParsePrefix(a.String()); err == nil && !p.Addr().Is6() {
			refused = append(refused, "http://"+p.Addr().String()+":8080/")
		}
	}
	for _, base := range refused {
		for field, cfg := range map[string]ServiceConfig{
			"baseUrl":           {BaseURL: base},
			"versionedBaseUrls": {BaseURL: "https://a.example/", Versions: map[string]string{"v1": base}},
		} {
			_, err := app.BuildRuntime(context.Background(), "k", cfg)
			fe, isField := err.(*httpx.FieldError)
			if !isField || fe.Field != field || !strings.Contains(fe.Msg, "allow_private_upstreams") {
				t.Errorf("%s in %s: got %v", base, field, err)
			}
		}
	}
	allow := &App{RuntimeServices: &RuntimeServicesConfig{AllowPrivateUpstreams: true}}
	if _, err := allow.ValidateRuntime("k", ServiceConfig{BaseURL: "http://127.0.0.1:1/"}); err != nil {
		t.Fatalf("allow_private_upstreams: %v", err)
	}
}

func TestRecordKeyAndNormalize(t *testing.T) {
	t.Parallel()
	for sk, want := range map[string]string{
		"byteproxy/services/abc.json": "abc", "byteproxy/services/123456789": "", "byteproxy/services/Bad.json": "Bad", "byteproxy/services/a..b.json": "", "byteproxy/services/...json": "",
		"byteproxy/services/Services.json": "", "byteproxy/services/a b.json": "",
		"byteproxy/services/.json": "", "byteproxy/services/a-b_c.json": "a-b_c",
	} {
		got, ok := recordKey(sk)
		if got != want || ok != (want != "") {
			t.Errorf("%s: %q %v", sk, got, ok)
		}
	}
	app := &App{RuntimeServices: &RuntimeServicesConfig{}}
	cfg := ServiceConfig{BaseURL: "https://a.example/", Auth: &ServiceAuth{}, Headers: map[string]string{}}
	svc, err := app.ValidateRuntime("k", cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !sameConfig(svc.Config, NormalizeRuntime("k", cfg)) {
		t.Fatalf("live %+v differs from stored %+v", svc.Config, NormalizeRuntime("k", cfg))
	}
	if svc.Config.Name != "k" || svc.Config.Auth != nil {
		t.Fatalf("normalized %+v", svc.Config)
	}
}

// TestAuthHeaderThatCannotCarryACredential: a credential header the HTTP
// client drops or a hop consumes (Host, Content-Length, hop-by-hop) is
// refused when the service is built, for runtime and config services.
func TestAuthHeaderThatCannotCarryACredential(t *testing.T) {
	t.Parallel()
	app := &App{RuntimeServices: &RuntimeServicesConfig{TokenEnv: []string{"CUSTOM_*"}}}
	for _, name := range []string{"Host", "host", "Content-Length", "Transfer-Encoding", "Connection", "Keep-Alive",
		"Proxy-Connection", "TE", "Trailer", "Upgrade", "Proxy-Authorization", "Proxy-Authenticate", "Expect"} {
		cfg := ServiceConfig{BaseURL: "https://api.example.com/", Auth: &ServiceAuth{Type: "header", Name: name, Token: "{env.CUSTOM_TOKEN}"}}
		_, err := app.ValidateRuntime("k", cfg)
		fe, isField := err.(*httpx.FieldError)
		if !isField || fe.Field != "auth.headerName" || !strings.Contains(fe.Msg, "cannot carry a credential") {
			t.Errorf("runtime %s: %v", name, err)
		}
		if _, err := BuildService("k", cfg, "config", BuildOptions{}); err == nil {
			t.Errorf("config %s: accepted", name)
		}
	}
	for _, name := range []string{"X-Api-Key", "Authorization", "PRIVATE-TOKEN", "X-Auth-Token"} {
		cfg := ServiceConfig{BaseURL: "https://api.example.com/", Auth: &ServiceAuth{Type: "header", Name: name, Token: "{env.CUSTOM_TOKEN}"}}
		if _, err := app.ValidateRuntime("k", cfg); err != nil {
			t.Errorf("%s refused: %v", name, err)
		}
	}
}

// TestSyncReusesUnchangedRecords: a sync keeps the live service of a record
// that did not change (no decoding, its warm connection pool kept) and
// rebuilds one another instance rewrote.
func TestSyncReusesUnchangedRecords(t *testing.T) {
	t.Parallel()
	a := &App{
		RuntimeServices: &RuntimeServicesConfig{AllowPrivateUpstreams: true},
		logger:          zap.NewNop(),
		storage:         &certmagic.FileStorage{Path: t.TempDir()},
		configServices:  map[string]*Service{},
	}
	empty := map[string]*Service{}
	a.services.Store(&empty)
	ctx := context.Background()
	for _, k := range []string{"a", "b"} {
		if _, err := a.PutRuntime(ctx, k, ServiceConfig{BaseURL: "https://" + k + ".example.com/"}, true); err != nil {
			t.Fatal(err)
		}
	}
	before := a.AllServices()
	if err := a.syncRuntime(ctx); err != nil {
		t.Fatal(err)
	}
	after := a.AllServices()
	if after["a"] != before["a"] || after["b"] != before["b"] {
		t.Fatal("unchanged records were rebuilt")
	}
	// Another instance replaces b in the shared storage.
	rec, _ := json.Marshal(storedService{Key: "b", Config: NormalizeRuntime("b", ServiceConfig{BaseURL: "https://b2.example.com/"})})
	if err := a.storage.Store(ctx, storageKey("b"), rec); err != nil {
		t.Fatal(err)
	}
	if err := a.syncRuntime(ctx); err != nil {
		t.Fatal(err)
	}
	now := a.AllServices()
	if now["a"] != before["a"] {
		t.Error("a was rebuilt")
	}
	if now["b"] == before["b"] || now["b"].BaseURL.Host != "b2.example.com" {
		t.Errorf("b not updated: %v", now["b"].BaseURL)
	}
	// Deleted by another instance: gone at the next sync.
	if err := a.storage.Delete(ctx, storageKey("a")); err != nil {
		t.Fatal(err)
	}
	if err := a.syncRuntime(ctx); err != nil {
		t.Fatal(err)
	}
	if a.Service("a") != nil || len(a.records) != 1 {
		t.Errorf("a still there: %v, records %d", a.Service("a"), len(a.records))
	}
}

// TestMaxServices: the limit counts the stored runtime records, refuses
// one more with ErrTooManyServices, and frees a place on delete.
func TestMaxServices(t *testing.T) {
	t.Parallel()
	a := &App{
		RuntimeServices: &RuntimeServicesConfig{AllowPrivateUpstreams: true, MaxServices: 2},
		logger:          zap.NewNop(),
		storage:         &certmagic.FileStorage{Path: t.TempDir()},
		configServices:  map[string]*Service{},
	}
	empty := map[string]*Service{}
	a.services.Store(&empty)
	ctx := context.Background()
	cfg := ServiceConfig{BaseURL: "https://api.example.com/"}
	for _, k := range []string{"a", "b"} {
		if _, err := a.PutRuntime(ctx, k, cfg, true); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.PutRuntime(ctx, "c", cfg, true); !errors.Is(err, ErrTooManyServices) {
		t.Fatalf("third service: %v", err)
	}
	if _, err := a.PutRuntime(ctx, "b", ServiceConfig{BaseURL: "https://b.example.com/"}, false); err != nil {
		t.Fatalf("replacing at the limit: %v", err)
	}
	if err := a.DeleteRuntime(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.PutRuntime(ctx, "c", cfg, true); err != nil {
		t.Fatalf("after a delete: %v", err)
	}
}
