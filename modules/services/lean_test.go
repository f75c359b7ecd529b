package services

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/byteproxy/byteproxy/modules/gateway"
)

// rawUpstream is a real loopback TCP server whose answers a test writes
// byte by byte, for what a well-behaved http.Server never does: close a
// kept-alive connection unannounced, send 1xx, oversized heads.
type rawUpstream struct {
	ln       net.Listener
	accepted atomic.Int32
	requests atomic.Int32
	gone     chan struct{} // a connection was closed by the gateway
}

// startRaw serves every connection with serve, which is given each
// request as it arrives and writes the answer; returning false closes
// the connection.
func startRaw(t *testing.T, serve func(n int, req *http.Request, w *bufio.Writer) bool) *rawUpstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &rawUpstream{ln: ln, gone: make(chan struct{}, 1024)}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u.accepted.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				br, bw := bufio.NewReader(c), bufio.NewWriter(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || isReset(err) {
							u.gone <- struct{}{}
						}
						return
					}
					more := serve(int(u.requests.Add(1)), req, bw)
					if err := bw.Flush(); err != nil {
						u.gone <- struct{}{} // closed while the answer was being written
						return
					}
					if !more {
						return
					}
				}
			}()
		}
	}()
	return u
}

func isReset(err error) bool { return strings.Contains(err.Error(), "reset") }

func (u *rawUpstream) host() string { return u.ln.Addr().String() }

// lean is the lean path's pool for the raw upstream, as a service with
// that base URL gets, with the service's timeout.
type lean struct {
	p       *connPool
	timeout time.Duration
}

func leanFor(t *testing.T, host string, timeout time.Duration) *lean {
	t.Helper()
	p := newConnPool(host, (&net.Dialer{Timeout: timeout}).DialContext)
	t.Cleanup(p.closeIdle)
	return &lean{p: p, timeout: timeout}
}

func (l *lean) RoundTrip(req *http.Request) (*http.Response, error) {
	return l.p.roundTrip(req.Context(), req, l.timeout, nil)
}

func get(t *testing.T, lt *lean, method, url string) (*http.Response, string, error) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := lt.RoundTrip(req)
	if err != nil {
		return nil, "", err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(body), err
}

