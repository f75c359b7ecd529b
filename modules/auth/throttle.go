package auth

import (
	"hash/maphash"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/byteproxy/byteproxy/internal/buckets"
)

// failureStore throttles key guessing. Each client address that presented
// a wrong key has a token bucket (internal/buckets: burst max, refilled
// max per window); a wrong key spends a token, and an address with no
// token left is blocked until one is back. Full buckets are swept away,
// so the store is empty, and costs one atomic load per request, while
// nobody guesses.
//
// Memory is bounded whatever the number of addresses: each shard holds at
// most shardCap buckets, and a new address in a full shard evicts an
// arbitrary one. An attacker with more addresses than that can outrun the
// throttle, as one with that many addresses always could; the throttle
// stops one address (one IPv6 /64) from trying keys quickly, not a botnet.
//
// It differs from ratelimit's client buckets in what spends a token (a
// failure, after the fact, instead of every request before it), in the
// hard bound on addresses and in the key (an address, IPv6 by /64).
type failureStore struct {
	*buckets.Store[netip.Addr]
}

const (
	failureShards = 64
	// maxFailureBuckets bounds the store: about 200 bytes a bucket, so a
	// few MiB under an address flood.
	maxFailureBuckets = 1 << 15
	shardCap          = maxFailureBuckets / failureShards
)

func newFailureStore(max int, window time.Duration) *failureStore {
	seed := maphash.MakeSeed()
	return &failureStore{buckets.New(max, window, failureShards, shardCap, func(a netip.Addr) uint64 {
		b := a.As16()
		return maphash.Bytes(seed, b[:])
	})}
}

// blocked reports whether addr has no wrong key left to try, and how long
// until it has one.
func (s *failureStore) blocked(now time.Time, addr netip.Addr) (time.Duration, bool) {
	sh := s.Lock(addr)
	defer sh.Unlock()
	lim := sh.Get(addr)
	if lim == nil {
		return 0, false
	}
	if tokens := lim.TokensAt(now); tokens < 1 {
		return s.DurationFor(1 - tokens), true
	}
	return 0, false
}

// fail spends one token of addr's bucket for a wrong key.
func (s *failureStore) fail(now time.Time, addr netip.Addr) {
	sh := s.Lock(addr)
	defer sh.Unlock()
	lim := sh.Get(addr)
	if lim == nil {
		lim = sh.Add(addr)
	}
	lim.AllowN(now, 1) // no token left: already blocked, nothing to spend
}

// clientAddr is the address a request's failures are counted against:
// Caddy's client IP (which honours trusted_proxies), else the TCP peer;
// an IPv6 address by its /64, the block one host usually gets. The zero
// Addr when neither parses (a Unix socket peer): such requests share one
// bucket.
func clientAddr(r *http.Request) netip.Addr {
	s, _ := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string)
	if s == "" {
		s = r.RemoteAddr
		if host, _, err := net.SplitHostPort(s); err == nil {
			s = host
		}
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}
	}
	a = a.WithZone("").Unmap()
	if a.Is6() {
		if p, err := a.Prefix(64); err == nil {
			return p.Addr()
		}
	}
	return a
}
