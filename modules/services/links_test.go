package services

import (
	"context"
	"crypto/tls"
	"net/http"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/byteproxy/byteproxy/internal/routes"
	"github.com/byteproxy/byteproxy/modules/gateway"
)

// linkForwarder is a forwarder of a service with a base URL, a version
// under it and one on another host, and a query credential.
func linkForwarder(t testing.TB) *forwarder {
	t.Helper()
	s := testService(t, gateway.ServiceConfig{
		BaseURL: "https://API.example.com:443/api/",
		Versions: map[string]string{
			"v10": "https://api.example.com/api/v10/",
			"up":  "http://uploads.example.com/",
		},
		Auth: &gateway.ServiceAuth{Type: "query", Name: "key", Token: "tok-SECRET-link"},
	})
	return newForwarder(s, nil, zap.NewNop(), false)
}

// clientRequest is the request a client sent to the gateway, as Caddy
// hands it to the proxy: original is the path before any rewrite (it
// differs when handle_path stripped a prefix), trusted whether Caddy
// trusts the peer as a proxy.
func clientRequest(target, original string, trusted bool, header ...string) *http.Request {
	r, _ := http.NewRequest("GET", target, nil)
	orig, _ := http.NewRequest("GET", original, nil)
	ctx := context.WithValue(r.Context(), caddyhttp.OriginalRequestCtxKey, *orig)
	ctx = context.WithValue(ctx, caddyhttp.VarsCtxKey, map[string]any{caddyhttp.TrustedProxyVarKey: trusted})
	r = r.WithContext(ctx)
	for i := 0; i+1 < len(header); i += 2 {
		r.Header.Add(header[i], header[i+1])
	}
	return r
}

// rewritten runs the response headers h through the rewriting of a
// response to r.
func rewritten(f *forwarder, r *http.Request, h http.Header) http.Header {
	_, rest, _ := routes.ProxyPath(r.URL.EscapedPath())
	w := &proxyWriter{f: f, r: r, rest: rest}
	w.rewriteLocations(h)
	return h
}

func TestRewriteLocation(t *testing.T) {
	t.Parallel()
	f := linkForwarder(t)
	r := clientRequest("http://gw.test:3420/proxy/svc/repos/o/r?page=1", "http://gw.test:3420/proxy/svc/repos/o/r?page=1", false)
	const gw = "http://gw.test:3420/proxy/svc/"
	for _, c := range []struct{ name, in, want string }{
		{"base", "https://api.example.com/api/repos/o/r2", gw + "repos/o/r2"},
		{"version wins over base (longest)", "https://api.example.com/api/v10/users/@me", gw + "v10/users/@me"},
		{"version on another host", "http://uploads.example.com/f/1", gw + "up/f/1"},
		{"default port and host case", "HTTPS://Api.Example.COM:443/api/x", gw + "x"},
		{"base without its final slash", "https://api.example.com/api", gw},
		{"version without its final slash", "https://api.example.com/api/v10?x=1", gw + "v10/?x=1"},
		{"query kept byte for byte, fragment kept", "https://api.example.com/api/x?b=2&a=%20;c#frag", gw + "x?b=2&a=%20;c#frag"},
		{"escaped path kept", "https://api.example.com/api/a%2Fb/%E2%9C%93", gw + "a%2Fb/%E2%9C%93"},
		{"credential and proxy key stripped", "https://api.example.com/api/x?page=2&key=tok-SECRET-link&api_key=k&q=1", gw + "x?page=2&q=1"},
		{"only the credential", "https://api.example.com/api/x?key=tok-SECRET-link", gw + "x"},
		{"userinfo dropped", "https://user@api.example.com/api/x", gw + "x"},
		{"relative path resolved against the upstream URL", "r3/issues", gw + "repos/o/r3/issues"},
		{"path-absolute under the base", "/api/repositories/7", gw + "repositories/7"},
		{"query-only reference", "?page=3", gw + "repos/o/r?page=3"},
		{"network-path reference", "//api.example.com/api/y", gw + "y"},
		{"other host untouched", "https://objects.example.net/api/x?sig=1", "https://objects.example.net/api/x?sig=1"},
		{"other scheme untouched", "http://api.example.com/api/x", "http://api.example.com/api/x"},
		{"other port untouched", "https://api.example.com:8443/api/x", "https://api.example.com:8443/api/x"},
		{"outside the base path untouched", "https://api.example.com/login", "https://api.example.com/login"},
		{"prefix that is not a segment untouched", "https://api.example.com/apix", "https://api.example.com/apix"},
		{"relative outside the base stays relative", "/login", "/login"},
		{"dot segment untouched", "https://api.example.com/api/../admin", "https://api.example.com/api/../admin"},
		{"encoded dot segment untouched", "https://api.example.com/api/%2e%2e/admin", "https://api.example.com/api/%2e%2e/admin"},
		{"not a URL", "mailto:a@example.com", "mailto:a@example.com"},
		{"token echoed to another host is redacted", "https://cdn.example.net/x?key=tok-SECRET-link", "https://cdn.example.net/x?key=REDACTED"},
	} {
		for _, k := range []string{"Location", "Content-Location"} {
			h := rewritten(f, r, http.Header{k: {c.in}})
			if got := h.Get(k); got != c.want {
				t.Errorf("%s: %s %q -> %q, want %q", c.name, k, c.in, got, c.want)
			}
		}
	}
}

