package auth

import (
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// Without a key, the management scope trusts where a request comes from,
// so it must be sure the request comes from a program on this machine and
// not from a web page in a browser on this machine, nor from anyone behind
// a proxy on this machine. These are the rules of Caddy's own admin
// endpoint (admin.go: checkHost, checkOrigin), tightened for a listener
// that may also face the internet.

// forwardingHeaders mark a request that a proxy passed on: the TCP peer is
// then the proxy, not the client. Any of them refuses a keyless management
// request, whatever it says (a proxy on loopback would otherwise open the
// management API to everyone who reaches the proxy).
var forwardingHeaders = []string{
	"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto",
	"X-Real-Ip", "Via", "True-Client-Ip", "X-Client-Ip", "Cf-Connecting-Ip",
}

// localNames are the Host (and Origin host) names that address this
// machine: those of Caddy's admin endpoint. Anything else, including a
// name that resolves to 127.0.0.1 today, may be an attacker's DNS name
// (DNS rebinding).
var localNames = map[string]bool{"localhost": true, "127.0.0.1": true, "::1": true}

// setKey is the remedy every refusal names.
const setKey = "a management key (auth management { key {env.MANAGEMENT_API_KEY} } in the byteproxy global option) to manage the gateway "

// refusal is why a keyless management request is refused: a short reason
// for the debug log and the message of the 403.
type refusal struct {
	reason  string
	message string
}

// notLocal returns why r may not use the management API without a key, or
// nil when it may: the TCP peer and Caddy's client IP are loopback, no
// proxy passed the request on, it is addressed to a loopback name, and no
// web page of another origin sent it.
func notLocal(r *http.Request) *refusal {
	if !peerIsLoopback(r.RemoteAddr) {
		return &refusal{"not loopback", "Management API is only available from localhost when no management key is configured. " +
			"Set " + setKey + "remotely."}
	}
	for _, name := range forwardingHeaders {
		if _, ok := r.Header[name]; ok {
			return &refusal{"forwarded", "This request came through a proxy (it carries " + name + "). " +
				"Without a management key, /manage/* answers only clients on this machine that connect directly: " +
				"through a proxy it would be open to everyone who can reach the proxy. Set " + setKey + "through a proxy."}
		}
	}
	if ip, ok := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string); ok && ip != "" && !ipIsLoopback(ip) {
		return &refusal{"client ip not loopback", "The client address Caddy resolved for this request (see trusted_proxies and client_ip_headers) is not loopback. " +
			"Without a management key, /manage/* answers only clients on this machine. Set " + setKey + "remotely."}
	}
	if !isLocalHost(r.Host) {
		return &refusal{"host not local", "The request is not addressed to localhost, 127.0.0.1 or [::1] (Host header). " +
			"Without a management key, /manage/* answers only requests to a loopback name, so that no web page can reach it " +
			"through a DNS name of its own (DNS rebinding). Call http://localhost:<port>/manage/..., or set " +
			setKey + "under another name."}
	}
	if crossSite(r) {
		return &refusal{"cross-site", "A web page of another origin sent this request. Without a management key, " +
			"/manage/* does not answer browsers on behalf of other sites (cross-site request forgery). " +
			"Set " + setKey + "from a browser app."}
	}
	return nil
}

// isLocalHost reports whether a Host header names this machine: localhost,
// 127.0.0.1 or [::1], with any port (or none). Case-insensitive, as host
// names are.
func isLocalHost(host string) bool {
	if host == "" {
		return false // HTTP/1.0 without Host: nothing says where it was meant to go
	}
	h := host
	if strings.HasPrefix(h, "[") || strings.Contains(h, ":") {
		var port string
		var err error
		h, port, err = net.SplitHostPort(host)
		if err != nil {
			// "[::1]" has no port; "::1" without brackets is not a Host.
			if !strings.HasPrefix(host, "[") || !strings.HasSuffix(host, "]") {
				return false
			}
			h, port = host[1:len(host)-1], ""
		} else if !strings.HasPrefix(host, "[") && strings.Contains(h, ":") {
			return false
		}
		if !validPort(port) {
			return false
		}
	}
	return localNames[strings.ToLower(h)]
}

func validPort(p string) bool {
	if len(p) > 5 {
		return false
	}
	for i := 0; i < len(p); i++ {
		if p[i] < '0' || p[i] > '9' {
			return false
		}
	}
	return true
}

// crossSite reports whether a browser sent the request on behalf of a page
// that is not on this machine: an Origin whose host is not a loopback name
// (also "null", what sandboxed frames and some redirects send), or, when
// a browser sent no Origin (a GET), Sec-Fetch-Site: cross-site. Programs
// such as curl send neither.
func crossSite(r *http.Request) bool {
	if v, ok := r.Header["Origin"]; ok {
		if len(v) != 1 {
			return true
		}
		u, err := url.Parse(v[0])
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || !isLocalHost(u.Host) {
			return true
		}
	}
	for _, v := range r.Header["Sec-Fetch-Site"] {
		if strings.EqualFold(strings.TrimSpace(v), "cross-site") {
			return true
		}
	}
	return false
}

// ipIsLoopback reports whether an address (as Caddy writes the client IP)
// is loopback.
func ipIsLoopback(s string) bool {
	a, err := netip.ParseAddr(s)
	return err == nil && a.Unmap().IsLoopback()
}
