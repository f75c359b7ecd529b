package gateway

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestIsPrivate(t *testing.T) {
	t.Parallel()
	private := []string{
		"127.0.0.1", "127.255.0.9", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254",
		"100.64.0.1", "100.100.100.200", "0.0.0.0", "0.1.2.3", "192.0.0.192", "198.18.0.1",
		"240.0.0.1", "255.255.255.255", "224.0.0.1", "::1", "::", "fe80::1", "fc00::1",
		"fd00:ec2::254", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "64:ff9b::7f00:1", "64:ff9b::a00:1",
		"2002:7f00:1::", "2002:c0a8:101::1", "fec0::1", "ff02::1",
	}
	public := []string{"93.184.215.14", "1.1.1.1", "8.8.8.8", "140.82.112.3", "2606:4700::1111", "64:ff9b::808:808", "2002:808:808::1"}
	for _, s := range private {
		if !IsPrivate(netip.MustParseAddr(s)) {
			t.Errorf("%s should be private", s)
		}
	}
	for _, s := range public {
		if IsPrivate(netip.MustParseAddr(s)) {
			t.Errorf("%s should be public", s)
		}
	}
}

func TestCheckLiteralHost(t *testing.T) {
	t.Parallel()
	for _, h := range []string{"localhost", "LOCALHOST.", "a.localhost", "127.0.0.1", "::1", "10.2.3.4", "fe80::1%eth0"} {
		if checkLiteralHost(h) == nil {
			t.Errorf("%q accepted", h)
		}
	}
	for _, h := range []string{"api.github.com", "discord.com", "93.184.215.14", "localhost.example.com"} {
		if err := checkLiteralHost(h); err != nil {
			t.Errorf("%q refused: %v", h, err)
		}
	}
	if err := checkHostPublic(context.Background(), "localhost"); err == nil {
		t.Error("checkHostPublic accepted localhost")
	}
}

// TestDialGuardRefusesPrivate shows that a runtime service's transport
// refuses a private address at dial time, whatever name led there: this is
// what defeats DNS rebinding after validation.
func TestDialGuardRefusesPrivate(t *testing.T) {
	t.Parallel()
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer upstream.Close()
	guarded, err := BuildService("g", ServiceConfig{BaseURL: upstream.URL}, "runtime", BuildOptions{Timeout: 2 * time.Second, Guard: RefusePrivate})
	if err != nil {
		t.Fatal(err)
	}
	_, err = (&http.Client{Transport: guarded.Transport}).Get(upstream.URL)
	if err == nil || !strings.Contains(err.Error(), "refusing to dial private address 127.0.0.1") {
		t.Fatalf("guarded dial: %v", err)
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
	if err := RefusePrivate(net.ParseIP("93.184.215.14")); err != nil {
		t.Fatal(err)
	}
	if err := RefusePrivate(nil); err == nil {
		t.Fatal("nil address accepted")
	}
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
		fe, isField := err.(*FieldError)
		if !isField || fe.Field != strings.TrimSpace(want) {
			t.Errorf("%s: got %v", want, err)
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
		"byteproxy/services/abc.json": "abc", "byteproxy/services/123456789": "", "byteproxy/services/Bad.json": "",
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