func TestRewriteLinkHeader(t *testing.T) {
	t.Parallel()
	f := linkForwarder(t)
	r := clientRequest("http://gw.test/proxy/svc/issues", "http://gw.test/proxy/svc/issues", false)
	const gw = "http://gw.test/proxy/svc/"
	for _, c := range []struct{ name, in, want string }{
		{"GitHub pagination",
			`<https://api.example.com/api/repositories/1/issues?page=2>; rel="next", <https://api.example.com/api/repositories/1/issues?page=5>; rel="last"`,
			`<` + gw + `repositories/1/issues?page=2>; rel="next", <` + gw + `repositories/1/issues?page=5>; rel="last"`},
		{"parameters byte for byte",
			`<https://api.example.com/api/a>;rel=next ;  title*=UTF-8'de'n%c3%a4chstes;x="1"`,
			`<` + gw + `a>;rel=next ;  title*=UTF-8'de'n%c3%a4chstes;x="1"`},
		{"commas inside the URL and in quoted parameters",
			`<https://api.example.com/api/a?ids=1,2,3>; title="one, two", <https://api.example.com/api/b>; rel="x\", <y>"`,
			`<` + gw + `a?ids=1,2,3>; title="one, two", <` + gw + `b>; rel="x\", <y>"`},
		{"another host untouched, the next one rewritten",
			`<https://other.example.org/api/x?page=2>; rel="next",<https://api.example.com/api/v10/y>; rel="alternate"`,
			`<https://other.example.org/api/x?page=2>; rel="next",<` + gw + `v10/y>; rel="alternate"`},
		{"relative reference", `</api/x?page=2>; rel="next"`, `<` + gw + `x?page=2>; rel="next"`},
		{"credential stripped", `<https://api.example.com/api/x?key=tok-SECRET-link&page=2>; rel="next"`, `<` + gw + `x?page=2>; rel="next"`},
		{"empty elements", ` , <https://api.example.com/api/x>,, `, ` , <` + gw + `x>,, `},
		{"unparsable: left alone", `https://api.example.com/api/x; rel="next"`, `https://api.example.com/api/x; rel="next"`},
		{"unterminated quote: left alone", `<https://api.example.com/api/x>; rel="next`, `<https://api.example.com/api/x>; rel="next`},
		{"unterminated bracket: left alone", `<https://api.example.com/api/x; rel="next"`, `<https://api.example.com/api/x; rel="next"`},
	} {
		h := rewritten(f, r, http.Header{"Link": {c.in}})
		if got := h.Get("Link"); got != c.want {
			t.Errorf("%s:\n in   %s\n got  %s\n want %s", c.name, c.in, got, c.want)
		}
	}
	// Each Link line is rewritten; the slice the upstream's response
	// came with is not edited in place.
	upstream := []string{`<https://api.example.com/api/1>; rel="prev"`, `<https://api.example.com/api/3>; rel="next"`}
	h := rewritten(f, r, http.Header{"Link": upstream})
	if got := h.Values("Link"); len(got) != 2 || got[0] != `<`+gw+`1>; rel="prev"` || got[1] != `<`+gw+`3>; rel="next"` {
		t.Errorf("two lines: %q", got)
	}
	if upstream[0] != `<https://api.example.com/api/1>; rel="prev"` {
		t.Errorf("the upstream's slice was edited: %q", upstream)
	}
}

