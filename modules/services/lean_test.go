package services

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/byteproxy/byteproxy/modules/gateway"
	"github.com/byteproxy/byteproxy/modules/services/internal/rawup"
)

func TestLeanTakesOnlyWhatItCanResend(t *testing.T) {
	cases := []struct {
		method string
		body   io.Reader
		header string
		lean   bool
	}{
		{"GET", nil, "", true},
		{"HEAD", nil, "", true},
		{"OPTIONS", nil, "", true},
		{"TRACE", nil, "", false}, // refused by the handler anyway
		{"POST", nil, "", false},
		{"DELETE", nil, "", false},
		{"PUT", nil, "", false},
		{"GET", strings.NewReader("b"), "", false},
		{"GET", chunked{}, "", false},
		{"GET", nil, "Upgrade", false},
	}
	for _, c := range cases {
		req, _ := http.NewRequest(c.method, "http://gw.local/proxy/x/y", c.body)
		req.Body = io.NopCloser(c.body) // as a server wraps it
		if c.body == nil {
			req.Body = io.NopCloser(strings.NewReader(""))
		}
		if c.header != "" {
			req.Header.Set(c.header, "websocket")
		}
		if _, ok := c.body.(chunked); ok {
			req.ContentLength, req.TransferEncoding = -1, []string{"chunked"}
		}
		if got := leanMethod(req); got != c.lean {
			t.Errorf("%s body=%v %s: lean %v, want %v", c.method, c.body != nil, c.header, got, c.lean)
		}
	}

	// Plain-http routes get a pool, one per host; https routes one of
	// their own under http_version auto (which declines an upstream that
	// does not agree to HTTP/1.1: TestAutoTLSFallsBackToHTTP2).
	f := newForwarder(testService(t, gateway.ServiceConfig{
		BaseURL: "http://api.local:8080/v0/",
		Versions: map[string]string{
			"v1": "http://api.local:8080/v1/", "v2": "https://api.local/v2/", "v3": "http://other.local/",
		},
	}), nil, zap.NewNop(), true)
	if f.base.pool == nil || f.versions["v1"].pool != f.base.pool || f.versions["v2"].pool == nil ||
		f.versions["v2"].pool == f.base.pool || f.versions["v2"].pool == f.versions["v3"].pool ||
		f.versions["v3"].pool == nil || f.versions["v3"].pool == f.base.pool || len(f.pools) != 3 {
		t.Errorf("pools: base %p v1 %p v2 %p v3 %p, %d in all", f.base.pool, f.versions["v1"].pool,
			f.versions["v2"].pool, f.versions["v3"].pool, len(f.pools))
	}
	// With the lean path off, no route has a pool.
	f = newForwarder(testService(t, gateway.ServiceConfig{BaseURL: "http://api.local:8080/v0/"}), nil, zap.NewNop(), false)
	if f.base.pool != nil || len(f.pools) != 0 {
		t.Errorf("lean path off: pools %v", f.pools)
	}
}

// leanGateway serves a forwarder for a service whose base URL is the raw
// upstream, behind a real HTTP server; a header the gateway sets before
// forwarding (as CORS or rate limits do) is X-Gateway.
func leanGateway(t *testing.T, up *rawup.Upstream) string {
	t.Helper()
	f := newForwarder(testService(t, gateway.ServiceConfig{
		BaseURL: "http://" + up.Host() + "/api/",
		Headers: map[string]string{"X-Default": "d"},
		Auth:    &gateway.ServiceAuth{Type: "bearer", Token: "tok-SECRET-lean"},
	}), nil, zap.NewNop(), true)
	t.Cleanup(f.Close)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Gateway", "yes")
		f.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// The lean path applies ReverseProxy's header rules, both ways.
func TestLeanForwardHeaders(t *testing.T) {
	got := make(chan http.Header, 1)
	up := rawup.Start(t, func(n int, req *http.Request, w *bufio.Writer) bool {
		got <- req.Header
		fmt.Fprint(w, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: X-Up-Hop\r\nX-Up-Hop: 1\r\n"+
			"Keep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\nok")
		return true
	})
	gw := leanGateway(t, up)
	req, _ := http.NewRequest("GET", gw+"/proxy/svc/items?x=1&api_key=client-key", nil)
	for k, v := range map[string]string{
		"Connection": "X-Hop, keep-alive", "X-Hop": "hop", "Keep-Alive": "timeout=9", "Proxy-Connection": "keep-alive",
		"Te": "trailers, deflate", "Authorization": "Bearer client-own", "X-Api-Key": "client-key",
		"X-Forwarded-For": "10.9.8.7", "Forwarded": "for=10.9.8.7", "X-Custom": "c", "User-Agent": "",
	} {
		req.Header[k] = []string{v}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	h := <-got
	for k, want := range map[string]string{"Authorization": "Bearer tok-SECRET-lean", "Te": "trailers", "X-Custom": "c", "X-Default": "d"} {
		if v := h.Values(k); len(v) != 1 || v[0] != want {
			t.Errorf("upstream %s = %q, want [%q]", k, v, want)
		}
	}
	for _, k := range []string{"X-Hop", "Keep-Alive", "Proxy-Connection", "X-Api-Key", "X-Forwarded-For", "Forwarded", "User-Agent", "Connection"} {
		if v, ok := h[k]; ok {
			t.Errorf("upstream received %s: %q", k, v)
		}
	}
	if string(body) != "ok" || resp.Header.Get("X-Gateway") != "yes" || len(resp.Header.Values("Set-Cookie")) != 2 ||
		resp.Header.Get("X-Proxy-Service") != "svc" {
		t.Errorf("response %q %v", body, resp.Header)
	}
	for _, k := range []string{"X-Up-Hop", "Keep-Alive", "Proxy-Authenticate"} {
		if v, ok := resp.Header[k]; ok {
			t.Errorf("client received %s: %q", k, v)
		}
	}
}

// An Early Hints response reaches the client, and the final response keeps
// the headers the gateway had set.
func TestLeanForwardEarlyHints(t *testing.T) {
	up := rawup.Start(t, func(n int, req *http.Request, w *bufio.Writer) bool {
		fmt.Fprint(w, "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
		answer(w, req, "final")
		return true
	})
	gw := leanGateway(t, up)
	var hints []string
	trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
		hints = append(hints, fmt.Sprint(code, " ", h.Get("Link")))
		return nil
	}}
	req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET", gw+"/proxy/svc/x", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "final" || len(hints) != 1 || hints[0] != "103 </a.css>; rel=preload" {
		t.Errorf("body %q, hints %q", body, hints)
	}
	if resp.Header.Get("X-Gateway") != "yes" || resp.Header.Get("X-Proxy-Service") != "svc" || resp.Header.Get("Link") != "" {
		t.Errorf("final headers %v: want the gateway's, not the hint's", resp.Header)
	}
}

