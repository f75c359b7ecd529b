package services

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"go.uber.org/zap"

	"github.com/byteproxy/byteproxy/internal/testutil"
	"github.com/byteproxy/byteproxy/modules/gateway"
)

// protoServer is an HTTPS upstream that answers every request with the
// protocol it came in. It counts the requests per protocol and path, and
// the ClientHellos that offered no h2: the lean client's (the Transport
// offers h2 and http/1.1 under http_version auto).
type protoServer struct {
	*httptest.Server
	leanHellos atomic.Int32
	conns      atomic.Int32 // accepted

	mu       sync.Mutex
	requests map[string]int // "HTTP/2.0 /path"
}

// startProtoServer starts one of: "h1", offering http/1.1 alone; "h2",
// speaking HTTP/2 alone (ALPN h2; crypto/tls lets a client that offers
// http/1.1 alone in without a protocol, and net/http then closes the
// connection before reading anything); "h2-alert", speaking HTTP/2 alone
// and refusing the handshake of a client that does not offer h2 (alert
// no_application_protocol, as strict servers do).
func startProtoServer(t *testing.T, kind string) *protoServer {
	s := &protoServer{requests: map[string]int{}}
	s.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.requests[r.Proto+" "+r.URL.Path]++
		s.mu.Unlock()
		_, _ = io.WriteString(w, r.Proto)
	}))
	conf := &tls.Config{NextProtos: []string{"http/1.1"}}
	if kind != "h1" {
		s.EnableHTTP2 = true
		s.Config.Protocols = new(http.Protocols)
		s.Config.Protocols.SetHTTP2(true)
		conf.NextProtos = []string{"h2"}
	}
	conf.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		if slices.Contains(hello.SupportedProtos, "h2") {
			return nil, nil
		}
		s.leanHellos.Add(1)
		if kind != "h2-alert" {
			return nil, nil
		}
		c := s.TLS.Clone()
		c.GetConfigForClient = nil
		c.NextProtos = []string{"x-none"} // no overlap and no h2: crypto/tls sends the alert
		return c, nil
	}
	s.TLS = conf
	s.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			s.conns.Add(1)
		}
	}
	s.StartTLS()
	t.Cleanup(s.Close)
	return s
}

func (s *protoServer) host() string { return strings.TrimPrefix(s.URL, "https://") }

func (s *protoServer) count(key string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests[key]
}

const autoTLSCaddyfile = `{
	byteproxy {
		timeout 5s
		retries 0
		service h1 {
			base_url https://{{H1}}/
			tls_insecure_skip_verify
		}
		service h2 {
			base_url https://{{H2}}/
			tls_insecure_skip_verify
		}
		service h2alert {
			base_url https://{{H2A}}/
			tls_insecure_skip_verify
		}
		service h1strict {
			base_url https://{{H1}}/
		}
		service h1strict11 {
			base_url https://{{H1}}/
			http_version 1.1
		}
		service h2alertstrict {
			base_url https://{{H2A}}/
		}
	}
}

:{{PORT}} {
	byteproxy
}
`

