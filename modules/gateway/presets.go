package gateway

import (
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// Version is the gateway's release version.
const Version = "0.2.0"

// ProjectURL is where the gateway lives; Discord asks bots to name it.
const ProjectURL = "https://github.com/byteproxy/byteproxy"

// Presets are the built-in service definitions a `service` may start from.
var Presets = map[string]ServiceConfig{
	"discord": {
		Name:    "Discord API",
		BaseURL: "https://discord.com/api/",
		Versions: map[string]string{
			"v9":  "https://discord.com/api/v9/",
			"v10": "https://discord.com/api/v10/",
		},
		Headers: map[string]string{
			"User-Agent": "DiscordBot (" + ProjectURL + ", " + Version + ")",
			// As the original sent it; a client's own Content-Type (a
			// multipart upload's, say) wins.
			"Content-Type": "application/json",
		},
		Auth: &ServiceAuth{Type: "bot", Token: "{env.DISCORD_BOT_TOKEN}"},
		// Discord's global limit of a bot token: 50 requests per second.
		RateLimit: &RateLimit{MaxRequests: 50, Window: caddy.Duration(time.Second)},
	},
	"github": {
		Name:    "GitHub API",
		BaseURL: "https://api.github.com/",
		Headers: map[string]string{
			"Accept":               "application/vnd.github+json",
			"X-GitHub-Api-Version": "2022-11-28",
			"User-Agent":           "ByteProxy/" + Version,
		},
		Auth: &ServiceAuth{Type: "bearer", Token: "{env.GITHUB_TOKEN}"},
		// GitHub's primary limit of an authenticated user: 5,000 requests
		// per hour (60 is the quota without a token).
		RateLimit: &RateLimit{MaxRequests: 5000, Window: caddy.Duration(time.Hour)},
	},
}

// mergePreset returns the preset named by cfg.Preset overridden by every
// field cfg sets. Maps are merged key by key (cfg wins).
func mergePreset(cfg ServiceConfig) ServiceConfig {
	p, ok := Presets[cfg.Preset]
	if !ok {
		return cfg
	}
	out := p.clone()
	out.Preset = cfg.Preset
	if cfg.Name != "" {
		out.Name = cfg.Name
	}
	if cfg.BaseURL != "" {
		out.Versions = movedVersions(p, cfg.BaseURL)
		out.BaseURL = cfg.BaseURL
	}
	for k, v := range cfg.Versions {
		if out.Versions == nil {
			out.Versions = map[string]string{}
		}
		out.Versions[k] = v
	}
	for k, v := range cfg.Headers {
		if out.Headers == nil {
			out.Headers = map[string]string{}
		}
		out.Headers[http.CanonicalHeaderKey(k)] = v
	}
	if cfg.Auth != nil {
		a := *cfg.Auth
		out.Auth = &a
	}
	if cfg.RateLimit != nil {
		r := *cfg.RateLimit
		out.RateLimit = &r
	} else if cfg.UpstreamLimits == nil || !cfg.UpstreamLimits.Disabled {
		// The preset's quota is a fixed window in front of the upstream
		// budget, which knows the real limits: it would refuse bursts that
		// the budget holds and sends in time. It applies only with the
		// budget off.
		out.RateLimit = nil
	}
	if cfg.UpstreamLimits != nil {
		out.UpstreamLimits = cfg.UpstreamLimits.clone()
	}
	if cfg.Timeout != 0 {
		out.Timeout = cfg.Timeout
	}
	if cfg.Retries != nil {
		out.Retries = cfg.Retries
	}
	out.TLSInsecureSkipVerify = out.TLSInsecureSkipVerify || cfg.TLSInsecureSkipVerify
	if cfg.HTTPVersion != "" {
		out.HTTPVersion = cfg.HTTPVersion
	}
	return out
}

// movedVersions returns the version URLs of preset p for a service that
// overrides its base URL with base: a version under the preset's base URL
// keeps its place below the new one (discord's
// https://discord.com/api/v10/ becomes http://mock/api/v10/ for base
// http://mock/api/), so that overriding base_url never leaves part of the
// service, and its credential, on the real host. A version elsewhere stays
// as it is. Versions the service sets itself are merged afterwards and win.
func movedVersions(p ServiceConfig, base string) map[string]string {
	if len(p.Versions) == 0 {
		return nil
	}
	if !strings.HasSuffix(base, "/") {
		base += "/" // as parseBaseURL reads it
	}
	out := make(map[string]string, len(p.Versions))
	for v, u := range p.Versions {
		if below, ok := strings.CutPrefix(u, p.BaseURL); ok {
			u = base + below
		}
		out[v] = u
	}
	return out
}