// Events reach the client as the upstream sends them.
func TestLeanForwardFlushesEventStreams(t *testing.T) {
	next := make(chan struct{})
	up := rawup.Start(t, func(n int, req *http.Request, w *bufio.Writer) bool {
		fmt.Fprint(w, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nContent-Length: 28\r\n\r\ndata: one\n\n")
		w.Flush()
		select {
		case <-next:
		case <-time.After(10 * time.Second):
		}
		fmt.Fprint(w, "data: two...\n\n")
		return false
	})
	gw := leanGateway(t, up)
	resp, err := http.Get(gw + "/proxy/svc/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	line, err := br.ReadString('\n') // returns only if the first event was flushed
	close(next)
	if err != nil || line != "data: one\n" {
		t.Fatalf("first event %q, %v", line, err)
	}
	rest, _ := io.ReadAll(br)
	if string(rest) != "\ndata: two...\n\n" {
		t.Errorf("rest %q", rest)
	}
}

// A body the upstream cuts short is cut short for the client too: the
// client must not take it for a whole one.
func TestLeanForwardAbortsTruncatedBody(t *testing.T) {
	up := rawup.Start(t, func(n int, req *http.Request, w *bufio.Writer) bool {
		fmt.Fprint(w, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
		return false
	})
	gw := leanGateway(t, up)
	resp, err := http.Get(gw + "/proxy/svc/x")
	if err != nil {
		return // aborted before the head went out (it was still buffered)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil {
		t.Fatalf("status %d, read %q without error; want the response aborted", resp.StatusCode, body)
	}
}

// chunked stands for a chunked request body of unknown length.
type chunked struct{}

func (chunked) Read([]byte) (int, error) { return 0, io.EOF }

// A service leaving the registry (or its config unloading) is closed: its
// idle connections close at once, and a request that comes late still
// works, on either path, but leaves no connection behind (issue 15.3).
func TestServiceCloseLeavesNoConnections(t *testing.T) {
	up := rawup.Start(t, func(n int, req *http.Request, w *bufio.Writer) bool {
		_, _ = io.Copy(io.Discard, req.Body)
		answer(w, req, "ok")
		return true
	})
	svc := testService(t, gateway.ServiceConfig{BaseURL: "http://" + up.Host() + "/"})
	t.Cleanup(svc.Transport.CloseIdleConnections) // before the upstream stops, should the test fail
	h := svc.Proxy(func(s *gateway.Service) http.Handler { return newForwarder(s, nil, zap.NewNop(), true) })
	srv := httptest.NewServer(h)
	defer srv.Close()
	send := func(method string) {
		t.Helper()
		var payload io.Reader
		if method == "POST" {
			payload = strings.NewReader("{}")
		}
		req, _ := http.NewRequest(method, srv.URL+"/proxy/svc/x", payload)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != "ok" {
			t.Fatalf("%s: body %q", method, body)
		}
	}
	send("GET") // a lean-path connection, idle in its pool
	svc.Close()
	up.WaitGone(t)
	for _, method := range []string{"GET", "POST"} { // the lean path, the Transport
		before := up.Accepted.Load()
		send(method)
		up.WaitGone(t)
		if n := up.Accepted.Load(); n != before+1 {
			t.Errorf("%s after Close: %d new connections, want 1", method, n-before)
		}
	}
}

func answer(w *bufio.Writer, req *http.Request, body string) {
	fmt.Fprintf(w, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", len(body))
	if req.Method != "HEAD" {
		w.WriteString(body)
	}
}
