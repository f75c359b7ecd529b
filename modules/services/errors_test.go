package services

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

func testTimeout(t *testing.T, g *gatewayUnderTest) {
	id := newID()
	r := call(t, "GET", g.url("/proxy/slow/slow?x=1"), nil, "X-Test-Id", id)
	if r.status != http.StatusGatewayTimeout {
		t.Fatalf("status %d, want 504: %s", r.status, r.body)
	}
	// The service timeout is 500ms and a timeout is not retried.
	if r.took < 450*time.Millisecond || r.took > 2*time.Second {
		t.Errorf("504 after %v, want 500ms plus a margin", r.took)
	}
	m := decode(t, r)
	if m["error"] != "Gateway Timeout" || m["service"] != "slow" || !strings.Contains(fmt.Sprint(m["message"]), "500ms") {
		t.Errorf("body %s", r.body)
	}
	assertNoSecrets(t, "504 response", string(r.body)+fmt.Sprint(r.header))
	select {
	case got := <-g.up.canceled:
		if got != id {
			t.Errorf("canceled request %s, want %s", got, id)
		}
	case <-time.After(5 * time.Second):
		t.Error("the upstream request was not cancelled after the timeout")
	}
}

func testClientGone(t *testing.T, g *gatewayUnderTest) {
	id := newID()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", g.url("/proxy/slow/slow"), nil)
	req.Header.Set("X-Test-Id", id)
	errc := make(chan error, 1)
	go func() {
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	// Wait until the request is at the upstream, then go away.
	deadline := time.Now().Add(5 * time.Second)
	for !g.up.received(id) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("client error %v, want canceled", err)
	}
	select {
	case got := <-g.up.canceled:
		if got != id {
			t.Errorf("canceled %s, want %s", got, id)
		}
	case <-time.After(5 * time.Second):
		t.Error("the upstream request was not cancelled when the client went away")
	}
	waitLog(t, g, "client went away before the upstream answered", 1)
}

// testClosedPort: a refused connection is a 502; a GET is retried
// (service "down" has retries 2), a POST is not.
func testClosedPort(t *testing.T, g *gatewayUnderTest) {
	const retryMsg = "retrying upstream request after a connection failure"
	before := countLog(g, retryMsg, "down")

	r := call(t, "POST", g.url("/proxy/down/items?key=client"), strings.NewReader("body"))
	if r.status != http.StatusBadGateway {
		t.Fatalf("POST: status %d, want 502: %s", r.status, r.body)
	}
	m := decode(t, r)
	if m["error"] != "Bad Gateway" || m["service"] != "down" || !strings.Contains(fmt.Sprint(m["message"]), "connection refused") {
		t.Errorf("body %s", r.body)
	}
	assertNoSecrets(t, "502 response", string(r.body)+fmt.Sprint(r.header))

	r = call(t, "GET", g.url("/proxy/down/items"), nil)
	if r.status != http.StatusBadGateway {
		t.Fatalf("GET: status %d, want 502", r.status)
	}
	if r.took < 100*time.Millisecond {
		t.Errorf("GET failed after %v: the retries' backoff (50ms+100ms) did not happen", r.took)
	}
	// The log is ordered: once the GET's two retries are logged, any retry
	// of the POST (sent first) would be there too.
	waitLog(t, g, retryMsg, before+2, "down")
	if n := countLog(g, retryMsg, "down"); n != before+2 {
		t.Errorf("%d retries logged, want 2 (GET retried twice, POST never)", n-before)
	}
	for _, attempt := range []string{`"attempt":1`, `"attempt":2`} {
		if countLog(g, retryMsg, "down", attempt) != 1 {
			t.Errorf("no single retry line with %s", attempt)
		}
	}
}

func countLog(g *gatewayUnderTest, msg string, service string, extra ...string) int {
	n := 0
	for _, line := range strings.Split(g.in.Logs(), "\n") {
		if !strings.Contains(line, msg) || service != "" && !strings.Contains(line, `"service":"`+service+`"`) {
			continue
		}
		ok := true
		for _, e := range extra {
			ok = ok && strings.Contains(line, e)
		}
		if ok {
			n++
		}
	}
	return n
}

func waitLog(t *testing.T, g *gatewayUnderTest, msg string, want int, service ...string) {
	t.Helper()
	svc := ""
	if len(service) > 0 {
		svc = service[0]
	}
	waitLogWith(t, g, msg, svc, want)
}

// waitLogWith waits for want lines with msg, service and every extra.
func waitLogWith(t *testing.T, g *gatewayUnderTest, msg, svc string, want int, extra ...string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for countLog(g, msg, svc, extra...) < want {
		if time.Now().After(deadline) {
			t.Fatalf("log never had %d lines with %q", want, msg)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
