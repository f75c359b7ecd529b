// Package examples holds runnable configurations; this test adapts every
// one of them and provisions the result, so an example can never drift
// from what the modules accept.
package examples

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/byteproxy/byteproxy"
)

// configs lists every example with the services it must define.
var configs = []struct {
	file     string
	services []string
}{
	{"../Caddyfile.example", []string{"discord", "github"}},
	{"discord-bot/Caddyfile", []string{"discord"}},
	{"github/Caddyfile", []string{"ghe", "github"}},
	{"handle-path/Caddyfile", []string{"github", "weather"}},
	{"json/config.json", []string{"custom-api", "discord"}},
	{"error-pages/Caddyfile", []string{"github"}},
	{"clients/Caddyfile", []string{"discord", "discord-tight", "github", "github-tight"}},
}

func TestExamplesAdaptAndProvision(t *testing.T) {
	t.Setenv("PROXY_API_KEY", "example-proxy-key")
	t.Setenv("MANAGEMENT_API_KEY", "example-management-key")
	t.Setenv("XDG_DATA_HOME", t.TempDir())
	for _, ex := range configs {
		t.Run(ex.file, func(t *testing.T) {
			cfgJSON := adapt(t, ex.file)
			var cfg struct {
				Apps struct {
					Byteproxy struct {
						Services map[string]json.RawMessage `json:"services"`
					} `json:"byteproxy"`
				} `json:"apps"`
			}
			if err := json.Unmarshal(cfgJSON, &cfg); err != nil {
				t.Fatal(err)
			}
			for _, s := range ex.services {
				if _, ok := cfg.Apps.Byteproxy.Services[s]; !ok {
					t.Errorf("service %q missing from adapted config", s)
				}
			}
			if len(cfg.Apps.Byteproxy.Services) != len(ex.services) {
				t.Errorf("got %d services, want %d", len(cfg.Apps.Byteproxy.Services), len(ex.services))
			}
			if err := caddy.Validate(mustConfig(t, cfgJSON)); err != nil {
				t.Fatalf("provisioning %s: %v", ex.file, err)
			}
		})
	}
}

func TestExampleFailsClosedWithoutProxyKey(t *testing.T) {
	t.Setenv("PROXY_API_KEY", "")
	t.Setenv("XDG_DATA_HOME", t.TempDir())
	err := caddy.Validate(mustConfig(t, adapt(t, "../Caddyfile.example")))
	if err == nil || !strings.Contains(err.Error(), "auth proxy") {
		t.Fatalf("want a startup error naming the proxy scope, got %v", err)
	}
}

func adapt(t *testing.T, file string) []byte {
	t.Helper()
	body, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Ext(file) == ".json" {
		return body
	}
	out, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt(body, map[string]any{"filename": file})
	if err != nil {
		t.Fatalf("adapting %s: %v", file, err)
	}
	for _, w := range warnings {
		t.Errorf("adapt warning in %s: %s", file, w)
	}
	return out
}

func mustConfig(t *testing.T, b []byte) *caddy.Config {
	t.Helper()
	var cfg caddy.Config
	if err := json.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	return &cfg
}

// TestExamplesFailClosedWithoutKeys (issue 11.6): run without
// PROXY_API_KEY, no example may start as an open proxy that spends the
// bot's token for anyone; the error names the variable. Without
// MANAGEMENT_API_KEY (the README's quick start) every example starts,
// its management API answering local programs only.
func TestExamplesFailClosedWithoutKeys(t *testing.T) {
	t.Setenv("XDG_DATA_HOME", t.TempDir())
	for _, ex := range configs {
		t.Run(ex.file, func(t *testing.T) {
			t.Setenv("PROXY_API_KEY", "")
			t.Setenv("MANAGEMENT_API_KEY", "example-management-key")
			err := caddy.Validate(mustConfig(t, adapt(t, ex.file)))
			if err == nil || !strings.Contains(err.Error(), "auth proxy") || !strings.Contains(err.Error(), "PROXY_API_KEY") {
				t.Errorf("without PROXY_API_KEY: got %v, want a startup error naming auth proxy and PROXY_API_KEY", err)
			}
			t.Setenv("PROXY_API_KEY", "example-proxy-key-long-enough")
			os.Unsetenv("MANAGEMENT_API_KEY")
			if err := caddy.Validate(mustConfig(t, adapt(t, ex.file))); err != nil {
				t.Errorf("without MANAGEMENT_API_KEY: %v", err)
			}
		})
	}
}
