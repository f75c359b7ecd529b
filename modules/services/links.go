package services

import (
	"net/http"
	"net/url"
	"sort"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/byteproxy/byteproxy/internal/httpx"
	"github.com/byteproxy/byteproxy/modules/gateway"
)

// The URLs a response hands the client. An upstream names itself in Link
// (pagination), Location (redirects, created resources) and
// Content-Location: a client library that follows such a URL as it is
// leaves the gateway, and sends its proxy key to the upstream without the
// service's credential. So the values that point under the service's base
// URL or one of its version URLs are rewritten to the gateway's own URL
// for that service, as the client reached it (scheme, host, and the path
// prefix a `handle_path` stripped): a redirect stays a redirect, and the
// client follows it through the gateway. Every other URL passes as it is.
// Bodies are never rewritten.

// linkBase is one of the service's URLs (its base URL or a version's) as
// a response header may name it, with the gateway path that stands for it.
type linkBase struct {
	scheme string // lowercase
	host   string // lowercase, without the scheme's default port
	path   string // escaped, ending in "/"
	gw     string // "/proxy/{key}/" or "/proxy/{key}/{version}/"
}

// newLinkBases lists the service's URLs, longest path first (so that a
// version under the base URL wins over the base), the base URL first
// among equals.
func newLinkBases(s *gateway.Service) []linkBase {
	gw := "/proxy/" + url.PathEscape(s.Key) + "/"
	bases := []linkBase{newLinkBase(s.BaseURL, gw)}
	versions := make([]string, 0, len(s.Versions))
	for v := range s.Versions {
		versions = append(versions, v)
	}
	sort.Strings(versions)
	for _, v := range versions {
		bases = append(bases, newLinkBase(s.Versions[v], gw+url.PathEscape(v)+"/"))
	}
	sort.SliceStable(bases, func(i, j int) bool { return len(bases[i].path) > len(bases[j].path) })
	return bases
}

func newLinkBase(u *url.URL, gw string) linkBase {
	scheme := strings.ToLower(u.Scheme)
	return linkBase{scheme: scheme, host: normalHost(scheme, u.Host), path: u.EscapedPath(), gw: gw}
}

// normalHost is a URL's host as compared: lowercase, without the scheme's
// default port.
func normalHost(scheme, host string) string {
	host = strings.ToLower(host)
	switch {
	case scheme == "https" && strings.HasSuffix(host, ":443"):
		return host[:len(host)-4]
	case scheme == "http" && strings.HasSuffix(host, ":80"):
		return host[:len(host)-3]
	}
	return strings.TrimSuffix(host, ":")
}

// locationHeaders are the response headers whose URLs are rewritten.
var locationHeaders = [...]string{"Link", "Location", "Content-Location"}

// rewriteLocations rewrites the URLs of the Link, Location and
// Content-Location response headers in h (see above). A response without
// them costs three map lookups and no allocation
// (TestRewriteLocationsAllocatesNothing, BenchmarkRewriteLocations).
func (w *proxyWriter) rewriteLocations(h http.Header) {
	if h["Link"] == nil && h["Location"] == nil && h["Content-Location"] == nil || w.r == nil {
		return
	}
	lr := linkRewriter{f: w.f, r: w.r, rest: w.rest}
	for _, k := range locationHeaders {
		vv := h[k]
		var out []string // a new slice once a value changes
		for i, v := range vv {
			nv := lr.value(k, v)
			if nv == v {
				continue
			}
			if out == nil {
				out = append(make([]string, 0, len(vv)), vv...)
			}
			out[i] = nv
		}
		if out != nil {
			h[k] = out
		}
	}
}

// linkRewriter rewrites the URLs of one response. What it needs of the
// client's request is worked out once, and only when a URL is rewritten.
type linkRewriter struct {
	f        *forwarder
	r        *http.Request // the client's request
	rest     string        // its escaped path below the service key
	origin   string        // scheme://host/prefix the client reached the gateway at
	hasOrig  bool
	upstream *url.URL // the upstream request's URL, for relative references
}