// The gateway URL is the one the client used: scheme from TLS or, from a
// trusted proxy only, X-Forwarded-Proto; the Host; the prefix handle_path
// stripped.
func TestRewriteClientOrigin(t *testing.T) {
	t.Parallel()
	f := linkForwarder(t)
	const loc = "https://api.example.com/api/x"
	for _, c := range []struct {
		name string
		r    *http.Request
		want string
	}{
		{"plain", clientRequest("http://gw.test/proxy/svc/a", "http://gw.test/proxy/svc/a", false), "http://gw.test/proxy/svc/x"},
		{"untrusted X-Forwarded-Proto ignored", clientRequest("http://gw.test/proxy/svc/a", "http://gw.test/proxy/svc/a", false, "X-Forwarded-Proto", "https"), "http://gw.test/proxy/svc/x"},
		{"trusted X-Forwarded-Proto", clientRequest("http://gw.test/proxy/svc/a", "http://gw.test/proxy/svc/a", true, "X-Forwarded-Proto", "HTTPS"), "https://gw.test/proxy/svc/x"},
		{"trusted, last line and first element", clientRequest("http://gw.test/proxy/svc/a", "http://gw.test/proxy/svc/a", true, "X-Forwarded-Proto", "http", "X-Forwarded-Proto", "https, http"), "https://gw.test/proxy/svc/x"},
		{"trusted, nonsense ignored", clientRequest("http://gw.test/proxy/svc/a", "http://gw.test/proxy/svc/a", true, "X-Forwarded-Proto", "javascript"), "http://gw.test/proxy/svc/x"},
		{"mount prefix", clientRequest("http://gw.test/proxy/svc/a/b", "http://gw.test/edge/api/proxy/svc/a/b", false), "http://gw.test/edge/api/proxy/svc/x"},
		{"mount prefix, escaping changed by the rewrite", clientRequest("http://gw.test/proxy/svc/~a", "http://gw.test/my%20api/proxy/svc/%7Ea", false), "http://gw.test/my%20api/proxy/svc/x"},
		{"other rewrite: no prefix", clientRequest("http://gw.test/proxy/svc/a", "http://gw.test/gh/a", false), "http://gw.test/proxy/svc/x"},
	} {
		h := rewritten(f, c.r, http.Header{"Location": {loc}})
		if got := h.Get("Location"); got != c.want {
			t.Errorf("%s: %q, want %q", c.name, got, c.want)
		}
	}
	tlsReq := clientRequest("https://gw.test:8443/proxy/svc/a", "https://gw.test:8443/proxy/svc/a", false)
	tlsReq.TLS = &tls.ConnectionState{}
	if got := rewritten(f, tlsReq, http.Header{"Location": {loc}}).Get("Location"); got != "https://gw.test:8443/proxy/svc/x" {
		t.Errorf("TLS: %q", got)
	}
	noHost := clientRequest("http://gw.test/proxy/svc/a", "http://gw.test/api/proxy/svc/a", false)
	noHost.Host = ""
	if got := rewritten(f, noHost, http.Header{"Location": {loc}}).Get("Location"); got != "/api/proxy/svc/x" {
		t.Errorf("no Host: %q", got)
	}
}

// A response without Link, Location or Content-Location pays nothing.
func TestRewriteLocationsAllocatesNothing(t *testing.T) {
	f := linkForwarder(t)
	r := clientRequest("http://gw.test/proxy/svc/a", "http://gw.test/proxy/svc/a", false)
	w := &proxyWriter{f: f, r: r, rest: "/a"}
	h := http.Header{"Content-Type": {"application/json"}, "Etag": {`"1"`}, "X-Ratelimit-Remaining": {"4999"}}
	if n := testing.AllocsPerRun(1000, func() { w.rewriteLocations(h) }); n != 0 {
		t.Errorf("%v allocations per response without such headers", n)
	}
	// Nor one whose URLs point elsewhere, beyond the parsing.
	h = http.Header{"Location": {"https://objects.example.net/x"}}
	w.rewriteLocations(h)
	if h.Get("Location") != "https://objects.example.net/x" {
		t.Errorf("Location %q", h.Get("Location"))
	}
}

func BenchmarkRewriteLocations(b *testing.B) {
	f := linkForwarder(b)
	r := clientRequest("http://gw.test/proxy/svc/repos/o/r/issues", "http://gw.test/proxy/svc/repos/o/r/issues", false)
	w := &proxyWriter{f: f, r: r, rest: "/repos/o/r/issues"}
	b.Run("none", func(b *testing.B) {
		h := http.Header{"Content-Type": {"application/json"}, "Etag": {`"1"`}}
		b.ReportAllocs()
		for b.Loop() {
			w.rewriteLocations(h)
		}
	})
	b.Run("github-link", func(b *testing.B) {
		link := `<https://api.example.com/api/repositories/1/issues?page=2>; rel="next", <https://api.example.com/api/repositories/1/issues?page=5>; rel="last"`
		h := http.Header{}
		b.ReportAllocs()
		for b.Loop() {
			h["Link"] = []string{link}
			w.rewriteLocations(h)
		}
		if !strings.Contains(h.Get("Link"), "gw.test") {
			b.Fatal(h.Get("Link"))
		}
	})
}
