package gateway

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"path"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/byteproxy/byteproxy/internal/budget"
	"github.com/byteproxy/byteproxy/internal/httpx"
)

func TestPresetsAndOverrides(t *testing.T) {
	t.Setenv("GITHUB_TOKEN", "ghp-test-token")
	three := 3
	svc, err := BuildService("ghe", ServiceConfig{
		Preset:  "github",
		BaseURL: "https://github.example.com/api/v3",
		Headers: map[string]string{"user-agent": "mine"},
		Retries: &three,
	}, "config", BuildOptions{Timeout: time.Second, Retries: 2, StrictTLS: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := svc.BaseURL.String(); got != "https://github.example.com/api/v3/" {
		t.Errorf("base URL %q: want the override with a trailing slash", got)
	}
	if svc.Headers.Get("User-Agent") != "mine" || len(svc.Headers["User-Agent"]) != 1 {
		t.Errorf("User-Agent = %q: the override must replace the preset's, case-insensitively", svc.Headers["User-Agent"])
	}
	if svc.Headers.Get("X-Github-Api-Version") != "2022-11-28" {
		t.Errorf("preset header lost: %v", svc.Headers)
	}
	if svc.Retries != 3 || svc.Timeout != time.Second {
		t.Errorf("retries %d timeout %s", svc.Retries, svc.Timeout)
	}
	// The upstream budget is on, with GitHub's rules; the preset's fixed
	// window is not in front of it (issue 14).
	if svc.budgetSpec == nil || svc.budgetSpec.cfg.Kind != budget.KindGitHub || svc.budgetSpec.cfg.MutationSpacing != time.Second {
		t.Errorf("github preset budget %+v, want GitHub's rules with mutations 1s apart", svc.budgetSpec)
	}
	if svc.Config.RateLimit != nil {
		t.Errorf("github preset rate limit %+v with upstream_limits on, want none", svc.Config.RateLimit)
	}
	// With the budget off, an authenticated client's quota (5,000 per
	// hour), not the 60 of an unauthenticated one (issue 13.5).
	off, err := BuildService("github", ServiceConfig{Preset: "github", UpstreamLimits: &UpstreamLimits{Disabled: true}}, "config", BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rl := off.Config.RateLimit; rl == nil || rl.MaxRequests != 5000 || time.Duration(rl.Window) != time.Hour {
		t.Errorf("github preset rate limit %+v, want 5000 per hour", off.Config.RateLimit)
	}
	if off.budgetSpec != nil {
		t.Error("upstream_limits off still compiled a budget")
	}
	if !svc.TokenConfigured() || svc.TokenEnv != "GITHUB_TOKEN" {
		t.Errorf("token from {env.GITHUB_TOKEN}: configured=%v env=%q", svc.TokenConfigured(), svc.TokenEnv)
	}
	if strings.Contains(svc.Config.Auth.Token, "ghp-test-token") {
		t.Error("Config must keep the placeholder, never the resolved token")
	}
	if Presets["github"].Headers["User-Agent"] != "ByteProxy/"+Version {
		t.Error("building a service modified the preset")
	}

	discord, err := BuildService("discord", ServiceConfig{Preset: "discord"}, "config", BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if discord.Versions["v10"].String() != "https://discord.com/api/v10/" {
		t.Errorf("discord v10 = %v", discord.Versions["v10"])
	}
	// Discord's global limit of a bot, 50 per second, in the budget.
	if b := discord.budgetSpec; b == nil || b.cfg.Kind != budget.KindDiscord || b.cfg.GlobalLimit != 50 || b.cfg.GlobalWindow != time.Second {
		t.Errorf("discord preset budget %+v, want Discord's rules with 50 per second", b)
	}
	// The same as the quota with the budget off, not per minute.
	off, err = BuildService("discord", ServiceConfig{Preset: "discord", UpstreamLimits: &UpstreamLimits{Disabled: true}}, "config", BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rl := off.Config.RateLimit; rl == nil || rl.MaxRequests != 50 || time.Duration(rl.Window) != time.Second {
		t.Errorf("discord preset rate limit %+v, want 50 per second", off.Config.RateLimit)
	}
}

// Overriding a preset's base URL moves the preset's versions under it
// with it; a version set in the block wins; the preset is not modified.
func TestPresetBaseURLMovesVersions(t *testing.T) {
	for _, c := range []struct {
		name string
		cfg  ServiceConfig
		want map[string]string
	}{
		{"no override", ServiceConfig{Preset: "discord"},
			map[string]string{"v9": "https://discord.com/api/v9/", "v10": "https://discord.com/api/v10/"}},
		{"moved", ServiceConfig{Preset: "discord", BaseURL: "http://mock/api/"},
			map[string]string{"v9": "http://mock/api/v9/", "v10": "http://mock/api/v10/"}},
		{"moved, base without a final slash", ServiceConfig{Preset: "discord", BaseURL: "http://mock:8080/discord"},
			map[string]string{"v9": "http://mock:8080/discord/v9/", "v10": "http://mock:8080/discord/v10/"}},
		{"an explicit version wins", ServiceConfig{Preset: "discord", BaseURL: "http://mock/api/",
			Versions: map[string]string{"v10": "http://other/ten/", "v11": "http://mock/api/v11/"}},
			map[string]string{"v9": "http://mock/api/v9/", "v10": "http://other/ten/", "v11": "http://mock/api/v11/"}},
	} {
		svc, err := BuildService("discord", c.cfg, "config", BuildOptions{})
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		got := map[string]string{}
		for v, u := range svc.Versions {
			got[v] = u.String()
		}
		if fmt.Sprint(got) != fmt.Sprint(c.want) || fmt.Sprint(svc.Config.Versions) != fmt.Sprint(c.want) {
			t.Errorf("%s: versions %v, config %v, want %v", c.name, got, svc.Config.Versions, c.want)
		}
		if info := svc.Info(); fmt.Sprint(info.VersionedBaseUrls) != fmt.Sprint(c.want) {
			t.Errorf("%s: Info versions %v", c.name, info.VersionedBaseUrls)
		}
	}
	if Presets["discord"].Versions["v10"] != "https://discord.com/api/v10/" {
		t.Error("building a service modified the preset")
	}
}

func TestApplyCredential(t *testing.T) {
	cases := []struct {
		auth   ServiceAuth
		header string
		value  string
		query  string
	}{
		{ServiceAuth{Type: "bot", Token: "T0K"}, "Authorization", "Bot T0K", ""},
		{ServiceAuth{Type: "bearer", Token: "T0K"}, "Authorization", "Bearer T0K", ""},
		{ServiceAuth{Type: "basic", Token: "u:p"}, "Authorization", "Basic dTpw", ""},
		{ServiceAuth{Type: "header", Name: "X-Key", Token: "T0K"}, "X-Key", "T0K", ""},
		{ServiceAuth{Type: "query", Name: "appid", Token: "T 0&K"}, "", "", "a=1&appid=T+0%26K"},
	}
	for _, c := range cases {
		a := c.auth
		svc, err := BuildService("svc", ServiceConfig{BaseURL: "https://api.example/", Auth: &a}, "config", BuildOptions{})
		if err != nil {
			t.Fatal(err)
		}
		h := http.Header{"Authorization": {"Bearer client-key"}}
		u, _ := url.Parse("https://api.example/x?a=1")
		if !svc.ApplyCredential(h, u) {
			t.Fatalf("%s: credential not applied", a.Type)
		}
		if c.header != "" && h.Get(c.header) != c.value {
			t.Errorf("%s: %s = %q, want %q", a.Type, c.header, h.Get(c.header), c.value)
		}
		if c.query != "" && u.RawQuery != c.query {
			t.Errorf("%s: query %q, want %q", a.Type, u.RawQuery, c.query)
		}
		if c.query != "" && strings.Contains(svc.RedactURL(u), "T+0") {
			t.Errorf("RedactURL leaks the token: %s", svc.RedactURL(u))
		}
	}
	missing, _ := BuildService("svc", ServiceConfig{BaseURL: "https://api.example/", Auth: &ServiceAuth{Type: "bearer", Token: "{env.BYTEPROXY_TEST_UNSET_TOKEN}"}}, "config", BuildOptions{})
	if missing.ApplyCredential(http.Header{}, &url.URL{}) {
		t.Error("an unset token must report false so the proxy answers 401")
	}
}

func TestBuildServiceValidation(t *testing.T) {
	ok := "https://api.example/"
	cases := []struct {
		name  string
		key   string
		cfg   ServiceConfig
		field string
	}{
		{"bad key", "Bad/key", ServiceConfig{BaseURL: ok}, "key"},
		{"dot key", ".", ServiceConfig{BaseURL: ok}, "key"},
		{"dot dot key", "..", ServiceConfig{BaseURL: ok}, "key"},
		{"key with dot dot", "a..b", ServiceConfig{BaseURL: ok}, "key"},
		{"key starting with a dot", ".a", ServiceConfig{BaseURL: ok}, "key"},
		{"long key", strings.Repeat("A", 64), ServiceConfig{BaseURL: ok}, "key"},
		{"reserved key", "services", ServiceConfig{BaseURL: ok}, "key"},
		{"reserved key in capitals", "Services", ServiceConfig{BaseURL: ok}, "key"},
		{"reserved key mixed", "Auth-Test", ServiceConfig{BaseURL: ok}, "key"},
		{"no url", "x", ServiceConfig{}, "baseUrl"},
		{"relative url", "x", ServiceConfig{BaseURL: "/api"}, "baseUrl"},
		{"ftp url", "x", ServiceConfig{BaseURL: "ftp://x/"}, "baseUrl"},
		{"not a url", "x", ServiceConfig{BaseURL: "not a url"}, "baseUrl"},
		{"userinfo", "x", ServiceConfig{BaseURL: "https://u:p@x/"}, "baseUrl"},
		{"bad version", "x", ServiceConfig{BaseURL: ok, Versions: map[string]string{"a/b": ok}}, "versionedBaseUrls"},
		{"bad header", "x", ServiceConfig{BaseURL: ok, Headers: map[string]string{"Bad Header": "v"}}, "headers"},
		{"zero limit", "x", ServiceConfig{BaseURL: ok, RateLimit: &RateLimit{MaxRequests: 0, Window: caddy.Duration(time.Second)}}, "rateLimit"},
		{"zero window", "x", ServiceConfig{BaseURL: ok, RateLimit: &RateLimit{MaxRequests: 1}}, "rateLimit"},
		{"auth type", "x", ServiceConfig{BaseURL: ok, Auth: &ServiceAuth{Type: "digest"}}, "auth.type"},
		{"header auth name", "x", ServiceConfig{BaseURL: ok, Auth: &ServiceAuth{Type: "header", Token: "t"}}, "auth.headerName"},
		{"preset", "x", ServiceConfig{Preset: "gitlab"}, "preset"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := BuildService(c.key, c.cfg, "runtime", BuildOptions{})
			var fe *httpx.FieldError
			if !errors.As(err, &fe) || fe.Field != c.field {
				t.Fatalf("got %v, want an httpx.FieldError on %q", err, c.field)
			}
		})
	}
}

// TestServiceKeys: the original's keys (either letter case, '.', '_',
// '-') are accepted; nothing that could climb out of the storage prefix or
// shadow one of the gateway's endpoints is.
func TestServiceKeys(t *testing.T) {
	t.Parallel()
	for _, key := range []string{"MyAPI", "my.api", "v1.2-beta_3", "A", "9", strings.Repeat("a", 63), "a.", "servicesX", "Github"} {
		if err := CheckServiceKey(key); err != nil {
			t.Errorf("%q refused: %v", key, err)
		}
		if _, err := BuildService(key, ServiceConfig{BaseURL: "https://api.example/"}, "runtime", BuildOptions{}); err != nil {
			t.Errorf("%q: %v", key, err)
		}
		if p := storageKey(key); path.Dir(p) != storagePrefix {
			t.Errorf("%q is stored at %q, outside %s", key, p, storagePrefix)
		}
		if got, ok := recordKey(storageKey(key)); !ok || got != key {
			t.Errorf("recordKey(storageKey(%q)) = %q %v", key, got, ok)
		}
	}
	for _, key := range []string{"", ".", "..", "a..b", "...", ".a", "-a", "_a", "a/b", `a\b`, "a b", "a%2e", "ä", strings.Repeat("a", 64),
		"services", "SERVICES", "Auth-Debug", "key-DEBUG", "auth-test"} {
		if err := CheckServiceKey(key); err == nil {
			t.Errorf("%q accepted", key)
		}
	}
}

func TestScopesFailClosed(t *testing.T) {
	yes, no := true, false
	cases := []struct {
		name     string
		auth     map[string]*AuthScope
		wantErr  string
		required bool
		keys     int
	}{
		{"required without key", map[string]*AuthScope{"proxy": {Keys: []string{"{env.BYTEPROXY_TEST_UNSET}", "  "}, Required: &yes}}, "auth proxy: required", false, 0},
		{"required, no key line", map[string]*AuthScope{"management": {Required: &yes}}, "auth management: required, but no key is set", false, 0},
		// A key line that resolves to nothing fails closed unless
		// `required false` is written, and says which variable is missing.
		{"unset key, required not written", map[string]*AuthScope{"proxy": {Keys: []string{"{env.BYTEPROXY_TEST_UNSET}"}}},
			"auth proxy: key {env.BYTEPROXY_TEST_UNSET} resolved to an empty value (environment variable BYTEPROXY_TEST_UNSET is not set); set it or write 'required false'", false, 0},
		{"empty key, required not written", map[string]*AuthScope{"management": {Keys: []string{"{env.BYTEPROXY_TEST_EMPTY}"}}},
			"auth management: key {env.BYTEPROXY_TEST_EMPTY} resolved to an empty value (environment variable BYTEPROXY_TEST_EMPTY is empty)", false, 0},
		{"every key unset", map[string]*AuthScope{"proxy": {Keys: []string{"{env.BYTEPROXY_TEST_UNSET}", "{env.BYTEPROXY_TEST_UNSET_2}"}}},
			"(environment variable BYTEPROXY_TEST_UNSET_2 is not set); set one of them or write 'required false'", false, 0},
		{"unset key, required false written", map[string]*AuthScope{"proxy": {Keys: []string{"{env.BYTEPROXY_TEST_UNSET}"}, Required: &no}}, "", false, 0},
		{"one of two keys unset (rotation)", map[string]*AuthScope{"proxy": {Keys: []string{"{env.BYTEPROXY_TEST_UNSET}", "k1-long-enough-for-no-warning"}}}, "", true, 1},
		{"no key line", map[string]*AuthScope{"proxy": {}}, "", false, 0},
		{"keys imply required", map[string]*AuthScope{"proxy": {Keys: []string{"k1", "", "k2"}}}, "", true, 2},
		{"explicitly optional", map[string]*AuthScope{"proxy": {Keys: []string{"k1"}, Required: &no}}, "", false, 1},
		{"unknown scope", map[string]*AuthScope{"admin": {Keys: []string{"k"}}}, "unknown scope", false, 0},
	}
	t.Setenv("BYTEPROXY_TEST_EMPTY", " ")
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a := &App{Auth: c.auth}
			err := a.provisionScopes(caddy.NewReplacer())
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("got %v, want error containing %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			sc := a.ScopeFor(ScopeProxy)
			for name := range c.auth {
				sc = a.ScopeFor(name)
			}
			if sc.Required != c.required || len(sc.Keys) != c.keys {
				t.Errorf("required=%v keys=%d, want %v and %d", sc.Required, len(sc.Keys), c.required, c.keys)
			}
		})
	}
}

// TestShortKeyWarning: a key under 16 characters is warned about, without
// the key, a part of it or its length in the log.
func TestShortKeyWarning(t *testing.T) {
	core, logs := observer.New(zapcore.WarnLevel)
	const short, long = "short-key-9x", "a-key-of-thirty-two-characters!!"
	a := &App{logger: zap.New(core), Auth: map[string]*AuthScope{
		"proxy":      {Keys: []string{long, short}},
		"management": {Keys: []string{long}},
	}}
	if err := a.provisionScopes(caddy.NewReplacer()); err != nil {
		t.Fatal(err)
	}
	entries := logs.All()
	if len(entries) != 1 || !strings.Contains(entries[0].Message, "shorter than 16 characters") {
		t.Fatalf("want one warning about the short key, got %v", entries)
	}
	fields := entries[0].ContextMap()
	if fields["scope"] != "proxy" || fields["key_line"] != int64(2) {
		t.Errorf("warning fields %v, want scope proxy, key_line 2", fields)
	}
	text := fmt.Sprint(entries[0].Message, fields)
	for _, leak := range []string{short, short[:6], short[len(short)-6:], fmt.Sprint(len(short))} {
		if strings.Contains(text, leak) {
			t.Errorf("warning shows %q: %s", leak, text)
		}
	}
}
