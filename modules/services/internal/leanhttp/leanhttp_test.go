package leanhttp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/byteproxy/byteproxy/modules/services/internal/rawup"
)

// client is a pool for the raw upstream, as a service with that base URL
// gets, with the service's timeout.
type client struct {
	p       *Pool
	timeout time.Duration
}

func clientFor(t *testing.T, host string, timeout time.Duration) *client {
	t.Helper()
	p := NewPool(host, (&net.Dialer{Timeout: timeout}).DialContext)
	t.Cleanup(p.Close)
	return &client{p: p, timeout: timeout}
}

func (l *client) RoundTrip(req *http.Request) (*http.Response, error) {
	return l.p.RoundTrip(req.Context(), req, l.timeout, nil)
}

func get(t *testing.T, lt *client, method, url string) (*http.Response, string, error) {
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

func (p *Pool) idleCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.idle)
}

func TestKeepsConnectionsAlive(t *testing.T) {
	up := rawup.Start(t, func(n int, req *http.Request, w *bufio.Writer) bool {
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
	lt := clientFor(t, up.Host(), 5*time.Second)
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
		resp, body, err := get(t, lt, method, "http://"+up.Host()+path)
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
	if n := up.Accepted.Load(); n != 1 {
		t.Errorf("%d connections for 30 sequential requests, want 1", n)
	}
}

// An upstream that closes kept-alive connections without saying so: the
// request finds its pooled connection dead and is sent again on a new one.
// (Mostly the check before reuse already sees the end.)
func TestResendsOnConnectionClosedWhileIdle(t *testing.T) {
	up := rawup.Start(t, func(n int, req *http.Request, w *bufio.Writer) bool {
		answer(w, req, "once")
		return false
	})
	lt := clientFor(t, up.Host(), 5*time.Second)
	for i := range 10 {
		if _, body, err := get(t, lt, "GET", "http://"+up.Host()+"/"); err != nil || body != "once" {
			t.Fatalf("request %d: %q, %v", i, body, err)
		}
	}
	if n := up.Requests.Load(); n != 10 {
		t.Errorf("upstream answered %d requests, want 10", n)
	}
}

// A connection the upstream closes after the check before reuse found it
// quiet: the request fails before any byte of an answer and is sent again.
func TestResendsWhenTheCloseComesAfterTheCheck(t *testing.T) {
	up := rawup.Start(t, func(n int, req *http.Request, w *bufio.Writer) bool {
		if n == 2 {
			return false // reads the second request, closes without a word
		}
		answer(w, req, "ok")
		return true
	})
	lt := clientFor(t, up.Host(), 5*time.Second)
	for i := range 2 {
		if _, body, err := get(t, lt, "GET", "http://"+up.Host()+"/"); err != nil || body != "ok" {
			t.Fatalf("request %d: %q, %v", i, body, err)
		}
	}
	if n, a := up.Requests.Load(), up.Accepted.Load(); n != 3 || a != 2 {
		t.Errorf("%d requests on %d connections, want 3 on 2", n, a)
	}
}

// A fresh connection that closes before answering is an error, not a
// resend: the upstream may have acted on the request.
func TestDoesNotResendOnFreshConnection(t *testing.T) {
	up := rawup.Start(t, func(n int, req *http.Request, w *bufio.Writer) bool { return false })
	lt := clientFor(t, up.Host(), 5*time.Second)
	_, _, err := get(t, lt, "GET", "http://"+up.Host()+"/")
	if !closedBeforeAnswer(err) {
		t.Fatalf("error %v, want the connection's end", err)
	}
	if n := up.Requests.Load(); n != 1 {
		t.Errorf("upstream received %d requests, want 1", n)
	}
}

type informed struct{ got []string }

func (i *informed) Informational(code int, h http.Header) {
	i.got = append(i.got, fmt.Sprint(code, " ", h.Get("Link")))
}

func TestInformationalResponses(t *testing.T) {
	up := rawup.Start(t, func(n int, req *http.Request, w *bufio.Writer) bool {
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
	lt := clientFor(t, up.Host(), 5*time.Second)
	info := &informed{}
	req, _ := http.NewRequest("GET", "http://"+up.Host()+"/one", nil)
	resp, err := lt.p.RoundTrip(context.Background(), req, lt.timeout, info)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "final" || len(info.got) != 1 || info.got[0] != "103 </style.css>; rel=preload" {
		t.Errorf("body %q, informational %q", body, info.got)
	}
	if _, _, err := get(t, lt, "GET", "http://"+up.Host()+"/many"); err == nil || !strings.Contains(err.Error(), "103") {
		t.Errorf("%d informational responses: error %v, want a refusal", max1xx+1, err)
	}
}

func TestBoundsResponseHead(t *testing.T) {
	up := rawup.Start(t, func(n int, req *http.Request, w *bufio.Writer) bool {
		fmt.Fprint(w, "HTTP/1.1 200 OK\r\n")
		line := "X-Filler: " + strings.Repeat("a", 1000) + "\r\n"
		for range 2 * MaxHeaderBytes / len(line) {
			if _, err := w.WriteString(line); err != nil {
				return false
			}
		}
		return false
	})
	lt := clientFor(t, up.Host(), 5*time.Second)
	if _, _, err := get(t, lt, "GET", "http://"+up.Host()+"/"); !errors.Is(err, ErrHeadTooLarge) {
		t.Fatalf("error %v, want %v", err, ErrHeadTooLarge)
	}
}

func TestHeaderTimeout(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	up := rawup.Start(t, func(n int, req *http.Request, w *bufio.Writer) bool {
		<-release
		return false
	})
	lt := clientFor(t, up.Host(), 200*time.Millisecond)
	_, _, err := get(t, lt, "GET", "http://"+up.Host()+"/")
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("error %v, want a timeout", err)
	}
}

// A body closed before its end takes its connection with it; a body read
// to the end leaves it for the next request.
func TestBodyClosedEarlyDropsConnection(t *testing.T) {
	big := strings.Repeat("z", 1<<20)
	up := rawup.Start(t, func(n int, req *http.Request, w *bufio.Writer) bool {
		answer(w, req, big)
		return true
	})
	lt := clientFor(t, up.Host(), 5*time.Second)
	req, _ := http.NewRequest("GET", "http://"+up.Host()+"/", nil)
	resp, err := lt.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	up.WaitGone(t)
	if _, body, err := get(t, lt, "GET", "http://"+up.Host()+"/"); err != nil || len(body) != len(big) {
		t.Fatalf("second request: %d bytes, %v", len(body), err)
	}
	if n := up.Accepted.Load(); n != 2 {
		t.Errorf("%d connections, want 2 (the first one closed with its body)", n)
	}
}

// A response without a length ends when the upstream closes; its
// connection is not pooled.
func TestCloseDelimitedBody(t *testing.T) {
	up := rawup.Start(t, func(n int, req *http.Request, w *bufio.Writer) bool {
		fmt.Fprint(w, "HTTP/1.1 200 OK\r\n\r\nuntil close")
		return false
	})
	lt := clientFor(t, up.Host(), 5*time.Second)
	for i := range 3 {
		if _, body, err := get(t, lt, "GET", "http://"+up.Host()+"/"); err != nil || body != "until close" {
			t.Fatalf("request %d: %q, %v", i, body, err)
		}
	}
	if n := up.Accepted.Load(); n != 3 {
		t.Errorf("%d connections, want 3", n)
	}
}

func TestClosesIdleConnections(t *testing.T) {
	up := rawup.Start(t, func(n int, req *http.Request, w *bufio.Writer) bool {
		answer(w, req, "ok")
		return true
	})
	lt := clientFor(t, up.Host(), 5*time.Second)
	if _, _, err := get(t, lt, "GET", "http://"+up.Host()+"/"); err != nil {
		t.Fatal(err)
	}
	lt.p.CloseIdle()
	up.WaitGone(t)

	// The sweep closes a connection idle for the idle timeout.
	lt = clientFor(t, up.Host(), 5*time.Second)
	lt.p.idleTimeout = 50 * time.Millisecond
	if _, _, err := get(t, lt, "GET", "http://"+up.Host()+"/"); err != nil {
		t.Fatal(err)
	}
	up.WaitGone(t)
	if n := lt.p.idleCount(); n != 0 {
		t.Errorf("%d idle connections left after the sweep", n)
	}
}

// A closed pool closes the connections in use when their exchanges end,
// instead of keeping them (issue 15.3: a reload left them open for 90 s),
// and still serves a late request, on a connection of its own.
func TestClosedPoolKeepsNothing(t *testing.T) {
	up := rawup.Start(t, func(n int, req *http.Request, w *bufio.Writer) bool {
		answer(w, req, "ok")
		return true
	})
	lt := clientFor(t, up.Host(), 5*time.Second)
	req, _ := http.NewRequest("GET", "http://"+up.Host()+"/", nil)
	resp, err := lt.RoundTrip(req) // in use while the pool closes
	if err != nil {
		t.Fatal(err)
	}
	lt.p.Close()
	if body, err := io.ReadAll(resp.Body); err != nil || string(body) != "ok" {
		t.Fatalf("body %q, %v", body, err)
	}
	resp.Body.Close()
	up.WaitGone(t)
	if _, body, err := get(t, lt, "GET", "http://"+up.Host()+"/"); err != nil || body != "ok" {
		t.Fatalf("after Close: %q, %v", body, err)
	}
	up.WaitGone(t)
	if n := lt.p.idleCount(); n != 0 {
		t.Errorf("a closed pool holds %d connections", n)
	}
}

func TestConcurrent(t *testing.T) {
	up := rawup.Start(t, func(n int, req *http.Request, w *bufio.Writer) bool {
		answer(w, req, req.URL.Path)
		return n%7 != 0 // now and then close a kept-alive connection unannounced
	})
	lt := clientFor(t, up.Host(), 5*time.Second)
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for g := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				path := fmt.Sprintf("/g%d/r%d", g, i)
				if _, body, err := get(t, lt, "GET", "http://"+up.Host()+path); err != nil || body != path {
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

func TestDialAddr(t *testing.T) {
	for in, want := range map[string]string{"a.local": "a.local:80", "a.local:81": "a.local:81", "[::1]": "[::1]:80", "[::1]:82": "[::1]:82"} {
		if got := dialAddr(in); got != want {
			t.Errorf("dialAddr(%q) = %q, want %q", in, got, want)
		}
	}
}

// A 408 on a kept-alive connection is the upstream's farewell, not the
// answer: whether it arrived while the connection was idle (the check
// before reuse sees it) or after the next request was written, the request
// goes again on a new connection. Bytes left after a response keep a
// connection from being used again.
func TestIdleFarewellAndLeftovers(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
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
					case req.URL.Path == "/late408" && n == 1:
						// The farewell comes as the next request is written.
						fmt.Fprint(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")
						if _, err := http.ReadRequest(br); err != nil {
							return
						}
						fmt.Fprint(c, "HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
						return
					default:
						fmt.Fprint(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh")
					}
				}
			}()
		}
	}()
	host := ln.Addr().String()
	lt := clientFor(t, host, 5*time.Second)
	if _, body, err := get(t, lt, "GET", "http://"+host+"/late408"); err != nil || body != "first" {
		t.Fatalf("first: %q, %v", body, err)
	}
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