func answer(w *bufio.Writer, req *http.Request, body string) {
	fmt.Fprintf(w, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", len(body))
	if req.Method != "HEAD" {
		w.WriteString(body)
	}
}

func TestLeanKeepsConnectionsAlive(t *testing.T) {
	up := startRaw(t, func(n int, req *http.Request, w *bufio.Writer) bool {
		switch req.URL.Path {
		case "/empty":
			fmt.Fprint(w, "HTTP/1.1 204 No Content\r\n\r\n")
		case "/chunked":
			fmt.Fprint(w, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n3\r\nabc\r\n0\r\nX-Sum: 9\r\n\r\n")
		default:
			answer(w, req, "hello "+req.Method)
		}
		return true
	})
	lt := leanFor(t, up.host(), 5*time.Second)
	for i := range 30 {
		method, path, want := "GET", "/x", "hello GET"
		switch i % 5 {
		case 1:
			method, want = "HEAD", ""
		case 2:
			path, want = "/empty", ""
		case 3:
			path, want = "/chunked", "abc"
		case 4:
			method, want = "OPTIONS", "hello OPTIONS"
		}
		resp, body, err := get(t, lt, method, "http://"+up.host()+path)
		if err != nil {
			t.Fatalf("request %d (%s %s): %v", i, method, path, err)
		}
		if body != want {
			t.Errorf("request %d (%s %s): body %q, want %q", i, method, path, body, want)
		}
		if path == "/chunked" && resp.Trailer.Get("X-Sum") != "9" {
			t.Errorf("trailer %v", resp.Trailer)
		}
	}
	if n := up.accepted.Load(); n != 1 {
		t.Errorf("%d connections for 30 sequential requests, want 1", n)
	}
}

// An upstream that closes kept-alive connections without saying so: the
// request finds its pooled connection dead and is sent again on a new one.
func TestLeanResendsOnConnectionClosedWhileIdle(t *testing.T) {
	up := startRaw(t, func(n int, req *http.Request, w *bufio.Writer) bool {
		answer(w, req, "once")
		return false
	})
	lt := leanFor(t, up.host(), 5*time.Second)
	for i := range 10 {
		if _, body, err := get(t, lt, "GET", "http://"+up.host()+"/"); err != nil || body != "once" {
			t.Fatalf("request %d: %q, %v", i, body, err)
		}
	}
	if n := up.requests.Load(); n != 10 {
		t.Errorf("upstream answered %d requests, want 10", n)
	}
}

// A fresh connection that closes before answering is an error, not a
// resend: the upstream may have acted on the request.
func TestLeanDoesNotResendOnFreshConnection(t *testing.T) {
	up := startRaw(t, func(n int, req *http.Request, w *bufio.Writer) bool { return false })
	lt := leanFor(t, up.host(), 5*time.Second)
	_, _, err := get(t, lt, "GET", "http://"+up.host()+"/")
	if !closedBeforeAnswer(err) {
		t.Fatalf("error %v, want the connection's end", err)
	}
	if n := up.requests.Load(); n != 1 {
		t.Errorf("upstream received %d requests, want 1", n)
	}
}

func TestLeanInformationalResponses(t *testing.T) {
	up := startRaw(t, func(n int, req *http.Request, w *bufio.Writer) bool {
		hints := 1
		if req.URL.Path == "/many" {
			hints = max1xx + 1
		}
		for range hints {
			fmt.Fprint(w, "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
		}
		answer(w, req, "final")
		return true
	})
	lt := leanFor(t, up.host(), 5*time.Second)
	info := &informed{}
	req, _ := http.NewRequest("GET", "http://"+up.host()+"/one", nil)
	resp, err := lt.p.roundTrip(context.Background(), req, lt.timeout, info)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "final" || len(info.got) != 1 || info.got[0] != "103 </style.css>; rel=preload" {
		t.Errorf("body %q, informational %q", body, info.got)
	}
	if _, _, err := get(t, lt, "GET", "http://"+up.host()+"/many"); err == nil || !strings.Contains(err.Error(), "103") {
		t.Errorf("%d informational responses: error %v, want a refusal", max1xx+1, err)
	}
}

type informed struct{ got []string }

func (i *informed) informational(code int, h http.Header) {
	i.got = append(i.got, fmt.Sprint(code, " ", h.Get("Link")))
}

func TestLeanBoundsResponseHead(t *testing.T) {
	up := startRaw(t, func(n int, req *http.Request, w *bufio.Writer) bool {
		fmt.Fprint(w, "HTTP/1.1 200 OK\r\n")
		line := "X-Filler: " + strings.Repeat("a", 1000) + "\r\n"
		for range 2 * maxHeaderBytes / len(line) {
			if _, err := w.WriteString(line); err != nil {
				return false
			}
		}
		return false
	})
	lt := leanFor(t, up.host(), 5*time.Second)
	if _, _, err := get(t, lt, "GET", "http://"+up.host()+"/"); !errors.Is(err, errHeadTooLarge) {
		t.Fatalf("error %v, want %v", err, errHeadTooLarge)
	}
}

func TestLeanHeaderTimeout(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	up := startRaw(t, func(n int, req *http.Request, w *bufio.Writer) bool {
		<-release
		return false
	})
	lt := leanFor(t, up.host(), 200*time.Millisecond)
	_, _, err := get(t, lt, "GET", "http://"+up.host()+"/")
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("error %v, want a timeout", err)
	}
}

// A body closed before its end takes its connection with it; a body read
// to the end leaves it for the next request.
func TestLeanBodyClosedEarlyDropsConnection(t *testing.T) {
	big := strings.Repeat("z", 1<<20)
	up := startRaw(t, func(n int, req *http.Request, w *bufio.Writer) bool {
		answer(w, req, big)
		return true
	})
	lt := leanFor(t, up.host(), 5*time.Second)
	req, _ := http.NewRequest("GET", "http://"+up.host()+"/", nil)
	resp, err := lt.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	waitGone(t, up)
	if _, body, err := get(t, lt, "GET", "http://"+up.host()+"/"); err != nil || len(body) != len(big) {
		t.Fatalf("second request: %d bytes, %v", len(body), err)
	}
	if n := up.accepted.Load(); n != 2 {
		t.Errorf("%d connections, want 2 (the first one closed with its body)", n)
	}
}

// A response without a length ends when the upstream closes; its
// connection is not pooled.
func TestLeanCloseDelimitedBody(t *testing.T) {
	up := startRaw(t, func(n int, req *http.Request, w *bufio.Writer) bool {
		fmt.Fprint(w, "HTTP/1.1 200 OK\r\n\r\nuntil close")
		return false
	})
	lt := leanFor(t, up.host(), 5*time.Second)
	for i := range 3 {
		if _, body, err := get(t, lt, "GET", "http://"+up.host()+"/"); err != nil || body != "until close" {
			t.Fatalf("request %d: %q, %v", i, body, err)
		}
	}
	if n := up.accepted.Load(); n != 3 {
		t.Errorf("%d connections, want 3", n)
	}
}

func TestLeanClosesIdleConnections(t *testing.T) {
	up := startRaw(t, func(n int, req *http.Request, w *bufio.Writer) bool {
		answer(w, req, "ok")
		return true
	})
	lt := leanFor(t, up.host(), 5*time.Second)
	if _, _, err := get(t, lt, "GET", "http://"+up.host()+"/"); err != nil {
		t.Fatal(err)
	}
	lt.p.closeIdle()
	waitGone(t, up)

	// The sweep closes a connection idle for the idle timeout.
	lt = leanFor(t, up.host(), 5*time.Second)
	lt.p.idleTimeout = 50 * time.Millisecond
	if _, _, err := get(t, lt, "GET", "http://"+up.host()+"/"); err != nil {
		t.Fatal(err)
	}
	waitGone(t, up)
	p := lt.p
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.idle) != 0 {
		t.Errorf("%d idle connections left after the sweep", len(p.idle))
	}
}

func waitGone(t *testing.T, up *rawUpstream) {
	t.Helper()
	select {
	case <-up.gone:
	case <-time.After(5 * time.Second):
		t.Fatal("the gateway did not close the upstream connection")
	}
}

func TestLeanConcurrent(t *testing.T) {
	up := startRaw(t, func(n int, req *http.Request, w *bufio.Writer) bool {
		answer(w, req, req.URL.Path)
		return n%7 != 0 // now and then close a kept-alive connection unannounced
	})
	lt := leanFor(t, up.host(), 5*time.Second)
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for g := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				path := fmt.Sprintf("/g%d/r%d", g, i)
				if _, body, err := get(t, lt, "GET", "http://"+up.host()+path); err != nil || body != path {
					errs <- fmt.Errorf("%s: %q, %v", path, body, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

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
		{"TRACE", nil, "", true},
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

	// Plain-http routes get a pool, one per host; https routes none.
	f := newForwarder(testService(t, gateway.ServiceConfig{
		BaseURL: "http://api.local:8080/v0/",
		Versions: map[string]string{
			"v1": "http://api.local:8080/v1/", "v2": "https://api.local/v2/", "v3": "http://other.local/",
		},
	}), nil, zap.NewNop())
	if f.base.pool == nil || f.versions["v1"].pool != f.base.pool || f.versions["v2"].pool != nil ||
		f.versions["v3"].pool == nil || f.versions["v3"].pool == f.base.pool || len(f.pools) != 2 {
		t.Errorf("pools: base %p v1 %p v2 %p v3 %p, %d in all", f.base.pool, f.versions["v1"].pool,
			f.versions["v2"].pool, f.versions["v3"].pool, len(f.pools))
	}
	for in, want := range map[string]string{"a.local": "a.local:80", "a.local:81": "a.local:81", "[::1]": "[::1]:80", "[::1]:82": "[::1]:82"} {
		if got := dialAddr(in); got != want {
			t.Errorf("dialAddr(%q) = %q, want %q", in, got, want)
		}
	}
}

// leanGateway serves a forwarder for a service whose base URL is the raw
// upstream, behind a real HTTP server; a header the gateway sets before
// forwarding (as CORS or rate limits do) is X-Gateway.
func leanGateway(t *testing.T, up *rawUpstream) string {
	t.Helper()
	f := newForwarder(testService(t, gateway.ServiceConfig{
		BaseURL: "http://" + up.host() + "/api/",
		Headers: map[string]string{"X-Default": "d"},
		Auth:    &gateway.ServiceAuth{Type: "bearer", Token: "tok-SECRET-lean"},
	}), nil, zap.NewNop())
	t.Cleanup(f.CloseIdleConnections)
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
	up := startRaw(t, func(n int, req *http.Request, w *bufio.Writer) bool {
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
	up := startRaw(t, func(n int, req *http.Request, w *bufio.Writer) bool {
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
	up := startRaw(t, func(n int, req *http.Request, w *bufio.Writer) bool {
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
	up := startRaw(t, func(n int, req *http.Request, w *bufio.Writer) bool {
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

// A service leaving the registry (or its config unloading) closes the
// lean path's idle connections along with its Transport's.
func TestServiceClosesLeanConnections(t *testing.T) {
	up := startRaw(t, func(n int, req *http.Request, w *bufio.Writer) bool {
		answer(w, req, "ok")
		return true
	})
	svc := testService(t, gateway.ServiceConfig{BaseURL: "http://" + up.host() + "/"})
	h := svc.Proxy(func(s *gateway.Service) http.Handler { return newForwarder(s, nil, zap.NewNop()) })
	srv := httptest.NewServer(h)
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/proxy/svc/x")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "ok" {
		t.Fatalf("body %q", body)
	}
	svc.CloseIdleConnections()
	waitGone(t, up)
}

// A 408 an idle connection received before the next request was written
// is the upstream's farewell, not the answer: the request goes again on a
// new connection. Bytes left after a response keep a connection from
// being used again.
func TestLeanIdleFarewellAndLeftovers(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	farewell, said := make(chan struct{}), make(chan struct{})
	var accepted atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n := accepted.Add(1)
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for i := 0; ; i++ {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					switch {
					case req.URL.Path == "/leftover":
						fmt.Fprint(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokGARBAGE")
					case n == 1 && i == 0:
						fmt.Fprint(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")
						<-farewell
						fmt.Fprint(c, "HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
						close(said)
					case n == 1:
						// keeps the connection open, answering nothing more
					default:
						fmt.Fprint(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh")
					}
				}
			}()
		}
	}()
	host := ln.Addr().String()
	lt := leanFor(t, host, 5*time.Second)
	if _, body, err := get(t, lt, "GET", "http://"+host+"/a"); err != nil || body != "first" {
		t.Fatalf("first: %q, %v", body, err)
	}
	close(farewell)
	<-said
	if _, body, err := get(t, lt, "GET", "http://"+host+"/b"); err != nil || body != "fresh" {
		t.Fatalf("after the farewell: %q, %v", body, err)
	}
	if n := accepted.Load(); n != 2 {
		t.Errorf("%d connections, want 2", n)
	}

	if _, body, err := get(t, lt, "GET", "http://"+host+"/leftover"); err != nil || body != "ok" {
		t.Fatalf("leftover: %q, %v", body, err)
	}
	if _, body, err := get(t, lt, "GET", "http://"+host+"/c"); err != nil || body != "fresh" {
		t.Fatalf("after the leftover: %q, %v", body, err)
	}
	if n := accepted.Load(); n != 3 {
		t.Errorf("%d connections, want 3: the one with bytes left over is not reused", n)
	}
}
