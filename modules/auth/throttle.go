package auth

import (
	"hash/maphash"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"golang.org/x/time/rate"
)

// failureStore throttles key guessing. Each client address that presented
// a wrong key has a token bucket (golang.org/x/time/rate: burst max,
// refilled max per window); a wrong key spends a token, and an address
// with no token left is blocked until one is back. A full bucket says
// nothing (a new bucket is full), so the sweeper deletes full buckets and
// the store is empty, and costs one atomic load per request, while nobody
// guesses.
//
// Memory is bounded whatever the number of addresses: each shard holds at
// most shardCap buckets, and a new address in a full shard evicts an
// arbitrary one. An attacker with more addresses than that can outrun the
// throttle, as one with that many addresses always could; the throttle
// stops one address (one IPv6 /64) from trying keys quickly, not a botnet.
//
// It differs from ratelimit's client buckets (modules/ratelimit/buckets.go),
// whose shape it follows, in what spends a token (a failure, after the
// fact, instead of every request before it), in the hard bound on
// addresses and in the key (an address, IPv6 by /64).
type failureStore struct {
	max    int
	window time.Duration
	limit  rate.Limit
	seed   maphash.Seed
	held   atomic.Int64 // buckets in all shards

	shards [failureShards]failureShard

	stop    chan struct{}
	done    chan struct{}
	started bool
}

type failureShard struct {
	mu sync.Mutex
	m  map[netip.Addr]*rate.Limiter
}

const (
	failureShards = 64
	// maxFailureBuckets bounds the store: about 200 bytes a bucket, so a
	// few MiB under an address flood.
	maxFailureBuckets = 1 << 15
	shardCap          = maxFailureBuckets / failureShards
)

func newFailureStore(max int, window time.Duration) *failureStore {
	s := &failureStore{
		max:    max,
		window: window,
		limit:  rate.Limit(float64(max) / window.Seconds()),
		seed:   maphash.MakeSeed(),
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
	}
	for i := range s.shards {
		s.shards[i].m = make(map[netip.Addr]*rate.Limiter)
	}
	return s
}

// active reports whether any address has a bucket; when none does, no
// request is blocked and the caller need not work out its address.
func (s *failureStore) active() bool { return s.held.Load() > 0 }

// blocked reports whether addr has no wrong key left to try, and how long
// until it has one.
func (s *failureStore) blocked(now time.Time, addr netip.Addr) (time.Duration, bool) {
	sh := s.shard(addr)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	lim := sh.m[addr]
	if lim == nil {
		return 0, false
	}
	if tokens := lim.TokensAt(now); tokens < 1 {
		return s.durationFor(1 - tokens), true
	}
	return 0, false
}

// fail spends one token of addr's bucket for a wrong key.
func (s *failureStore) fail(now time.Time, addr netip.Addr) {
	sh := s.shard(addr)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	lim := sh.m[addr]
	if lim == nil {
		if len(sh.m) >= shardCap {
			for k := range sh.m { // an arbitrary bucket: map order is random
				delete(sh.m, k)
				s.held.Add(-1)
				break
			}
		}
		lim = rate.NewLimiter(s.limit, s.max)
		sh.m[addr] = lim
		s.held.Add(1)
	}
	lim.AllowN(now, 1) // no token left: already blocked, nothing to spend
}

// durationFor is how long the bucket takes to gain n tokens.
func (s *failureStore) durationFor(n float64) time.Duration {
	return time.Duration(n / float64(s.limit) * float64(time.Second))
}

func (s *failureStore) shard(a netip.Addr) *failureShard {
	b := a.As16()
	return &s.shards[maphash.Bytes(s.seed, b[:])%failureShards]
}

// sweep deletes every full bucket and returns how many are left.
func (s *failureStore) sweep(now time.Time) int {
	left := 0
	full := float64(s.max)
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		removed := 0
		for k, lim := range sh.m {
			if lim.TokensAt(now) >= full {
				delete(sh.m, k)
				removed++
			}
		}
		s.held.Add(int64(-removed))
		if removed > 0 && len(sh.m) == 0 {
			sh.m = make(map[netip.Addr]*rate.Limiter) // Go maps keep their memory after deletes
		}
		left += len(sh.m)
		sh.mu.Unlock()
	}
	return left
}

// start runs the sweeper until Destruct. An idle bucket is full after one
// window, so sweeping once a window (between 1s and 1m) keeps it at most
// about two.
func (s *failureStore) start() {
	s.started = true
	interval := min(max(s.window, time.Second), time.Minute)
	go func() {
		defer close(s.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-s.stop:
				return
			case now := <-t.C:
				s.sweep(now)
			}
		}
	}()
}

// Destruct stops the sweeper when the last config using this store is
// unloaded (caddy.UsagePool).
func (s *failureStore) Destruct() error {
	close(s.stop)
	if s.started {
		<-s.done
	}
	return nil
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
