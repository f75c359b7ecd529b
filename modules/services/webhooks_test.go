package services

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/byteproxy/byteproxy/internal/testutil"
)

const webhookProxyKey = "wh-proxy-key-5b7c9d1e3f"

const webhookCaddyfile = `{
	byteproxy {
		auth proxy {
			key {env.WH_PROXY_KEY}
		}
		service discord {
			base_url http://{{UP}}/api/
			version v9 http://{{UP}}/api/v9/
			version v10 http://{{UP}}/api/v10/
		}
		service botless discord {
			base_url http://{{UP}}/api/
			version v10 http://{{UP}}/api/v10/
			auth bot {env.BP_TEST_UNSET_TOKEN}
		}
		service up {
			base_url http://{{UP}}/base/
			auth bearer {env.T_BEARER}
		}
	}
}

:{{PORT}} {
	byteproxy
}

# The proxy without byteproxy_auth: it sees the client's Authorization.
http://127.0.0.1:{{BARE}} {
	byteproxy_services
}
`

// TestDiscordTokenRoutes: a webhook or interaction-callback call that
// discord.js sends without Authorization (its `auth: false` routes) is
// forwarded without the bot token, through a real gateway to a recording
// upstream; every other call, and the same call with an Authorization
// header, gets the bot token. The gateway's own key is still required.
func TestDiscordTokenRoutes(t *testing.T) {
	up := newUpstream(t)
	bare := testutil.FreePort(t)
	cf := strings.NewReplacer("{{UP}}", up.hostport(), "{{BARE}}", fmt.Sprint(bare)).Replace(webhookCaddyfile)
	in := testutil.Start(t, cf, testutil.Options{Env: append(tokenEnv(), "WH_PROXY_KEY="+webhookProxyKey)})
	botToken := "Bot " + tokens["DISCORD_BOT_TOKEN"]

	cases := []struct {
		name, method, path string
		headers            []string
		wantPath, wantAuth string // what the upstream got
	}{
		{"webhook execute", "POST", "/proxy/discord/v10/webhooks/123/tok-abc?wait=true", []string{"X-API-Key", webhookProxyKey},
			"/api/v10/webhooks/123/tok-abc?wait=true", ""},
		{"webhook message, no version, query key", "GET", "/proxy/discord/webhooks/123/tok-abc/messages/456?api_key=" + webhookProxyKey, nil,
			"/api/webhooks/123/tok-abc/messages/456", ""},
		{"webhook, other version", "PATCH", "/proxy/discord/v9/webhooks/123/tok-abc/messages/@original", []string{"X-API-Key", webhookProxyKey},
			"/api/v9/webhooks/123/tok-abc/messages/@original", ""},
		{"webhook delete", "DELETE", "/proxy/discord/v10/webhooks/123/tok-abc", []string{"X-API-Key", webhookProxyKey},
			"/api/v10/webhooks/123/tok-abc", ""},
		{"interaction callback", "POST", "/proxy/discord/v10/interactions/99/itok/callback", []string{"X-API-Key", webhookProxyKey},
			"/api/v10/interactions/99/itok/callback", ""},
		{"webhook with the client's Authorization", "POST", "/proxy/discord/v10/webhooks/123/tok-abc", []string{"Authorization", "Bot " + webhookProxyKey},
			"/api/v10/webhooks/123/tok-abc", botToken},
		{"webhook with a foreign Authorization", "POST", "/proxy/discord/v10/webhooks/123/tok-abc", []string{"X-API-Key", webhookProxyKey, "Authorization", "Basic eDp5"},
			"/api/v10/webhooks/123/tok-abc", botToken},
		{"webhook without token (bot route)", "GET", "/proxy/discord/v10/webhooks/123", []string{"X-API-Key", webhookProxyKey},
			"/api/v10/webhooks/123", botToken},
		{"interaction, not the callback", "POST", "/proxy/discord/v10/interactions/99/itok/other", []string{"X-API-Key", webhookProxyKey},
			"/api/v10/interactions/99/itok/other", botToken},
		{"channel message", "POST", "/proxy/discord/v10/channels/1/messages", []string{"X-API-Key", webhookProxyKey},
			"/api/v10/channels/1/messages", botToken},
		{"not under the version", "POST", "/proxy/discord/v10/x/webhooks/1/t", []string{"X-API-Key", webhookProxyKey},
			"/api/v10/x/webhooks/1/t", botToken},
		{"generic service", "POST", "/proxy/up/webhooks/123/tok-abc", []string{"X-API-Key", webhookProxyKey},
			"/base/webhooks/123/tok-abc", "Bearer " + tokens["T_BEARER"]},
		{"preset without bot token", "POST", "/proxy/botless/v10/webhooks/123/tok-abc", []string{"X-API-Key", webhookProxyKey},
			"/api/v10/webhooks/123/tok-abc", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			id := newID()
			var body *strings.Reader
			if c.method == "POST" || c.method == "PATCH" {
				body = strings.NewReader(`{"content":"hi"}`)
			}
			var r result
			if body != nil {
				r = call(t, c.method, in.URL(c.path), body, append(c.headers, "X-Test-Id", id, "Content-Type", "application/json")...)
			} else {
				r = call(t, c.method, in.URL(c.path), nil, append(c.headers, "X-Test-Id", id)...)
			}
			if r.status != http.StatusOK {
				t.Fatalf("status %d: %s", r.status, r.body)
			}
			s := up.get(t, id)
			if !strings.HasPrefix(s.RequestURI, c.wantPath) {
				t.Errorf("upstream path %q, want %q", s.RequestURI, c.wantPath)
			}
			if got := s.Header.Values("Authorization"); c.wantAuth == "" && len(got) != 0 || c.wantAuth != "" && (len(got) != 1 || got[0] != c.wantAuth) {
				t.Errorf("upstream Authorization %q, want %q", got, c.wantAuth)
			}
			if strings.Contains(s.RequestURI, webhookProxyKey) || s.Header.Get("X-Api-Key") != "" {
				t.Error("the proxy key reached the upstream")
			}
		})
	}

	t.Run("gateway key still required", func(t *testing.T) {
		id := newID()
		r := call(t, "POST", in.URL("/proxy/discord/v10/webhooks/123/tok-abc"), strings.NewReader(`{}`), "X-Test-Id", id)
		if r.status != http.StatusUnauthorized || up.received(id) {
			t.Fatalf("status %d, reached upstream %v", r.status, up.received(id))
		}
	})
	t.Run("preset without bot token, other routes", func(t *testing.T) {
		for _, h := range [][]string{
			{"X-API-Key", webhookProxyKey},                                        // a bot route
			{"Authorization", "Bot " + webhookProxyKey, "X-Test-Path", "webhook"}, // the client sent Authorization
		} {
			path := "/proxy/botless/v10/users/@me"
			if len(h) > 2 {
				path = "/proxy/botless/v10/webhooks/123/tok-abc"
			}
			id := newID()
			r := call(t, "GET", in.URL(path), nil, append(h, "X-Test-Id", id)...)
			if r.status != http.StatusUnauthorized || !strings.Contains(string(r.body), "Authentication token missing for botless") || up.received(id) {
				t.Errorf("%s: %d %s (reached upstream %v)", path, r.status, r.body, up.received(id))
			}
		}
	})
	t.Run("without byteproxy_auth", func(t *testing.T) {
		for _, authz := range []string{"", "Bot anything"} {
			id := newID()
			h := []string{"X-Test-Id", id}
			if authz != "" {
				h = append(h, "Authorization", authz)
			}
			r := call(t, "POST", fmt.Sprintf("http://127.0.0.1:%d/proxy/discord/v10/webhooks/1/t", bare), strings.NewReader(`{}`), h...)
			if r.status != http.StatusOK {
				t.Fatalf("status %d: %s", r.status, r.body)
			}
			got := up.get(t, id).Header.Values("Authorization")
			if authz == "" && len(got) != 0 || authz != "" && (len(got) != 1 || got[0] != botToken) {
				t.Errorf("client Authorization %q: upstream got %q", authz, got)
			}
		}
	})
	assertNoSecrets(t, "gateway log", in.Logs())
}
