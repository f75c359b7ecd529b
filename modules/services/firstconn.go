package services

import (
	"net/http"
	"net/http/httptrace"
	"sync"
	"sync/atomic"
	"time"
)

// firstConn makes a burst of first requests to an https upstream share
// one connection when it is HTTP/2. http.Transport dials one connection
// per request waiting for one, since it cannot know the protocol before a
// handshake; with HTTP/2 the extra ones are closed once their handshakes
// end (net/http's h2 addConnIfNeeded), so 50 clients arriving together
// cost the upstream 50 TLS handshakes for one connection kept. Here a
// request to a host goes alone until it has a connection, and the others
// then find it in the Transport's HTTP/2 pool (or, for HTTP/1.1, dial
// their own); after that requests pass for gateOpen, then one goes alone
// again, so that a burst after a quiet spell (the Transport closes idle
// connections after 90 s) is coalesced too. Against a warm pool that
// wait is as short as taking a pooled connection.
type firstConn struct {
	next  http.RoundTripper
	hosts map[string]*connGate // the https hosts of the service's routes
}

// gateOpen is how long requests pass after one got a connection.
const gateOpen = 30 * time.Second

// connGate is one host's.
type connGate struct {
	openUntil atomic.Int64 // Unix ns until which requests pass
	mu        sync.Mutex
	wait      chan struct{} // closed when the request in flight got a connection or ended; nil when none is
}

// newFirstConn wraps next for the https hosts of f's routes; next alone
// when there are none.
func newFirstConn(next http.RoundTripper, f *forwarder) http.RoundTripper {
	hosts := map[string]*connGate{}
	add := func(rt *route) {
		if rt.scheme == "https" {
			hosts[rt.host] = new(connGate)
		}
	}
	add(&f.base)
	for _, rt := range f.versions {
		add(rt)
	}
	if len(hosts) == 0 {
		return next
	}
	return &firstConn{next: next, hosts: hosts}
}

func (t *firstConn) RoundTrip(req *http.Request) (*http.Response, error) {
	g := t.hosts[req.URL.Host]
	if g == nil || time.Now().UnixNano() < g.openUntil.Load() {
		return t.next.RoundTrip(req)
	}
	g.mu.Lock()
	if time.Now().UnixNano() < g.openUntil.Load() {
		g.mu.Unlock()
		return t.next.RoundTrip(req)
	}
	if w := g.wait; w != nil {
		g.mu.Unlock()
		select {
		case <-w:
		case <-req.Context().Done():
			return nil, req.Context().Err()
		}
		return t.next.RoundTrip(req)
	}
	w := make(chan struct{})
	g.wait = w
	g.mu.Unlock()
	release := sync.OnceFunc(func() {
		g.mu.Lock()
		g.wait = nil
		close(w)
		g.mu.Unlock()
	})
	defer release() // a request that failed lets the next one try
	trace := &httptrace.ClientTrace{GotConn: func(httptrace.GotConnInfo) {
		g.openUntil.Store(time.Now().Add(gateOpen).UnixNano())
		release()
	}}
	return t.next.RoundTrip(req.WithContext(httptrace.WithClientTrace(req.Context(), trace)))
}
