package leanhttp

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/byteproxy/byteproxy/modules/services/internal/rawup"
)

// testCert is httptest's certificate (for 127.0.0.1) and the pool of roots
// that trusts it.
func testCert(t *testing.T) (tls.Certificate, *x509.CertPool) {
	s := httptest.NewUnstartedServer(nil)
	s.StartTLS()
	defer s.Close()
	return s.TLS.Certificates[0], s.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs
}

// tlsUpstream is a raw upstream over TLS 1.3 that counts resumed sessions.
// late makes it send its session tickets only after the client's
// handshake has ended (it asks for a client certificate, so that it sends
// them after reading the client's last flight).
func tlsUpstream(t *testing.T, late bool, serve func(n int, req *http.Request, w *bufio.Writer) bool) (*rawup.Upstream, *x509.CertPool, *atomic.Int32) {
	cert, roots := testCert(t)
	resumed := new(atomic.Int32)
	conf := &tls.Config{
		Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13, NextProtos: []string{"http/1.1"},
		VerifyConnection: func(cs tls.ConnectionState) error {
			if cs.DidResume {
				resumed.Add(1)
			}
			return nil
		},
	}
	if late {
		conf.ClientAuth = tls.RequestClientCert
	}
	return rawup.StartTLS(t, conf, serve), roots, resumed
}

// countingCache counts the sessions (tickets) put in it.
type countingCache struct {
	tls.ClientSessionCache
	puts atomic.Int32
}

func (c *countingCache) Put(key string, cs *tls.ClientSessionState) {
	if cs != nil {
		c.puts.Add(1)
	}
	c.ClientSessionCache.Put(key, cs)
}

func tlsClient(t *testing.T, up *rawup.Upstream, roots *x509.CertPool) (*client, *countingCache) {
	cache := &countingCache{ClientSessionCache: tls.NewLRUClientSessionCache(8)}
	p := NewTLSPool(up.Host(), (&net.Dialer{Timeout: 5 * time.Second}).DialContext, &tls.Config{RootCAs: roots, ClientSessionCache: cache})
	t.Cleanup(p.Close)
	return &client{p: p, timeout: 5 * time.Second}, cache
}

// The runtime fails a read whose deadline has passed before it asks the
// socket, so such a read cannot serve as the check before reuse: bytes
// that have arrived stay unread (see tls.go).
func TestExpiredDeadlineDoesNotRead(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	waitReadable(t, c)
	_ = c.SetReadDeadline(aLongTimeAgo)
	var b [1]byte
	n, err := c.Read(b[:])
	var ne net.Error
	if n != 0 || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read with a passed deadline got %d, %v; the check's design assumes a timeout without reading", n, err)
	}
}

// waitReadable waits (at most 5 s) until bytes have arrived on c's socket.
func waitReadable(t *testing.T, c net.Conn) {
	t.Helper()
	raw := rawConn(c)
	var buf [1]byte
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		var n int
		_ = raw.Read(func(fd uintptr) bool {
			n, _, _ = syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			return true
		})
		if n > 0 {
			return
		}
		time.Sleep(time.Millisecond) // polling: the socket gives no signal to wait for
	}
	t.Fatal("nothing arrived on the socket")
}

// Over TLS the pool keeps connections alive as over TCP, and a new
// connection resumes the session of an earlier one.
func TestTLSKeepsConnectionsAliveAndResumes(t *testing.T) {
	up, roots, resumed := tlsUpstream(t, false, func(n int, req *http.Request, w *bufio.Writer) bool {
		answer(w, req, "hello "+req.Method)
		return true
	})
	lt, _ := tlsClient(t, up, roots)
	for i := range 20 {
		method := [2]string{"GET", "HEAD"}[i%2]
		resp, body, err := get(t, lt, method, "https://"+up.Host()+"/x")
		if err != nil || resp.StatusCode != 200 || method == "GET" && body != "hello GET" {
			t.Fatalf("request %d: %v %v %q", i, resp, err, body)
		}
	}
	if n := up.Accepted.Load(); n != 1 {
		t.Fatalf("%d connections for 20 sequential requests, want 1", n)
	}
	lt.p.CloseIdle()
	if _, body, err := get(t, lt, "GET", "https://"+up.Host()+"/y"); err != nil || body != "hello GET" {
		t.Fatalf("after CloseIdle: %v %q", err, body)
	}
	if up.Accepted.Load() != 2 || resumed.Load() != 1 {
		t.Fatalf("%d connections, %d resumed; want the second to resume the first's session", up.Accepted.Load(), resumed.Load())
	}
}

