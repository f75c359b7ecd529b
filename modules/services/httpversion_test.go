package services

import (
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/byteproxy/byteproxy/modules/gateway"
)

// versionGateway serves a forwarder for an https service at base with the
// given http_version and lean path switch.
func versionGateway(t *testing.T, base, version string, lean bool) string {
	t.Helper()
	svc := testService(t, gateway.ServiceConfig{BaseURL: base, HTTPVersion: version, TLSInsecureSkipVerify: true})
	f := newForwarder(svc, nil, zap.NewNop(), lean)
	t.Cleanup(svc.Close)
	// The lean path takes the https route unless http_version is 2.
	if want := lean && version != "2"; (f.base.pool != nil) != want {
		t.Fatalf("http_version %s, lean %v: lean pool %v, want %v", version, lean, f.base.pool != nil, want)
	}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return srv.URL
}

// protoUpstream answers every request with the protocol it came in. It
// offers h2 and http/1.1 by ALPN, or http/1.1 alone.
func protoUpstream(t *testing.T, h2 bool) *httptest.Server {
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, r.Proto)
	}))
	up.EnableHTTP2 = h2
	if h2 {
		// httptest offers h2 alone, which crypto/tls lets an http/1.1
		// client through without a protocol (http_version auto takes
		// that for a decline).
		up.TLS = &tls.Config{NextProtos: []string{"h2", "http/1.1"}}
	}
	up.StartTLS()
	t.Cleanup(up.Close)
	return up
}

func getBody(t *testing.T, url, method string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(map[bool]string{true: "x"}[method == "POST"]))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Each http_version speaks what it says to an upstream offering both, on
// both paths; the lean path carries bodiless GETs in HTTP/1.1 unless the
// service asks for HTTP/2.
func TestHTTPVersionChoosesProtocol(t *testing.T) {
	up := protoUpstream(t, true)
	for _, c := range []struct {
		version   string
		lean      bool
		get, post string
	}{
		{"auto", false, "HTTP/2.0", "HTTP/2.0"},
		{"auto", true, "HTTP/1.1", "HTTP/2.0"},
		{"1.1", false, "HTTP/1.1", "HTTP/1.1"},
		{"1.1", true, "HTTP/1.1", "HTTP/1.1"},
		{"2", false, "HTTP/2.0", "HTTP/2.0"},
		{"2", true, "HTTP/2.0", "HTTP/2.0"},
	} {
		gw := versionGateway(t, up.URL+"/", c.version, c.lean)
		for _, m := range []struct{ method, want string }{{"GET", c.get}, {"POST", c.post}} {
			status, body := getBody(t, gw+"/proxy/svc/x", m.method)
			if status != 200 || body != m.want {
				t.Errorf("http_version %s, lean %v, %s: got %d %q, want 200 %q", c.version, c.lean, m.method, status, body, m.want)
			}
		}
	}
}

// http_version 2 fails with a 502 that says why, whether the upstream has
// ALPN without h2 (it refuses the handshake) or no ALPN at all (it would
// otherwise be spoken to in HTTP/1.1).
func TestHTTPVersion2RefusesHTTP1Upstream(t *testing.T) {
	h1 := protoUpstream(t, false)
	noALPN := tlsUpstreamWithoutALPN(t)
	for name, base := range map[string]string{"http/1.1 only": h1.URL + "/", "no ALPN": "https://" + noALPN + "/"} {
		for _, lean := range []bool{true, false} {
			gw := versionGateway(t, base, "2", lean)
			status, body := getBody(t, gw+"/proxy/svc/x", "GET")
			var answer struct{ Error, Message, Service string }
			_ = json.Unmarshal([]byte(body), &answer)
			if status != http.StatusBadGateway || answer.Error != "Bad Gateway" || !strings.Contains(answer.Message, "did not negotiate HTTP/2") {
				t.Errorf("%s, lean %v: got %d %s, want 502 naming HTTP/2", name, lean, status, body)
			}
		}
	}
}

// tlsUpstreamWithoutALPN is an HTTPS upstream whose TLS has no ALPN: it
// answers HTTP/1.1 whatever the client offers.
func tlsUpstreamWithoutALPN(t *testing.T) string {
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, r.Proto)
	}))
	up.StartTLS() // for its certificate and handler

	conf := up.TLS.Clone()
	conf.NextProtos = nil
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: up.Config.Handler, TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){}}
	go func() { _ = srv.Serve(tls.NewListener(ln, conf)) }()
	t.Cleanup(func() { srv.Close(); up.Close() })
	return ln.Addr().String()
}

func TestHTTPVersionValidation(t *testing.T) {
	for _, c := range []struct {
		cfg  gateway.ServiceConfig
		want string
	}{
		{gateway.ServiceConfig{BaseURL: "https://a.example/", HTTPVersion: "3"}, `http_version: unknown HTTP version "3"`},
		{gateway.ServiceConfig{BaseURL: "http://a.example/", HTTPVersion: "2"}, "http_version: 2 needs an https base URL"},
		{gateway.ServiceConfig{BaseURL: "https://a.example/", HTTPVersion: "2", Versions: map[string]string{"v1": "http://b.example/"}}, "http_version: 2 needs https base URLs; version v1 is http"},
	} {
		_, err := gateway.BuildService("svc", c.cfg, "config", gateway.BuildOptions{})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: got %v, want %q", c.cfg, err, c.want)
		}
	}
	for _, v := range []string{"", "auto", "1.1"} {
		s, err := gateway.BuildService("svc", gateway.ServiceConfig{BaseURL: "http://a.example/", HTTPVersion: v}, "config", gateway.BuildOptions{})
		if err != nil {
			t.Fatalf("%q: %v", v, err)
		}
		if want := map[string]string{"": "auto"}[v]; s.HTTPVersion != v && s.HTTPVersion != want {
			t.Errorf("%q: effective %q", v, s.HTTPVersion)
		}
	}
}