// With http_version auto (the default), bodiless requests to an https
// upstream take the lean HTTP/1.1 client where the upstream agrees to
// HTTP/1.1, and reach an HTTP/2-only upstream through the Transport in
// HTTP/2: none fails, nothing is sent twice, and the route remembers (one
// lean handshake for a burst and what follows). A certificate that fails
// verification gives the same 502 as before on every path: the decline
// is no way around it.
func TestAutoTLSFallsBackToHTTP2(t *testing.T) {
	ups := map[string]*protoServer{"h1": startProtoServer(t, "h1"), "h2": startProtoServer(t, "h2"), "h2alert": startProtoServer(t, "h2-alert")}
	cf := strings.NewReplacer("{{H1}}", ups["h1"].host(), "{{H2}}", ups["h2"].host(), "{{H2A}}", ups["h2alert"].host()).Replace(autoTLSCaddyfile)
	g := testutil.Start(t, cf, testutil.Options{})

	const burst = 20
	for svc, up := range ups {
		want := map[string]string{"h1": "HTTP/1.1"}[svc]
		if want == "" {
			want = "HTTP/2.0"
		}
		// A burst of first requests, then some more one at a time.
		var wg sync.WaitGroup
		results := make([]result, burst+5)
		for i := range burst {
			wg.Go(func() { results[i] = call(t, "GET", g.URL(fmt.Sprintf("/proxy/%s/get", svc)), nil) })
		}
		wg.Wait()
		for i := burst; i < len(results); i++ {
			results[i] = call(t, "GET", g.URL(fmt.Sprintf("/proxy/%s/get", svc)), nil)
		}
		for i, r := range results {
			if r.status != 200 || string(r.body) != want {
				t.Errorf("%s: GET %d: %d %q, want 200 %q", svc, i, r.status, r.body, want)
			}
		}
		if n := up.count(want + " /get"); n != len(results) {
			t.Errorf("%s: the upstream received %d GETs in %s, want %d (each once)", svc, n, want, len(results))
		}
		if r := call(t, "HEAD", g.URL(fmt.Sprintf("/proxy/%s/head", svc)), nil); r.status != 200 || up.count(want+" /head") != 1 {
			t.Errorf("%s: HEAD: %d, upstream saw %d in %s", svc, r.status, up.count(want+" /head"), want)
		}
		if r := call(t, "POST", g.URL(fmt.Sprintf("/proxy/%s/post", svc)), strings.NewReader("x")); r.status != 200 || string(r.body) != want {
			t.Errorf("%s: POST: %d %q, want 200 %q", svc, r.status, r.body, want)
		}
		// The lean client's handshakes: as many as it needed connections
		// for HTTP/1.1, one for an upstream that declined it.
		if n := up.leanHellos.Load(); svc == "h1" && n == 0 || svc != "h1" && n != 1 {
			t.Errorf("%s: %d lean handshakes", svc, n)
		}
	}

	// Certificates are verified on every path, and the answer is the one
	// http_version 1.1 (the lean path alone) gives.
	answer := func(svc, method string) (int, string) {
		var body io.Reader
		if method == "POST" {
			body = strings.NewReader("x")
		}
		r := call(t, method, g.URL("/proxy/"+svc+"/strict"), body)
		var a struct{ Error, Message string }
		_ = json.Unmarshal(r.body, &a)
		return r.status, a.Error + ": " + a.Message
	}
	status, want := answer("h1strict11", "GET")
	if status != http.StatusBadGateway || !strings.Contains(want, "The TLS handshake with https://"+ups["h1"].host()+" failed") {
		t.Fatalf("http_version 1.1, bad certificate: %d %q", status, want)
	}
	for _, c := range []struct{ svc, method string }{{"h1strict", "GET"}, {"h1strict", "POST"}, {"h2alertstrict", "GET"}} {
		s, got := answer(c.svc, c.method)
		got = strings.ReplaceAll(got, ups["h2alert"].host(), ups["h1"].host())
		if s != status || got != want {
			t.Errorf("%s %s, bad certificate: %d %q, want %d %q", c.svc, c.method, s, got, status, want)
		}
	}
	for svc, up := range ups {
		for _, p := range []string{"HTTP/1.1 /strict", "HTTP/2.0 /strict"} {
			if n := up.count(p); n != 0 {
				t.Errorf("%s: %d requests with a certificate that fails verification reached the upstream", svc, n)
			}
		}
	}
}

// A burst of first requests to an HTTP/2 upstream shares one connection
// (http.Transport alone dials one per request and keeps one: firstConn),
// with http_version 2 and with auto, whose lean client adds one handshake
// that declines; a second burst opens none, and one after the pool went
// cold and the gate closed again (gateOpen) opens one.
func TestHTTP2BurstSharesOneConnection(t *testing.T) {
	const burst = 30
	for _, c := range []struct{ version, method string }{{"2", "GET"}, {"auto", "GET"}, {"auto", "POST"}} {
		up := startProtoServer(t, "h2")
		svc := testService(t, gateway.ServiceConfig{BaseURL: up.URL + "/", HTTPVersion: c.version, TLSInsecureSkipVerify: true})
		t.Cleanup(svc.Close)
		f := newForwarder(svc, nil, zap.NewNop(), true)
		gw := httptest.NewServer(f)
		t.Cleanup(gw.Close)
		wantLean := int32(0)
		if c.version == "auto" && c.method == "GET" {
			wantLean = 1
		}
		for round, wantConns := range []int32{1, 1, 2} {
			if round == 2 {
				svc.Transport.CloseIdleConnections()
				for _, g := range connGates(f) {
					g.openUntil.Store(0)
				}
			}
			var wg sync.WaitGroup
			var failed atomic.Int32
			for range burst {
				wg.Go(func() {
					if status, body := getBody(t, gw.URL+"/proxy/svc/x", c.method); status != 200 || body != "HTTP/2.0" {
						failed.Add(1)
					}
				})
			}
			wg.Wait()
			if n, lean := up.conns.Load(), up.leanHellos.Load(); failed.Load() != 0 || lean != wantLean || n-lean != wantConns {
				t.Errorf("http_version %s, %s, burst %d: %d failed, %d connections of which %d lean handshakes; want 0 failed, %d HTTP/2 and %d lean",
					c.version, c.method, round+1, failed.Load(), n, lean, wantConns, wantLean)
			}
		}
	}
}

// connGates are f's firstConn gates.
func connGates(f *forwarder) map[string]*connGate {
	rt := f.rp.Transport
	if r, ok := rt.(*retryTransport); ok {
		rt = r.next
	}
	return rt.(*firstConn).hosts
}
