package leanhttp

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// alpnUpstream is a TLS server that answers HTTP/1.1 requests on
// connections that negotiated http/1.1 (or none, when h1 says so) and
// counts ClientHellos and requests. offer is its ALPN list; with alert set
// it refuses a client offering no protocol of it (alert
// no_application_protocol), as a strict HTTP/2-only server does, where
// crypto/tls would let an http/1.1 client in without a protocol.
type alpnUpstream struct {
	addr     string
	roots    *x509.CertPool
	hellos   atomic.Int32 // ClientHellos
	requests atomic.Int32 // bytes of a request read on any connection count one
}

func startALPNUpstream(t *testing.T, offer []string, alert bool) *alpnUpstream {
	cert, roots := testCert(t)
	u := &alpnUpstream{roots: roots}
	base := &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: offer}
	conf := base.Clone()
	conf.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		u.hellos.Add(1)
		if alert && !slices.ContainsFunc(hello.SupportedProtos, func(p string) bool { return slices.Contains(offer, p) }) {
			c := base.Clone()
			c.NextProtos = []string{"x-none"} // no overlap and no h2: crypto/tls sends the alert
			return c, nil
		}
		return nil, nil
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", conf)
	if err != nil {
		t.Fatal(err)
	}
	u.addr = ln.Addr().String()
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				tc := c.(*tls.Conn)
				if tc.HandshakeContext(context.Background()) != nil {
					return
				}
				var b [1]byte
				if n, _ := tc.Read(b[:]); n == 0 {
					return // closed by the client before any request
				}
				u.requests.Add(1)
				if tc.ConnectionState().NegotiatedProtocol != "http/1.1" {
					return // HTTP/2 only: what a client sent here is not HTTP/2
				}
				_, _ = io.WriteString(tc, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
			})
		}
	})
	return u
}

func (u *alpnUpstream) pool(t *testing.T, roots *x509.CertPool) *Pool {
	p := NewAutoTLSPool(u.addr, (&net.Dialer{Timeout: 5 * time.Second}).DialContext, &tls.Config{RootCAs: roots})
	t.Cleanup(p.Close)
	return p
}

func (u *alpnUpstream) get(p *Pool) (*http.Response, error) {
	req, _ := http.NewRequest("GET", "https://"+u.addr+"/", nil)
	resp, err := p.RoundTrip(context.Background(), req, 5*time.Second, nil)
	if err == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	return resp, err
}

// A pool made by NewAutoTLSPool speaks HTTP/1.1 to an upstream that agrees
// to it by ALPN, and declines, with nothing sent, one that offers h2 alone
// (whether it lets the client in without a protocol or refuses the
// handshake); Declined then says so until the re-probe, which tries once.
func TestAutoTLSPoolDeclinesHTTP2Only(t *testing.T) {
	h1 := startALPNUpstream(t, []string{"h2", "http/1.1"}, false)
	p := h1.pool(t, h1.roots)
	if resp, err := h1.get(p); err != nil || resp.StatusCode != 200 {
		t.Fatalf("upstream offering both: %v %v", resp, err)
	}
	if p.Declined() {
		t.Error("upstream offering both: declined")
	}

	for _, alert := range []bool{false, true} {
		up := startALPNUpstream(t, []string{"h2"}, alert)
		p := up.pool(t, up.roots)
		if p.Declined() {
			t.Fatalf("alert %v: declined before any handshake", alert)
		}
		_, err := up.get(p)
		if !errors.Is(err, ErrNoHTTP1) {
			t.Fatalf("alert %v: got %v, want ErrNoHTTP1", alert, err)
		}
		if alert != noApplicationProtocol(err) {
			t.Errorf("alert %v: error %q", alert, err)
		}
		// Asked twice: the second asking must not be taken for a re-probe.
		if first, second := p.Declined(), p.Declined(); !first || !second {
			t.Errorf("alert %v: not declined after the handshake", alert)
		}
		hellos := up.hellos.Load()
		// The re-probe: one caller is let through, the others not.
		p.alpn.declined.Store(time.Now().Add(-ReprobeAfter).UnixNano())
		if p.Declined() || !p.Declined() {
			t.Errorf("alert %v: re-probe: want exactly one caller through", alert)
		}
		if _, err := up.get(p); !errors.Is(err, ErrNoHTTP1) || up.hellos.Load() != hellos+1 {
			t.Errorf("alert %v: re-probe: %v after %d handshakes", alert, err, up.hellos.Load()-hellos)
		}
		if n := up.requests.Load(); n != 0 {
			t.Errorf("alert %v: %d requests reached the HTTP/2-only upstream", alert, n)
		}
	}
}

// A burst of first requests to an HTTP/2-only upstream costs one
// handshake: the others wait for its answer.
func TestAutoTLSPoolProbesOnce(t *testing.T) {
	up := startALPNUpstream(t, []string{"h2"}, false)
	p := up.pool(t, up.roots)
	var wg sync.WaitGroup
	var declined atomic.Int32
	for range 20 {
		wg.Go(func() {
			if _, err := up.get(p); errors.Is(err, ErrNoHTTP1) {
				declined.Add(1)
			}
		})
	}
	wg.Wait()
	if declined.Load() != 20 || up.hellos.Load() != 1 || up.requests.Load() != 0 {
		t.Errorf("%d of 20 declined, %d handshakes, %d requests; want 20, 1, 0", declined.Load(), up.hellos.Load(), up.requests.Load())
	}
}

// A certificate that fails verification is an error of its own, never a
// decline: the caller must not go another way around it.
func TestAutoTLSPoolBadCertificateIsNoDecline(t *testing.T) {
	for _, offer := range [][]string{{"http/1.1"}, {"h2"}} {
		up := startALPNUpstream(t, offer, false)
		p := up.pool(t, x509.NewCertPool()) // trusts nothing
		_, err := up.get(p)
		var certErr *tls.CertificateVerificationError
		if !errors.As(err, &certErr) || errors.Is(err, ErrNoHTTP1) || p.Declined() {
			t.Errorf("%v: got %v (declined %v), want a certificate error and no decline", offer, err, p.Declined())
		}
	}
}
