package leanhttp

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// A pool made by NewAutoTLSPool speaks HTTP/1.1 only to an upstream that
// agrees to it by ALPN, so that a service whose upstream may speak HTTP/2
// alone (http_version auto) can try HTTP/1.1 first and lose nothing when
// it cannot: the handshake tells before any byte of a request is sent.
//
// The lean client offers http/1.1 alone. Offering h2 too would make most
// servers that speak both choose HTTP/2, which this client does not speak.
// With http/1.1 alone, a server that speaks both agrees to it; one that
// speaks HTTP/2 alone either refuses the handshake (alert
// no_application_protocol) or completes it with no protocol (crypto/tls
// lets an h2-only server accept an http/1.1 client so, then the server
// closes the connection or speaks HTTP/2 on it). Both are declines here,
// and so is a server without ALPN: the request is then not written, and
// the caller sends it another way (ErrNoHTTP1). What is never taken for a
// decline is a connection closed after the request went out: on a fresh
// connection that is no evidence of the protocol, and the request may
// have been acted on.

// ErrNoHTTP1 is the error of a request to a pool made by NewAutoTLSPool
// whose upstream did not agree to HTTP/1.1 by ALPN in the handshake made
// for it (or the first handshake it waited for). Nothing of the request
// was sent.
var ErrNoHTTP1 = errors.New("the upstream did not agree to HTTP/1.1 by ALPN")

// ReprobeAfter is how long a pool made by NewAutoTLSPool takes an
// upstream's decline for an answer: Declined reports it for that long
// after the last declining handshake, then lets one request try again
// (one TLS handshake per period, of an upstream that may have changed).
const ReprobeAfter = 5 * time.Minute

// NewAutoTLSPool is NewTLSPool for an upstream that may not speak
// HTTP/1.1: a connection is only used when its handshake agreed on
// http/1.1 by ALPN; a request that finds the upstream declining gets
// ErrNoHTTP1 with nothing sent, and Declined tells callers to send
// requests another way for ReprobeAfter.
func NewAutoTLSPool(host string, dial Dialer, conf *tls.Config) *Pool {
	p := NewTLSPool(host, dial, conf)
	p.alpn = &alpnState{reprobe: ReprobeAfter}
	return p
}

// alpnState is what a pool made by NewAutoTLSPool knows of its upstream's
// answer to ALPN http/1.1. Declined reads it without a lock: it runs for
// every bodiless request to an upstream that declined.
type alpnState struct {
	agreed   atomic.Bool   // the last handshake agreed
	declined atomic.Int64  // when one last declined (Unix ns); 0 if none did since one agreed
	probe    atomic.Bool   // one handshake may try again though the upstream declined (declinedNow)
	reprobe  time.Duration // ReprobeAfter (tests shorten it)

	mu    sync.Mutex
	first chan struct{} // closed when the first handshake in flight ends; nil when none is
}

// Declined reports whether requests should not be sent through this pool
// now: a handshake declined HTTP/1.1 less than ReprobeAfter ago. Once that
// is over, one caller gets false (and tries the upstream again) while the
// others keep getting true until its handshake answers. A pool not made by
// NewAutoTLSPool never declines.
func (p *Pool) Declined() bool {
	a := p.alpn
	if a == nil || a.agreed.Load() {
		return false // inlined: the common case costs two loads
	}
	return a.declinedNow()
}

func (a *alpnState) declinedNow() bool {
	d := a.declined.Load()
	if d == 0 {
		return false // nothing known yet: the handshake will tell
	}
	now := time.Now().UnixNano()
	if now-d < int64(a.reprobe) {
		return true
	}
	// This caller probes if it is the first to see the period over; the
	// others wait for another period.
	if a.declined.CompareAndSwap(d, now) {
		a.probe.Store(true)
		return false
	}
	return true
}

// dialAuto dials and secures a connection for a pool made by
// NewAutoTLSPool. While nothing is known of the upstream, one handshake
// runs at a time and the others wait for its answer (once), so that a
// burst of first requests to an HTTP/2-only upstream costs one handshake,
// not one each.
func (p *Pool) dialAuto(ctx context.Context, timeout time.Duration) (*conn, error) {
	a := p.alpn
	a.mu.Lock()
	unknown := !a.agreed.Load() && a.declined.Load() == 0
	var own chan struct{}
	if unknown && a.first == nil {
		own = make(chan struct{})
		a.first = own
	}
	wait := a.first
	if !unknown && !a.agreed.Load() && !a.probe.CompareAndSwap(true, false) {
		// The upstream declined since this caller asked Declined (a
		// burst's first handshake answered meanwhile), and no re-probe is
		// due: a handshake now would only decline again.
		a.mu.Unlock()
		return nil, ErrNoHTTP1
	}
	a.mu.Unlock()
	if unknown && own == nil {
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if !a.agreed.Load() && a.declined.Load() != 0 {
			return nil, ErrNoHTTP1
		}
	}
	c, err := p.dialTLS(ctx, timeout)
	a.mu.Lock()
	switch {
	case err == nil:
		a.declined.Store(0)
		a.agreed.Store(true)
	case errors.Is(err, ErrNoHTTP1):
		a.agreed.Store(false)
		a.declined.Store(time.Now().UnixNano())
	}
	if own != nil {
		a.first = nil
		close(own)
	}
	a.mu.Unlock()
	return c, err
}

// dialTLS dials and secures a connection (handshake).
func (p *Pool) dialTLS(ctx context.Context, timeout time.Duration) (*conn, error) {
	nc, err := p.dial(ctx, "tcp", p.addr)
	if err != nil {
		return nil, err
	}
	return p.handshake(ctx, nc, timeout)
}

// checkALPN is the handshake's verdict for a pool made by NewAutoTLSPool:
// err (the handshake's error) or the protocol tc negotiated declining
// HTTP/1.1 give ErrNoHTTP1; other errors stay as they are (a certificate
// that fails verification is never a reason to go another way).
func (p *Pool) checkALPN(tc *tls.Conn, err error) error {
	if p.alpn == nil {
		return err
	}
	if err != nil {
		if noApplicationProtocol(err) {
			return fmt.Errorf("%w: %w", ErrNoHTTP1, err)
		}
		return err
	}
	if proto := tc.ConnectionState().NegotiatedProtocol; proto != "http/1.1" {
		return fmt.Errorf("%w (negotiated %q)", ErrNoHTTP1, proto)
	}
	return nil
}

// noApplicationProtocol: err is the server's TLS alert no_application_protocol
// (crypto/tls reports a received alert as a net.OpError "remote error").
func noApplicationProtocol(err error) bool {
	var opErr *net.OpError
	return errors.As(err, &opErr) && opErr.Op == "remote error" && opErr.Err != nil &&
		opErr.Err.Error() == tls.AlertError(120).Error()
}
