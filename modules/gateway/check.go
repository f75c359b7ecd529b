package gateway

import (
	"net/http"
	"net/url"
	"strings"
)

// AllowedMethods is the Allow header of a 405: the methods of HTTP APIs
// (other methods pass too, except TRACE and CONNECT).
const AllowedMethods = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"

// LocalRefusal answers what the gateway refuses for this service before
// contacting the upstream: methods and upgrades it never forwards (405
// for TRACE and CONNECT, which the caller answers with an Allow header of
// AllowedMethods; 400 for an upgrade other than WebSocket), then, in the
// original's order, the GitHub `/org/` hint (400), a path that would climb
// above the base URL (400), and a token that is not configured (401). It
// returns status 0 when the request may go upstream. rest is the escaped
// path below the service key ("/...").
//
// byteproxy_services answers these refusals; byteproxy_ratelimit asks the
// same question first, so that a request the gateway refuses itself
// spends nothing of any limit.
func (s *Service) LocalRefusal(r *http.Request, rest string) (status int, body any) {
	switch r.Method {
	case http.MethodTrace, http.MethodConnect:
		return http.StatusMethodNotAllowed, methodNotAllowedBody{
			Error:   "Method not allowed",
			Message: r.Method + " is not forwarded: the gateway answers it itself.",
			Allowed: allowedMethods,
			Service: s.Key,
		}
	}
	if UpgradeRefused(r.Header) {
		return http.StatusBadRequest, invalidPathBody{
			Error:   "Upgrade not allowed",
			Message: "Only 'Upgrade: websocket' is forwarded.",
			Service: s.Key,
		}
	}
	if s.Config.Preset == "github" && (rest == "/org" || strings.HasPrefix(rest, "/org/")) {
		return http.StatusBadRequest, githubHintBody{
			Error: "Invalid GitHub API path. Did you mean '/orgs/:org' instead of '/org/:org'?",
			Hint:  "GitHub's organization endpoints live under /orgs/, e.g. /proxy/" + s.Key + "/orgs/{org}/repos",
		}
	}
	if reason := UnsafePath(rest); reason != "" {
		return http.StatusBadRequest, invalidPathBody{Error: "Invalid path", Message: reason, Service: s.Key}
	}
	if s.HasAuth() && !s.TokenConfigured() && !s.CredentialFree(r, rest[1:]) {
		hint := "Set the token of the service's auth setting in the byteproxy configuration"
		if s.TokenEnv != "" {
			hint = "Set the environment variable: " + s.TokenEnv
		}
		return http.StatusUnauthorized, tokenMissingBody{
			Error:    "Authentication token missing for " + s.Key,
			Hint:     hint,
			AuthType: s.AuthType(),
		}
	}
	return 0, nil
}

type githubHintBody struct {
	Error string `json:"error"`
	Hint  string `json:"hint"`
}

type tokenMissingBody struct {
	Error    string `json:"error"`
	Hint     string `json:"hint"`
	AuthType string `json:"authType"`
}

// UpgradeRefused reports whether the client asks for a protocol upgrade
// other than WebSocket: only `Upgrade: websocket` (one token, any case)
// passes; an upgrade to anything else (h2c, say) would open a tunnel the
// gateway cannot see into.
func UpgradeRefused(h http.Header) bool {
	up, ok := h["Upgrade"]
	if !ok {
		return false
	}
	return len(up) != 1 || !strings.EqualFold(strings.TrimSpace(up[0]), "websocket")
}

// methodNotAllowedBody is the 405 of every endpoint (byteproxy_manage
// writes the same fields), with the service of a proxy request.
type methodNotAllowedBody struct {
	Error   string   `json:"error"`
	Message string   `json:"message"`
	Allowed []string `json:"allowed"`
	Service string   `json:"service"`
}

// allowedMethods is AllowedMethods as a list, for the 405 body. Read-only:
// it is marshaled, never handed out to be changed.
var allowedMethods = strings.Split(AllowedMethods, ", ")

// invalidPathBody is the body of the refusals that name no other fields.
type invalidPathBody struct {
	Error   string `json:"error"`
	Message string `json:"message"`
	Service string `json:"service"`
}

// The rules that keep a proxied path below its service's base URL. They
// work on the escaped path, so what the client encoded stays encoded
// upstream (%2F is not turned into a slash).
//
// The upstream's scheme and host come from the base URL alone and the
// path is only ever appended to the base path, so nothing in a path
// (`//host`, `@`, `\`, an encoded anything) can change the host. What is
// left is climbing: a `.` or `..` segment that the upstream, or a server
// in front of it, resolves against the base path. Those are refused, in
// every disguise an upstream might decode: percent-encoded (%2e%2e), behind
// an encoded slash (..%2f), a backslash (..\ or ..%5c, which some servers
// treat as a slash) or a path parameter (..;, which some servers strip).

// UnsafePath returns why the escaped path rest ("/..." after the service
// key) is refused, or "" when it may be forwarded.
func UnsafePath(rest string) string {
	if strings.IndexByte(rest, '%') >= 0 {
		// Decoded, an encoded slash or backslash separates segments too,
		// and %2e is a dot.
		dec, err := url.PathUnescape(rest)
		if err != nil {
			return "The path is not validly percent-encoded."
		}
		rest = dec
	}
	if dotSegment(rest) {
		return "Path segments '.' and '..' are not allowed (also percent-encoded): a proxied path stays below the service's base URL."
	}
	return ""
}

// dotSegment reports whether s has a "." or ".." segment between slashes
// or backslashes, ignoring a ";parameter".
func dotSegment(s string) bool {
	start := 0
	for i := 0; i <= len(s); i++ {
		if i < len(s) && s[i] != '/' && s[i] != '\\' {
			continue
		}
		seg := s[start:i]
		if j := strings.IndexByte(seg, ';'); j >= 0 {
			seg = seg[:j]
		}
		if seg == "." || seg == ".." {
			return true
		}
		start = i + 1
	}
	return false
}