// A session ticket that arrives on an idle connection (sent after the
// client's handshake ended) is no stray byte: the check takes it into the
// session cache and finds the connection quiet, and the connection serves
// the next request.
func TestTLSLateTicketKeepsConnection(t *testing.T) {
	up, roots, _ := tlsUpstream(t, true, func(n int, req *http.Request, w *bufio.Writer) bool {
		answer(w, req, fmt.Sprint("answer ", n))
		return true
	})
	lt, cache := tlsClient(t, up, roots)
	c, _, err := lt.p.get(context.Background(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if cache.puts.Load() != 0 {
		t.Fatal("the ticket came with the handshake; the test needs it later")
	}
	waitReadable(t, c.wire.Conn) // the ticket, on the idle connection
	if !c.quiet() {
		t.Fatal("a connection holding only a session ticket is not quiet")
	}
	if cache.puts.Load() == 0 {
		t.Fatal("the check did not take the ticket into the session cache")
	}
	lt.p.put(c)
	for i := 1; i <= 3; i++ {
		_, body, err := get(t, lt, "GET", "https://"+up.Host()+"/x")
		if want := fmt.Sprint("answer ", i); err != nil || body != want {
			t.Fatalf("request %d: %v %q, want %q", i, err, body, want)
		}
	}
	if n := up.Accepted.Load(); n != 1 {
		t.Fatalf("%d connections, want the checked one used again", n)
	}
}

// Application data after a response, whether the TLS layer has already
// read it with the response (same write) or it arrives later on the idle
// connection, costs the connection and never answers a later request.
func TestTLSStrayRecordsAreNotAnswers(t *testing.T) {
	const forged = "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged"
	now, sent := make(chan struct{}), make(chan struct{}, 1)
	up, roots, _ := tlsUpstream(t, false, func(n int, req *http.Request, w *bufio.Writer) bool {
		answer(w, req, fmt.Sprint("answer ", n))
		switch req.URL.Path {
		case "/same-write":
			_ = w.Flush() // a record of its own, in the same burst
			w.WriteString(forged)
			_ = w.Flush()
			sent <- struct{}{} // buffered: the client may read it with its answer
		case "/later":
			_ = w.Flush()
			select {
			case <-now: // the client has its answer
			case <-time.After(5 * time.Second):
				return false // the test failed before
			}
			w.WriteString(forged)
			_ = w.Flush()
			select {
			case sent <- struct{}{}:
			case <-time.After(5 * time.Second):
			}
		}
		return true
	})
	lt, _ := tlsClient(t, up, roots)
	n := 0
	for _, path := range []string{"/same-write", "/later"} {
		for range 3 {
			n++
			_, body, err := get(t, lt, "GET", "https://"+up.Host()+path)
			if want := fmt.Sprint("answer ", n); err != nil || body != want {
				t.Fatalf("%s request %d: %v %q, want %q", path, n, err, body, want)
			}
			// The stray data has reached the gateway's side (on loopback a
			// write is there when it returns) before the next request: data
			// still on its way is no more found over TLS than over TCP.
			if path == "/same-write" {
				<-sent
			}
			if path == "/later" {
				lt.p.mu.Lock()
				c := lt.p.idle[len(lt.p.idle)-1]
				lt.p.mu.Unlock()
				now <- struct{}{}
				<-sent
				waitReadable(t, c.wire.Conn)
			}
		}
	}
	if got := up.Accepted.Load(); got != 6 {
		t.Fatalf("%d connections for 6 requests each followed by stray data, want 6", got)
	}
}
