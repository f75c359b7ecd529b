// Package https tests the HTTPS example: the real binary serves the
// gateway on a host name with a certificate from Caddy's local CA, and a
// client that trusts only that CA proxies a request through it.
package https

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/byteproxy/byteproxy/internal/testutil"
)

const host = "byteproxy.localhost"

func TestHTTPSExample(t *testing.T) {
	var upstreamHits atomic.Int64
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		upstreamHits.Add(1)
		if r.Header.Get("Authorization") != "" || r.Header.Get("X-API-Key") != "" {
			t.Errorf("the gateway key reached the upstream")
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]string{"path": r.URL.Path, "query": r.URL.RawQuery})
	}))
	defer upstream.Close()

	caddyfile, err := os.ReadFile("Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	// The test's admin address and loopback only; everything else is the
	// example as shipped.
	cf := strings.Replace(string(caddyfile), "\n{\n", "\n{\n\tadmin {{ADMIN}}\n", 1)
	cf = strings.Replace(cf, "\ttls internal\n", "\ttls internal\n\tbind 127.0.0.1\n", 1)
	port := testutil.FreePort(t)
	in := testutil.Start(t, cf, testutil.Options{Port: port, Env: []string{
		"PROXY_API_KEY=https-test-key",
		"ECHO_UPSTREAM=" + upstream.URL + "/api/",
		fmt.Sprintf("HTTPS_PORT=%d", port),
	}})

	client := trustingClient(t, in, port)
	base := fmt.Sprintf("https://%s:%d", host, port)

	// The certificate is issued right after startup; wait for the first
	// successful handshake.
	var resp *http.Response
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err = client.Get(base + "/health")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET /health over HTTPS: %v\nlogs:\n%s", err, in.Logs())
		}
		time.Sleep(100 * time.Millisecond)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"healthy"`) {
		t.Fatalf("/health: %d %s", resp.StatusCode, body)
	}
	state := resp.TLS
	if state == nil || len(state.PeerCertificates) == 0 {
		t.Fatal("no TLS connection state")
	}
	leaf := state.PeerCertificates[0]
	if err := leaf.VerifyHostname(host); err != nil {
		t.Fatalf("certificate: %v", err)
	}
	if !strings.Contains(leaf.Issuer.CommonName, "Caddy Local Authority") {
		t.Fatalf("issuer %q, want Caddy's local CA", leaf.Issuer.CommonName)
	}

	// A proxied request over HTTPS reaches the upstream with the rest of
	// the path and the query, and without the gateway's key.
	req, _ := http.NewRequest(http.MethodGet, base+"/proxy/echo/users/1?x=1&y=2", nil)
	req.Header.Set("Authorization", "Bearer https-test-key")
	resp, err = client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("X-Proxy-Service") != "echo" {
		t.Fatalf("proxy: %d %v %s", resp.StatusCode, resp.Header, body)
	}
	var got map[string]string
	if err := json.Unmarshal(body, &got); err != nil || got["path"] != "/api/users/1" || got["query"] != "x=1&y=2" {
		t.Fatalf("upstream saw %s (%v)", body, err)
	}
	if upstreamHits.Load() != 1 {
		t.Fatalf("upstream hits %d, want 1", upstreamHits.Load())
	}

	// Without the key, the gateway refuses before the upstream.
	resp, err = client.Get(base + "/proxy/echo/users/1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || upstreamHits.Load() != 1 {
		t.Fatalf("no key: %d, upstream hits %d", resp.StatusCode, upstreamHits.Load())
	}

	// A client that does not trust Caddy's local CA is refused.
	plain := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: client.Transport.(*http.Transport).DialContext}}
	if _, err := plain.Get(base + "/health"); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("untrusted client: %v", err)
	}
}

// trustingClient trusts only the instance's local root CA and dials
// byteproxy.localhost on loopback.
func trustingClient(t *testing.T, in *testutil.Instance, port int) *http.Client {
	t.Helper()
	rootFile := filepath.Join(in.DataDir, "caddy", "pki", "authorities", "local", "root.crt")
	var pem []byte
	deadline := time.Now().Add(20 * time.Second)
	for {
		var err error
		if pem, err = os.ReadFile(rootFile); err == nil && len(pem) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("reading Caddy's root CA: %v\nlogs:\n%s", err, in.Logs())
		}
		time.Sleep(100 * time.Millisecond)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatalf("%s holds no certificate", rootFile)
	}
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	want := fmt.Sprintf("%s:%d", host, port)
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				if addr != want {
					return nil, fmt.Errorf("unexpected dial to %s", addr)
				}
				return dialer.DialContext(ctx, network, fmt.Sprintf("127.0.0.1:%d", port))
			},
		},
	}
}
