package services

import (
	"net/url"
	"strings"

	"github.com/byteproxy/byteproxy/modules/services/internal/leanhttp"
)

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

// unsafePath returns why the escaped path rest ("/..." after the service
// key) is refused, or "" when it may be forwarded.
func unsafePath(rest string) string {
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

// route is one base URL of a service (the base, or a version's),
// prepared for appending paths.
type route struct {
	scheme, host string
	path         string         // decoded base path, ending in "/"
	rawPath      string         // escaped base path, ending in "/"
	encoded      bool           // the base path needs its escaped form kept
	pool         *leanhttp.Pool // the lean path's connections; nil unless plain http and the lean path is on
}

func newRoute(u *url.URL) route {
	esc := u.EscapedPath()
	return route{scheme: u.Scheme, host: u.Host, path: u.Path, rawPath: esc, encoded: esc != u.Path}
}

// setPath points u (the outgoing request's URL) at the escaped path tail
// below rt. A tail of plain characters needs no escaped form; otherwise
// the escaped form is kept exactly as the client sent it.
func (rt *route) setPath(u *url.URL, tail string) {
	tail = strings.TrimLeft(tail, "/") // "//host" must not become a network-path reference
	if !rt.encoded && plainPath(tail) {
		u.Path, u.RawPath = rt.path+tail, ""
		return
	}
	u.RawPath = rt.rawPath + tail
	if dec, err := url.PathUnescape(u.RawPath); err == nil {
		u.Path = dec
	} else {
		u.Path = u.RawPath // unreachable: the path was validated; keeps RawPath in use
	}
}

// plainPath reports whether p has only characters that url.URL writes
// unescaped, so that Path alone reproduces it.
func plainPath(p string) bool {
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '-', c == '_', c == '.', c == '~', c == '/',
			c == '$', c == '&', c == '+', c == ',', c == ':', c == ';', c == '=', c == '@':
		default:
			return false
		}
	}
	return true
}
