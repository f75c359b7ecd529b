package services

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/byteproxy/byteproxy/internal/httpx"
	"github.com/byteproxy/byteproxy/internal/routes"
	"github.com/byteproxy/byteproxy/modules/gateway"
)

// The differential test of issue 11.3: the same misbehaving upstreams,
// driven through the gateway's lean path and through its other path
// (ReverseProxy over http.Transport), with two clients taking turns. Each
// request carries its own id, which the upstream echoes; what a misbehaving
// upstream leaves on a connection is a forged response with another id.
// The lean path must never deliver a response to a request other than its
// own, and never do worse than the Transport.

// misRounds is the number of requests per behaviour and path.
const misRounds = 1000

// A behaviour is what the upstream does with a request. tail, when the
// behaviour has one, is what the upstream leaves after the response: a
// forged response, sent with the response or, in deferred rounds, once
// the client has its answer (then it arrives on an idle connection).
type misBehaviour struct {
	name     string
	method   string
	deferred func(round int) bool // whether the tail comes later
}

var misBehaviours = []misBehaviour{
	{"control", "GET", nil},
	{"misframed-length", "GET", alternate},
	{"body-after-head", "HEAD", alternate},
	{"body-after-204", "GET", alternate},
	{"body-after-304", "GET", alternate},
	{"extra-after-chunked", "GET", alternate},
	{"late-bytes-idle", "GET", func(int) bool { return true }},
	{"close-mid-body", "GET", nil},
}

func alternate(round int) bool { return round%2 == 1 }

// forged is the response a misbehaving upstream plants on a connection.
const forgedBody = `{"id":"forged"}`

var forged = fmt.Sprintf("HTTP/1.1 200 OK\r\nX-Echo-Id: forged\r\nContent-Length: %d\r\n\r\n%s", len(forgedBody), forgedBody)

// hostile is the misbehaving upstream: it answers /b/<behaviour> as the
// behaviour says, echoing the request's X-Request-Id in X-Echo-Id and in
// the body. A tail for later goes to tails, for the driver to send.
type hostile struct {
	ln    net.Listener
	tails chan tail
}

type tail struct {
	conn net.Conn // the upstream's side (a *tls.Conn over TLS)
	raw  net.Conn // its TCP connection
	data string
}

func startHostile(t *testing.T) *hostile { return startHostileTLS(t, nil) }

// startHostileTLS is startHostile speaking TLS with conf (nil: plain TCP).
func startHostileTLS(t *testing.T, conf *tls.Config) *hostile {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := &hostile{ln: ln, tails: make(chan tail, 1)}
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
			if conf != nil {
				c = tls.Server(c, conf)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil || !h.answer(c, req) {
						return
					}
				}
			}()
		}
	}()
	return h
}

// answer writes the response to req; false closes the connection.
func (h *hostile) answer(c net.Conn, req *http.Request) bool {
	id := req.Header.Get("X-Request-Id")
	behaviour, _ := strings.CutPrefix(req.URL.Path, "/b/")
	later := req.Header.Get("X-Tail") == "later"
	body := "id=" + id + ";"
	head := func(status string, extra string) string {
		return "HTTP/1.1 " + status + "\r\nX-Echo-Id: " + id + "\r\n" + extra + "\r\n"
	}
	var resp, rest string
	switch behaviour {
	case "control", "late-bytes-idle":
		resp = head("200 OK", fmt.Sprintf("Content-Length: %d\r\n", len(body))) + body
		if behaviour == "late-bytes-idle" {
			rest = forged
		}
	case "misframed-length":
		// More bytes than the Content-Length says (as an upstream that
		// counts characters, not bytes, sends).
		resp = head("200 OK", fmt.Sprintf("Content-Length: %d\r\n", len(body))) + body
		rest = forged
	case "body-after-head":
		resp = head("200 OK", fmt.Sprintf("Content-Length: %d\r\n", len(forged)))
		rest = forged
	case "body-after-204":
		resp = head("204 No Content", "")
		rest = forged
	case "body-after-304":
		resp = head("304 Not Modified", `ETag: "x"`+"\r\n")
		rest = forged
	case "extra-after-chunked":
		resp = head("200 OK", "Transfer-Encoding: chunked\r\n") + fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(body), body)
		rest = forged
	case "close-mid-body":
		_, _ = io.WriteString(c, head("200 OK", "Content-Length: 100\r\n")+body)
		return false
	case "close-before-answer":
		return false
	case "reset-mid-body":
		_, _ = io.WriteString(c, head("200 OK", "Content-Length: 100\r\n")+body)
		_ = rawConn(c).(*net.TCPConn).SetLinger(0) // the close sends RST
		return false
	case "stall":
		_, _ = io.Copy(io.Discard, c) // never answers; ends when the gateway gives up
		return false
	default:
		_, _ = io.WriteString(c, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
		return true
	}
	if rest == "" || !later {
		_, err := io.WriteString(c, resp+rest)
		return err == nil
	}
	if _, err := io.WriteString(c, resp); err != nil {
		return false
	}
	h.tails <- tail{c, rawConn(c), rest}
	return true
}