// value rewrites one value of header k. Whatever the result, the
// service's own token never reaches the client in it (an upstream that
// echoes a query credential into a URL, say).
func (lr *linkRewriter) value(k, v string) string {
	if k == "Link" {
		v = rewriteLinkValue(v, lr.ref)
	} else if nv, ok := lr.ref(strings.TrimSpace(v)); ok {
		v = nv
	}
	return lr.f.svc.Redact(v)
}

// ref returns the gateway's URL for the URI reference ref and true when
// ref points under one of the service's URLs. A relative reference is
// resolved against the upstream request's URL first; one that resolves
// elsewhere is left as it is, so the client resolves it against the
// gateway and stays there.
func (lr *linkRewriter) ref(ref string) (string, bool) {
	abs := ref
	if !hasScheme(ref) {
		u, err := url.Parse(ref)
		if err != nil {
			return "", false
		}
		abs = lr.upstreamURL().ResolveReference(u).String()
	}
	p, ok := splitAbsolute(abs)
	if !ok {
		return "", false
	}
	b, tail, ok := lr.f.matchBase(p)
	if !ok {
		return "", false
	}
	var sb strings.Builder
	origin := lr.clientOrigin()
	sb.Grow(len(origin) + len(b.gw) + len(tail) + len(p.query) + len(p.fragment) + 2)
	sb.WriteString(origin)
	sb.WriteString(b.gw)
	sb.WriteString(tail)
	// The query as the upstream wrote it, minus what the gateway never
	// hands out: a proxy key parameter, and the service's credential
	// (which the gateway adds again when the client follows the URL).
	q := httpx.StripQueryParam(p.query, "api_key")
	if name := lr.f.svc.QueryCredentialName(); name != "" {
		q = httpx.StripQueryParam(q, name)
	}
	if q != "" || p.hasQuery && p.query == "" {
		sb.WriteByte('?')
		sb.WriteString(q)
	}
	if p.hasFragment {
		sb.WriteByte('#')
		sb.WriteString(p.fragment)
	}
	return sb.String(), true
}

// upstreamURL is the URL the request went to upstream, without the
// credential: what outgoing (headers.go) builds.
func (lr *linkRewriter) upstreamURL() *url.URL {
	if lr.upstream == nil {
		rt, tail := lr.f.route(lr.rest)
		u := &url.URL{Scheme: rt.scheme, Host: rt.host}
		rt.setPath(u, tail)
		u.RawQuery = httpx.StripQueryParam(lr.r.URL.RawQuery, "api_key")
		lr.upstream = u
	}
	return lr.upstream
}

// clientOrigin is where the client reached the gateway: scheme, host and
// mount prefix, "https://gw.example/api" for a client that called
// https://gw.example/api/proxy/github/... through `handle_path /api/*`.
// Without a Host (HTTP/1.0) it is the prefix alone, and the URLs are
// path-absolute references.
func (lr *linkRewriter) clientOrigin() string {
	if !lr.hasOrig {
		lr.origin, lr.hasOrig = clientOrigin(lr.r), true
	}
	return lr.origin
}

func clientOrigin(r *http.Request) string {
	prefix := httpx.MountPrefix(r)
	if r.Host == "" {
		if strings.HasPrefix(prefix, "//") {
			prefix = "" // would read as a host
		}
		return prefix
	}
	return clientScheme(r) + "://" + r.Host + prefix
}

// clientScheme is the scheme the client used: https on a TLS connection;
// behind a proxy that Caddy trusts (the server's trusted_proxies), the
// proxy's X-Forwarded-Proto, as Caddy's reverse_proxy reads it (the last
// header line). A client that is not a trusted proxy cannot choose it.
func clientScheme(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	if trusted, _ := caddyhttp.GetVar(r.Context(), caddyhttp.TrustedProxyVarKey).(bool); trusted {
		if vv := r.Header["X-Forwarded-Proto"]; len(vv) > 0 {
			p, _, _ := strings.Cut(vv[len(vv)-1], ",")
			switch p = strings.TrimSpace(p); {
			case strings.EqualFold(p, "https"):
				scheme = "https"
			case strings.EqualFold(p, "http"):
				scheme = "http"
			}
		}
	}
	return scheme
}

