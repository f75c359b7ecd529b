package services

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
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

// leanFor is a lean transport for the raw upstream, as a service with
// that base URL gets.
func leanFor(t *testing.T, host string, timeout time.Duration) *leanTransport {
	t.Helper()
	next := &http.Transport{DialContext: (&net.Dialer{Timeout: timeout}).DialContext}
	lt := newLeanTransport(next, timeout, map[string]bool{host: true})
	if lt == nil {
		t.Fatal("no lean transport for an http host")
	}
	t.Cleanup(lt.CloseIdleConnections)
	return lt
}

func get(t *testing.T, lt *leanTransport, method, url string) (*http.Response, string, error) {
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
	var got []string
	trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
		got = append(got, fmt.Sprint(code, " ", h.Get("Link")))
		return nil
	}}
	req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET", "http://"+up.host()+"/one", nil)
	resp, err := lt.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "final" || len(got) != 1 || got[0] != "103 </style.css>; rel=preload" {
		t.Errorf("body %q, informational %q", body, got)
	}
	if _, _, err := get(t, lt, "GET", "http://"+up.host()+"/many"); err == nil || !strings.Contains(err.Error(), "103") {
		t.Errorf("%d informational responses: error %v, want a refusal", max1xx+1, err)
	}
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
	lt.CloseIdleConnections()
	waitGone(t, up)

	// The sweep closes a connection idle for the idle timeout.
	lt = leanFor(t, up.host(), 5*time.Second)
	lt.pools[up.host()].idleTimeout = 50 * time.Millisecond
	if _, _, err := get(t, lt, "GET", "http://"+up.host()+"/"); err != nil {
		t.Fatal(err)
	}
	waitGone(t, up)
	p := lt.pools[up.host()]
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
	lt := newLeanTransport(&http.Transport{}, time.Second, map[string]bool{"api.local:8080": true})
	cases := []struct {
		method, url string
		body        io.Reader
		header      string
		lean        bool
	}{
		{"GET", "http://api.local:8080/x", nil, "", true},
		{"HEAD", "http://api.local:8080/x", nil, "", true},
		{"OPTIONS", "http://api.local:8080/x", nil, "", true},
		{"POST", "http://api.local:8080/x", nil, "", false},
		{"DELETE", "http://api.local:8080/x", nil, "", false},
		{"GET", "http://api.local:8080/x", strings.NewReader("b"), "", false},
		{"GET", "http://api.local:8080/ws", nil, "Upgrade", false},
		{"GET", "https://api.local:8080/x", nil, "", false},
		{"GET", "http://other.local/x", nil, "", false},
	}
	for _, c := range cases {
		req, _ := http.NewRequest(c.method, c.url, c.body)
		if c.header != "" {
			req.Header.Set(c.header, "websocket")
		}
		if got := lt.lean(req) != nil; got != c.lean {
			t.Errorf("%s %s body=%v %s: lean %v, want %v", c.method, c.url, c.body != nil, c.header, got, c.lean)
		}
	}
	if newLeanTransport(&http.Transport{}, time.Second, map[string]bool{}) != nil {
		t.Error("a transport without plain-http hosts")
	}
	for in, want := range map[string]string{"a.local": "a.local:80", "a.local:81": "a.local:81", "[::1]": "[::1]:80", "[::1]:82": "[::1]:82"} {
		if got := dialAddr(in); got != want {
			t.Errorf("dialAddr(%q) = %q, want %q", in, got, want)
		}
	}
}