// misCounts is one path's result for one behaviour.
type misCounts struct {
	ok, errors   int
	misdelivered int // answered with a response that was not its own
	forged       int // of which the planted one
	// failures counts the errors by kind: the gateway's status (502, 504)
	// or "aborted" (the response broke off after its head).
	failures map[string]int
}

// recordingDial dials as the service would and remembers the gateway's
// side of each connection by its local address, so that the driver can
// tell when a tail has reached the gateway.
type recordingDial struct {
	mu    sync.Mutex
	conns map[string]*net.TCPConn
}

func (d *recordingDial) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	d.conns[c.LocalAddr().String()] = c.(*net.TCPConn)
	d.mu.Unlock()
	return c, nil
}

func (d *recordingDial) peer(upstreamSide net.Conn) *net.TCPConn {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.conns[upstreamSide.RemoteAddr().String()]
}

// misGateway serves a forwarder for a service on the hostile upstream,
// with the lean path on or off, behind a real HTTP server.
func misGateway(t *testing.T, up *hostile, lean bool) (url string, dial *recordingDial) {
	return misGatewayFor(t, up, lean, gateway.ServiceConfig{BaseURL: "http://" + up.ln.Addr().String() + "/"})
}

// misGatewayFor is misGateway for a service configured as cfg.
func misGatewayFor(t *testing.T, up *hostile, lean bool, cfg gateway.ServiceConfig) (url string, dial *recordingDial) {
	cfg.Auth = &gateway.ServiceAuth{Type: "bearer", Token: "tok-SECRET-misdelivery"}
	svc := testService(t, cfg)
	dial = &recordingDial{conns: map[string]*net.TCPConn{}}
	svc.Transport.DialContext = dial.DialContext
	f := newForwarder(svc, nil, zap.NewNop(), lean)
	t.Cleanup(svc.Close)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, rest, _ := routes.ProxyPath(r.URL.EscapedPath())
		if status, body := f.check(r, rest); status != 0 {
			_ = httpx.WriteJSON(w, status, body)
			return
		}
		f.forward(w, r, rest)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, dial
}

// drive sends misRounds requests for one behaviour through gw, the two
// clients taking turns, and counts what each got.
func drive(t *testing.T, gw string, up *hostile, dial *recordingDial, b int) misCounts {
	return driveN(t, gw, up, dial, misBehaviours[b], misRounds)
}

