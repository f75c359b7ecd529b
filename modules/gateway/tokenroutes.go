package gateway

import (
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// Discord authenticates some routes by a token in the path instead of the
// bot token: executing, editing and deleting through a webhook
// (/webhooks/{id}/{token} and below) and answering an interaction
// (/interactions/{id}/{token}/callback). discord.js marks them `auth:
// false` and sends them without Authorization; a bot token sent along is
// not needed there, and webhooks are often called by programs that are no
// bot at all. So on a service built from the discord preset, such a call
// from a client that sent no Authorization header goes upstream without
// the bot token; a client that sent one (discordgo always does) gets the
// bot token as on every other route.

// CredentialFree reports whether the request r, for the escaped path tail
// below the service's base URL (no leading slash; a version segment may
// lead it or have been taken off), goes upstream without the service's
// credential: a Discord token route on a service built from the discord
// preset, from a client that sent no Authorization. byteproxy_services
// asks it when it builds the outgoing request, and before refusing a
// request whose service token is not set (such a call needs none).
func (s *Service) CredentialFree(r *http.Request, tail string) bool {
	return s.Config.Preset == "discord" && discordTokenRoute(tail) && !SentAuthorization(r)
}

// SentAuthorization reports whether the client's request carried an
// Authorization header: it still does when no byteproxy_auth ran before
// the caller, else byteproxy_auth noted it (VarAuthorization) when it
// removed it.
func SentAuthorization(r *http.Request) bool {
	if _, ok := r.Header["Authorization"]; ok {
		return true
	}
	return caddyhttp.GetVar(r.Context(), VarAuthorization) == true
}

// discordTokenRoute reports whether the escaped path tail (below the
// base URL, no leading slash) is one of Discord's routes authenticated by
// a token in the path, with or without a version segment (v10/...).
func discordTokenRoute(tail string) bool {
	if v, rest, ok := strings.Cut(tail, "/"); ok && isVersion(v) {
		tail = rest
	}
	seg := strings.SplitN(tail, "/", 5)
	if len(seg) < 3 || seg[1] == "" || seg[2] == "" {
		return false
	}
	switch seg[0] {
	case "webhooks":
		return true // /webhooks/{id}/{token} and everything below it
	case "interactions":
		return len(seg) == 4 && seg[3] == "callback"
	}
	return false
}

// isVersion reports an API version segment: "v" and digits.
func isVersion(s string) bool {
	if len(s) < 2 || s[0] != 'v' {
		return false
	}
	for i := 1; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
