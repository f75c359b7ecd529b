package caddyfile_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// TestLoadErrors checks errors that only show when the config is loaded
// (placeholders resolved, services compiled, JSON decoded): no Caddyfile
// line exists then, so each names the option path, or the JSON path, and
// the value as written.
func TestLoadErrors(t *testing.T) {
	t.Setenv("XDG_DATA_HOME", t.TempDir())
	t.Setenv("BYTEPROXY_TEST_UNSET", "")
	t.Setenv("BYTEPROXY_TEST_REDIS_URL", "redis://:hunter2@[::1")
	const site = "\n:0 {\n byteproxy\n}\n"
	const jsonSite = `"http":{"servers":{"s":{"listen":["127.0.0.1:0"],"routes":[{"handle":[{"handler":"byteproxy"}]}]}}}`
	cases := []struct {
		name, caddyfile, json string
		want                  []string
		notWant               string // e.g. a password that must not be quoted
	}{
		{
			name:      "base_url without a scheme",
			caddyfile: "{\n byteproxy {\n  service custom-api {\n   base_url api.example.com/v1\n  }\n }\n}" + site,
			want:      []string{`byteproxy > service custom-api > base_url: base URL must be an absolute http or https URL, got "api.example.com/v1"`},
		},
		{
			name:      "base_url with a runtime placeholder",
			caddyfile: "{\n byteproxy {\n  service custom-api {\n   base_url {env.CUSTOM_API_URL}\n  }\n }\n}" + site,
			want: []string{
				`byteproxy > service custom-api > base_url: base URL must be an absolute http or https URL, got "{env.CUSTOM_API_URL}"`,
				"the placeholder {env.CUSTOM_API_URL} is not resolved in base_url; write {$CUSTOM_API_URL}",
			},
		},
		{
			name:      "version URL",
			caddyfile: "{\n byteproxy {\n  service custom-api {\n   base_url https://api.example.com/\n   version v2 ftp://api.example.com/v2/\n  }\n }\n}" + site,
			want:      []string{`byteproxy > service custom-api > version: version v2: base URL must be an absolute http or https URL, got "ftp://api.example.com/v2/"`},
		},
		{
			name:      "service header",
			caddyfile: "{\n byteproxy {\n  service custom-api {\n   base_url https://api.example.com/\n   header \"Bad Name\" x\n  }\n }\n}" + site,
			want:      []string{`byteproxy > service custom-api > header: invalid header name "Bad Name"`},
		},
		{
			name:      "keys that differ only in letter case",
			caddyfile: "{\n byteproxy {\n  service MyAPI {\n   base_url https://api.example.com/\n  }\n  service myapi {\n   base_url https://api.example.com/\n  }\n }\n}" + site,
			want:      []string{`the keys "MyAPI" and "myapi" differ only in letter case`},
		},
		{
			name:      "required key that resolved empty",
			caddyfile: "{\n byteproxy {\n  auth proxy {\n   key {env.BYTEPROXY_TEST_UNSET}\n   required true\n  }\n }\n}" + site,
			want:      []string{"byteproxy > auth proxy"},
		},
		{
			name:      "redis URL from a placeholder",
			caddyfile: "{\n byteproxy {\n  redis {env.BYTEPROXY_TEST_REDIS_URL}\n }\n}" + site,
			want:      []string{"byteproxy > redis: not a valid URL: missing ']' in host (the URL came from {env.BYTEPROXY_TEST_REDIS_URL})"},
			notWant:   "hunter2",
		},
		{
			name:      "global_limit on a custom service",
			caddyfile: "{\n byteproxy {\n  service custom-api {\n   base_url https://api.example.com/\n   upstream_limits {\n    global_limit 50\n   }\n  }\n }\n}" + site,
			want:      []string{"byteproxy > service custom-api > upstream_limits > global_limit: applies to services built from the discord preset only"},
		},
		{
			name:      "headers on a preset",
			caddyfile: "{\n byteproxy {\n  service github {\n   upstream_limits {\n    headers ietf\n   }\n  }\n }\n}" + site,
			want:      []string{"byteproxy > service github > upstream_limits > headers: the github preset reads github's own headers"},
		},
		{
			name: "max_wait too long in JSON",
			json: `{"apps":{"byteproxy":{"services":{"discord":{"preset":"discord","upstream_limits":{"max_wait":"2h"}}}},` + jsonSite + `}}`,
			want: []string{"byteproxy > service discord > upstream_limits > max_wait: must be between 0 and 1h0m0s, got 2h0m0s"},
		},
		{
			name: "weight not positive in JSON",
			json: `{"apps":{"byteproxy":{"services":{"x":{"base_url":"https://x.example/","upstream_limits":{"weights":{"key:1":0}}}}},` + jsonSite + `}}`,
			want: []string{`byteproxy > service x > upstream_limits > weight: the weight of "key:1" must be above 0`},
		},
		{
			name: "unknown header family in JSON",
			json: `{"apps":{"byteproxy":{"services":{"x":{"base_url":"https://x.example/","upstream_limits":{"headers":"draft"}}}},` + jsonSite + `}}`,
			want: []string{`byteproxy > service x > upstream_limits > headers: unknown header family "draft" (want ietf or x-ratelimit)`},
		},
		{
			name: "max_cpu in JSON",
			json: `{"apps":{"byteproxy":{"pressure":{"max_cpu":98}},` + jsonSite + `}}`,
			want: []string{"byteproxy > pressure > max_cpu: 98 would mean 9,800% of GOMAXPROCS; it is a fraction between 0 and 1; did you mean 0.98?"},
		},
		{
			name: "cors origin in JSON",
			json: `{"apps":{"byteproxy":{"cors":{"origins":["app.example.com"]}},` + jsonSite + `}}`,
			want: []string{`cors origins: "app.example.com" is not an origin; want scheme://host[:port], e.g. https://app.example.com`},
		},
		{
			name: "pressure health_check in JSON",
			json: `{"apps":{"byteproxy":{"pressure":{"disabled":true,"health_check_url":"ftp://x/"}},` + jsonSite + `}}`,
			want: []string{`byteproxy > pressure > health_check: want an absolute http(s) URL, got "ftp://x/"`},
		},
		{
			name: "unknown field of a service",
			json: `{"apps":{"byteproxy":{"services":{"github":{"preset":"github","rate_limt":{"max_requests":5,"window":"1m"}}}},` + jsonSite + `}}`,
			want: []string{`apps.byteproxy.services.github.rate_limt: unknown field (did you mean "rate_limit"?)`},
		},
		{
			name: "unknown field of the app",
			json: `{"apps":{"byteproxy":{"bogus":true},` + jsonSite + `}}`,
			want: []string{"apps.byteproxy.bogus: unknown field (known fields: auth, "},
		},
		{
			name: "unknown field deep down",
			json: `{"apps":{"byteproxy":{"services":{"x":{"base_url":"https://x.example/","auth":{"type":"header","nme":"X-Key","token":"t"}}}},` + jsonSite + `}}`,
			want: []string{`apps.byteproxy.services.x.auth.nme: unknown field (did you mean "name"?)`},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfgJSON := []byte(tc.json)
			if tc.caddyfile != "" {
				var err error
				cfgJSON, _, err = caddyconfig.GetAdapter("caddyfile").Adapt([]byte(tc.caddyfile), map[string]any{"filename": "Caddyfile"})
				if err != nil {
					t.Fatalf("adapt: %v (the error must come at load, not adapt)", err)
				}
			}
			var cfg caddy.Config
			err := json.Unmarshal(cfgJSON, &cfg)
			if err == nil {
				err = caddy.Validate(&cfg)
			}
			if err == nil {
				t.Fatal("config loaded, want an error")
			}
			for _, want := range tc.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q\ndoes not contain %q", err, want)
				}
			}
			if tc.notWant != "" && strings.Contains(err.Error(), tc.notWant) {
				t.Errorf("error %q contains %q", err, tc.notWant)
			}
		})
	}
}

// TestJSONFieldNamesCaseInsensitive: the strict decoder that names unknown
// fields accepts what encoding/json accepts, field names in any case.
func TestJSONFieldNamesCaseInsensitive(t *testing.T) {
	t.Setenv("XDG_DATA_HOME", t.TempDir())
	var cfg caddy.Config
	raw := `{"apps":{"byteproxy":{"Services":{"x":{"BASE_URL":"https://x.example/"}}}}}`
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		t.Fatal(err)
	}
	if err := caddy.Validate(&cfg); err != nil {
		t.Fatalf("want the config accepted, got %v", err)
	}
}
