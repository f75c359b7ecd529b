package services

import (
	"net/url"
	"strings"

	"github.com/byteproxy/byteproxy/modules/services/internal/leanhttp"
)

// The rules that keep a proxied path below its base URL are
// gateway.UnsafePath, which gateway.Service.LocalRefusal applies.

// route is one base URL of a service (the base, or a version's),
// prepared for appending paths.
type route struct {
	scheme, host string
	path         string         // decoded base path, ending in "/"
	rawPath      string         // escaped base path, ending in "/"
	encoded      bool           // the base path needs its escaped form kept
	pool         *leanhttp.Pool // the lean path's connections; nil where it does not go (poolRoutes)
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