// driveN is drive for behaviour beh with rounds requests.
func driveN(t *testing.T, gw string, up *hostile, dial *recordingDial, beh misBehaviour, rounds int) misCounts {
	tr := &http.Transport{MaxIdleConnsPerHost: 4}
	defer tr.CloseIdleConnections()
	cl := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	n := misCounts{failures: map[string]int{}}
	for round := range rounds {
		client := [2]string{"victim", "attacker"}[round%2]
		id := fmt.Sprintf("%s-%s-%d", client, beh.name, round)
		later := beh.deferred != nil && beh.deferred(round)
		req, _ := http.NewRequest(beh.method, gw+"/proxy/svc/b/"+beh.name, nil)
		req.Header.Set("X-Request-Id", id)
		req.Header.Set("X-Client", client)
		if later {
			req.Header.Set("X-Tail", "later")
		}
		resp, err := cl.Do(req)
		var body []byte
		if err == nil {
			body, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		switch {
		case err != nil || resp.StatusCode >= 500:
			n.errors++
			kind := "aborted"
			if err == nil || resp != nil && !strings.Contains(err.Error(), "unexpected EOF") && resp.StatusCode >= 500 {
				kind = fmt.Sprint(resp.StatusCode)
				if !json.Valid(body) {
					kind += " (not JSON)"
				}
			}
			n.failures[kind]++
		case resp.Header.Get("X-Echo-Id") != id || beh.method == "GET" && resp.StatusCode == 200 && string(body) != "id="+id+";":
			n.misdelivered++
			if resp.Header.Get("X-Echo-Id") == "forged" {
				n.forged++
			}
			if n.misdelivered <= 3 {
				t.Logf("%s round %d (%s): got %s %q for %s", beh.name, round, client, resp.Header.Get("X-Echo-Id"), body, id)
			}
		default:
			n.ok++
		}
		if later {
			sendTail(t, up, dial)
		}
	}
	return n
}

// sendTail sends the tail the upstream left for later, now that the client
// has its answer, and waits until it has reached the gateway's side of the
// connection (or that side is closed): only then is the next request sent,
// so that the tail has arrived on an idle connection.
func sendTail(t *testing.T, up *hostile, dial *recordingDial) {
	var tl tail
	select {
	case tl = <-up.tails:
	case <-time.After(10 * time.Second):
		t.Fatal("the upstream left no tail")
	}
	if _, err := io.WriteString(tl.conn, tl.data); err != nil {
		return // the gateway closed the connection already
	}
	gc := dial.peer(tl.raw)
	if gc == nil {
		t.Fatal("no gateway connection for the upstream's")
	}
	if err := waitArrived(gc, tl.raw, 5*time.Second); err != nil {
		t.Fatal(err)
	}
}

func TestLeanPathNeverMisdelivers(t *testing.T) {
	up := startHostile(t)
	results := map[bool][]misCounts{}
	for _, lean := range []bool{true, false} {
		gw, dial := misGateway(t, up, lean)
		for b := range misBehaviours {
			results[lean] = append(results[lean], drive(t, gw, up, dial, b))
		}
	}
	for b, beh := range misBehaviours {
		l, tr := results[true][b], results[false][b]
		t.Logf("%-20s lean: %4d ok %4d errors %4d misdelivered | transport: %4d ok %4d errors %4d misdelivered",
			beh.name, l.ok, l.errors, l.misdelivered, tr.ok, tr.errors, tr.misdelivered)
		if l.misdelivered != 0 {
			t.Errorf("%s: the lean path delivered %d responses to requests not their own (%d forged)", beh.name, l.misdelivered, l.forged)
		}
		if l.misdelivered > tr.misdelivered {
			t.Errorf("%s: the lean path misdelivered more than the Transport (%d > %d)", beh.name, l.misdelivered, tr.misdelivered)
		}
		if beh.name == "control" && (l.ok != misRounds || tr.ok != misRounds) {
			t.Errorf("control: %d and %d of %d answered well", l.ok, tr.ok, misRounds)
		}
	}
}

var errNotArrived = errors.New("the tail did not reach the gateway within the deadline")

// rawConn is the TCP connection under c.
func rawConn(c net.Conn) net.Conn {
	if tc, ok := c.(*tls.Conn); ok {
		return tc.NetConn()
	}
	return c
}

// The differential test over TLS (issue 16): the lean path's HTTP/1.1 over
// TLS against the Transport's (http_version 1.1, so that neither speaks
// HTTP/2), with an upstream that sends its session tickets after the
// handshake (it asks for a client certificate), so that post-handshake
// messages reach the check before reuse. The lean path never delivers a
// response to a request not its own, and fails each way the Transport
// fails, with the same kind of answer.
func TestLeanTLSNeverMisdelivers(t *testing.T) {
	srv := httptest.NewUnstartedServer(nil)
	srv.StartTLS()
	conf := &tls.Config{Certificates: srv.TLS.Certificates, NextProtos: []string{"http/1.1"}, ClientAuth: tls.RequestClientCert}
	srv.Close()
	up := startHostileTLS(t, conf)
	rounds := func(name string) int {
		switch {
		case name == "stall":
			return 3 // each waits for the service's timeout
		case testing.Short():
			return 50
		}
		return 200
	}
	behaviours := append(misBehaviours[:len(misBehaviours):len(misBehaviours)],
		misBehaviour{name: "close-before-answer", method: "GET"},
		misBehaviour{name: "reset-mid-body", method: "GET"},
		misBehaviour{name: "stall", method: "GET"})
	results := map[bool][]misCounts{}
	for _, lean := range []bool{true, false} {
		gw, dial := misGatewayFor(t, up, lean, gateway.ServiceConfig{
			BaseURL: "https://" + up.ln.Addr().String() + "/", HTTPVersion: gateway.HTTP1, TLSInsecureSkipVerify: true,
		})
		for _, beh := range behaviours {
			results[lean] = append(results[lean], driveN(t, gw, up, dial, beh, rounds(beh.name)))
		}
	}
	for b, beh := range behaviours {
		l, tr := results[true][b], results[false][b]
		t.Logf("%-20s lean: %4d ok %4d errors %4d misdelivered %v | transport: %4d ok %4d errors %4d misdelivered %v",
			beh.name, l.ok, l.errors, l.misdelivered, l.failures, tr.ok, tr.errors, tr.misdelivered, tr.failures)
		if l.misdelivered != 0 {
			t.Errorf("%s: the lean path delivered %d responses to requests not their own (%d forged)", beh.name, l.misdelivered, l.forged)
		}
		if beh.name == "control" && (l.ok != rounds(beh.name) || tr.ok != rounds(beh.name)) {
			t.Errorf("control: %d and %d of %d answered well", l.ok, tr.ok, rounds(beh.name))
		}
		// The same kind of failure: the one most requests met on each path
		// (a rare other one, such as a handshake that outlasts the
		// service's timeout on a loaded machine, may happen on either).
		// Compared where most requests failed on both paths: where most
		// were answered, the odd failure (a Transport that read a forged
		// 502 as the answer) says nothing of the kind.
		if lk, tk := mostFailures(l.failures), mostFailures(tr.failures); 2*l.errors > rounds(beh.name) && 2*tr.errors > rounds(beh.name) && lk != tk {
			t.Errorf("%s: the lean path failed mostly with %q (%v), the Transport with %q (%v)", beh.name, lk, l.failures, tk, tr.failures)
		}
	}
}

// mostFailures is the kind of failure met most often ("" for none).
func mostFailures(m map[string]int) string {
	best := ""
	for k, n := range m {
		if n > m[best] || n == m[best] && k < best {
			best = k
		}
	}
	return best
}