// matchBase finds the service URL that p lies under, longest first, and
// the escaped path below it. A path with a dot segment is not rewritten:
// the gateway would refuse it anyway, and it may not be under the base at
// all once resolved.
func (f *forwarder) matchBase(p absURL) (*linkBase, string, bool) {
	scheme := strings.ToLower(p.scheme)
	host := normalHost(scheme, p.host)
	path := p.path
	if path == "" {
		path = "/"
	}
	for i := range f.links {
		b := &f.links[i]
		if b.scheme != scheme || b.host != host {
			continue
		}
		var tail string
		switch {
		case strings.HasPrefix(path, b.path):
			tail = path[len(b.path):]
		case path == b.path[:len(b.path)-1]: // the base without its final slash
		default:
			continue
		}
		if gateway.UnsafePath("/"+tail) != "" {
			return nil, "", false
		}
		return b, tail, true
	}
	return nil, "", false
}

// absURL is an absolute http(s) URL cut into its parts as written.
type absURL struct {
	scheme, host, path, query, fragment string
	hasQuery, hasFragment               bool
}

// splitAbsolute cuts s, an absolute URL with an authority, into its parts
// without re-encoding anything. Userinfo is dropped from the host: the
// gateway's URL has none.
func splitAbsolute(s string) (absURL, bool) {
	var p absURL
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok || !validScheme(scheme) {
		return p, false
	}
	p.scheme = scheme
	end := strings.IndexAny(rest, "/?#")
	if end < 0 {
		end = len(rest)
	}
	p.host = rest[:end]
	if at := strings.LastIndexByte(p.host, '@'); at >= 0 {
		p.host = p.host[at+1:]
	}
	rest = rest[end:]
	if i := strings.IndexByte(rest, '#'); i >= 0 {
		rest, p.fragment, p.hasFragment = rest[:i], rest[i+1:], true
	}
	if i := strings.IndexByte(rest, '?'); i >= 0 {
		rest, p.query, p.hasQuery = rest[:i], rest[i+1:], true
	}
	p.path = rest
	return p, p.host != ""
}

// hasScheme reports whether the URI reference ref starts with a scheme
// and a colon, that is, whether it is absolute.
func hasScheme(ref string) bool {
	scheme, _, ok := strings.Cut(ref, ":")
	return ok && validScheme(scheme)
}

// validScheme: a letter, then letters, digits, "+", "-" or "." (RFC 3986
// section 3.1).
func validScheme(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z':
		case i > 0 && ('0' <= c && c <= '9' || c == '+' || c == '-' || c == '.'):
		default:
			return false
		}
	}
	return true
}

// rewriteLinkValue rewrites the URI references of a Link header value
// (RFC 8288 section 3: comma-separated `<URI-Reference> *(; param)`) with
// rewrite, keeping everything else byte for byte. Commas inside the
// angle brackets or in quoted parameter values do not separate links. A
// value that does not parse is returned as it is.
func rewriteLinkValue(v string, rewrite func(string) (string, bool)) string {
	var b strings.Builder
	copied := 0 // v[:copied] is in b
	for i := 0; i < len(v); {
		// Between links: optional whitespace and empty list elements.
		if c := v[i]; c == ' ' || c == '\t' || c == ',' {
			i++
			continue
		}
		if v[i] != '<' {
			return v
		}
		end := strings.IndexByte(v[i+1:], '>')
		if end < 0 {
			return v
		}
		start, stop := i+1, i+1+end
		if nu, ok := rewrite(v[start:stop]); ok {
			b.WriteString(v[copied:start])
			b.WriteString(nu)
			copied = stop
		}
		// The parameters, up to the comma that ends this link.
		i = stop + 1
		for i < len(v) && v[i] != ',' {
			if v[i] == '"' {
				i++
				for i < len(v) && v[i] != '"' {
					if v[i] == '\\' {
						i++
					}
					i++
				}
				if i >= len(v) {
					return v // an unterminated quoted string
				}
			}
			i++
		}
	}
	if copied == 0 {
		return v
	}
	b.WriteString(v[copied:])
	return b.String()
}
