package services

import (
	"net/http"
	"net/textproto"
	"net/url"
	"slices"
	"strings"

	"golang.org/x/net/http/httpguts"

	"github.com/byteproxy/byteproxy/internal/httpx"
)

// The rules for what goes upstream, in one place for both ways of
// forwarding (the ReverseProxy's Rewrite and the lean path call outgoing).

// outgoing fills the URL u and the empty header map h of the request that
// goes upstream for the client's request in, to route rt with the escaped
// path tail below it:
//
//   - the route's scheme and host, its base path with the tail, and the
//     client's raw query byte for byte minus `api_key`;
//   - the client's end-to-end headers, minus the hop-by-hop headers and
//     those the Connection header lists (RFC 9110 section 7.6.1), minus
//     the headers that stay at the gateway (clientOnly); `Te: trailers`
//     passes;
//   - the service's default headers where the client sent none;
//   - the service's credential, which always wins (except on Discord's
//     routes that a token in the path authenticates, when the client sent
//     no Authorization: gateway.Service.CredentialFree);
//   - an empty User-Agent where there is none, so that Go adds none.
//
// The client's header values are shared with in (the same request; the
// outgoing request is written by http.Request.Write or http.Transport,
// which never modify them); every value the gateway adds is this
// request's own slice, since no slice may be handed to two requests.
func (f *forwarder) outgoing(h http.Header, u *url.URL, in *http.Request, rt *route, tail string) {
	u.Scheme, u.Host = rt.scheme, rt.host
	rt.setPath(u, tail)
	u.RawQuery = httpx.StripQueryParam(in.URL.RawQuery, "api_key")

	conn := in.Header["Connection"]
	for k, vv := range in.Header {
		if hopByHop(k) || clientOnly(k) || conn != nil && httpguts.HeaderValuesContainsToken(conn, k) {
			continue
		}
		h[k] = vv
	}
	if te := in.Header["Te"]; te != nil && httpguts.HeaderValuesContainsToken(te, "trailers") {
		h["Te"] = []string{"trailers"}
	}
	for _, d := range f.defaults {
		if _, ok := h[d.key]; !ok {
			h[d.key] = slices.Clone(d.vals)
		}
	}
	if !f.svc.CredentialFree(in, tail) {
		f.svc.ApplyCredential(h, u)
	}
	if _, ok := h["User-Agent"]; !ok {
		h["User-Agent"] = []string{""}
	}
}

// hopByHop: the headers of one connection, which no proxy forwards
// (ReverseProxy's list, RFC 9110 section 7.6.1).
func hopByHop(k string) bool {
	switch k {
	case "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
		"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade":
		return true
	}
	return false
}

// clientOnly reports whether the client's request header k stays at the
// gateway. The list (README, Proxy):
//
//   - the client's credentials for the gateway: Authorization,
//     Proxy-Authorization, X-API-Key;
//   - claims about the client's identity or the request's route, which
//     upstreams and the servers in front of them may believe: Forwarded,
//     X-Forwarded-* (any), X-Real-IP, True-Client-IP, X-Client-IP,
//     CF-Connecting-IP, X-Original-URL, X-Rewrite-URL.
//
// Names compare case-insensitively and with `_` as `-`, as servers behind
// CGI-style gateways read them (X_Real_IP is X-Real-IP there).
func clientOnly(k string) bool {
	if strings.IndexByte(k, '_') >= 0 {
		k = textproto.CanonicalMIMEHeaderKey(strings.ReplaceAll(k, "_", "-"))
	}
	switch k {
	case "Authorization", "Proxy-Authorization", "X-Api-Key",
		"Forwarded", "X-Real-Ip", "True-Client-Ip", "X-Client-Ip", "Cf-Connecting-Ip",
		"X-Original-Url", "X-Rewrite-Url":
		return true
	}
	return strings.HasPrefix(k, "X-Forwarded-")
}

// upgrading reports whether the client's request is a protocol upgrade,
// as ReverseProxy decides it: a Connection header with the token
// "upgrade" and an Upgrade header.
func upgrading(h http.Header) bool {
	return h["Upgrade"] != nil && httpguts.HeaderValuesContainsToken(h["Connection"], "upgrade")
}
