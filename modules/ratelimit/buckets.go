package ratelimit

import (
	"hash/maphash"
	"math"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// clientKey names a consumer: the id of the API key it authenticated
// with, else its IP address. The kind keeps a key id from colliding with
// an address.
type clientKey struct {
	kind byte // kindKeyID or kindIP
	id   string
}

const (
	kindKeyID = 'k'
	kindIP    = 'i'
)

func (k clientKey) String() string {
	if k.kind == kindKeyID {
		return "key:" + k.id
	}
	return "ip:" + k.id
}

// bucketShards spreads consumers over independently locked maps so that
// concurrent requests of different consumers rarely wait for each other.
const bucketShards = 256

// bucketStore holds one token bucket (golang.org/x/time/rate: burst max,
// refilled max per size) per consumer. A bucket that is full carries no
// information (a new bucket is full), so a periodic sweep deletes full
// buckets: memory is bounded by the consumers active within one window,
// and eviction never changes a decision.
type bucketStore struct {
	max   int
	size  time.Duration
	limit rate.Limit
	seed  maphash.Seed

	shards [bucketShards]bucketShard

	stop    chan struct{}
	done    chan struct{}
	started bool
}

type bucketShard struct {
	mu   sync.Mutex
	m    map[clientKey]*rate.Limiter
	peak int // largest len(m) since the map was last rebuilt
	_    [40]byte
}

func newBucketStore(max int, size time.Duration) *bucketStore {
	s := &bucketStore{
		max:   max,
		size:  size,
		limit: rate.Limit(float64(max) / size.Seconds()),
		seed:  maphash.MakeSeed(),
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
	}
	for i := range s.shards {
		s.shards[i].m = make(map[clientKey]*rate.Limiter)
	}
	return s
}

// bucketState is a client decision and the figures for its headers.
type bucketState struct {
	ok        bool
	remaining int64         // whole tokens left
	full      time.Duration // until the bucket is full again (the "reset")
	retry     time.Duration // until one token is available (when !ok)
}

// admit spends cost tokens of k's bucket if it has them and then (when
// given) also passes next, the service check. The bucket stays locked
// while next runs, so a request that next refuses spends no token; next
// therefore must not call back into the store.
//
// A request costs one token, except during a Redis outage, where it costs
// the number of live instances (see Handler.clientCost): that divides both
// the bucket's burst and its rate by the number of instances, so a client
// spread over all of them gets about one bucket in all.
func (s *bucketStore) admit(now time.Time, k clientKey, cost int, next func() bool) bucketState {
	sh := &s.shards[s.shard(k)]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	lim := sh.m[k]
	if lim == nil {
		lim = rate.NewLimiter(s.limit, s.max)
		sh.m[k] = lim
		if len(sh.m) > sh.peak {
			sh.peak = len(sh.m)
		}
	}
	tokens := lim.TokensAt(now)
	if tokens < float64(cost) {
		return s.state(false, tokens, cost)
	}
	if next != nil && !next() {
		return s.state(true, tokens, cost)
	}
	lim.AllowN(now, cost) // cannot fail: the tokens are there and the shard is locked
	return s.state(true, tokens-float64(cost), cost)
}

// peek reports k's bucket without spending a token.
func (s *bucketStore) peek(now time.Time, k clientKey, cost int) bucketState {
	sh := &s.shards[s.shard(k)]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if lim := sh.m[k]; lim != nil {
		return s.state(true, lim.TokensAt(now), cost)
	}
	return s.state(true, float64(s.max), cost)
}

// state reports a bucket holding tokens to requests costing cost each.
func (s *bucketStore) state(ok bool, tokens float64, cost int) bucketState {
	st := bucketState{ok: ok, remaining: int64(math.Floor(max(tokens, 0) / float64(cost)))}
	st.full = s.durationFor(float64(s.max) - tokens)
	if !ok {
		st.retry = s.durationFor(float64(cost) - tokens)
	}
	return st
}

// durationFor is how long the bucket takes to gain n tokens.
func (s *bucketStore) durationFor(n float64) time.Duration {
	if n <= 0 {
		return 0
	}
	return time.Duration(n / float64(s.limit) * float64(time.Second))
}

func (s *bucketStore) shard(k clientKey) uint64 {
	return (maphash.String(s.seed, k.id) ^ uint64(k.kind)) % bucketShards
}

// sweep deletes every full bucket and returns how many buckets are left.
// A shard whose map shrank to a quarter of its peak is rebuilt, because
// Go maps keep their memory after deletes.
func (s *bucketStore) sweep(now time.Time) int {
	left := 0
	full := float64(s.max)
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		for k, lim := range sh.m {
			if lim.TokensAt(now) >= full {
				delete(sh.m, k)
			}
		}
		if sh.peak > 64 && len(sh.m) < sh.peak/4 {
			m := make(map[clientKey]*rate.Limiter, len(sh.m))
			for k, v := range sh.m {
				m[k] = v
			}
			sh.m, sh.peak = m, len(m)
		}
		left += len(sh.m)
		sh.mu.Unlock()
	}
	return left
}

// len is the number of buckets held.
func (s *bucketStore) len() int {
	n := 0
	for i := range s.shards {
		s.shards[i].mu.Lock()
		n += len(s.shards[i].m)
		s.shards[i].mu.Unlock()
	}
	return n
}

// sweepInterval: a bucket idle for one window is full, so sweeping once a
// window (between 1s and 1m) keeps an idle bucket at most about two
// windows.
func (s *bucketStore) sweepInterval() time.Duration {
	return min(max(s.size, time.Second), time.Minute)
}

// start runs the sweeper until Destruct.
func (s *bucketStore) start() {
	s.started = true
	go func() {
		defer close(s.done)
		t := time.NewTicker(s.sweepInterval())
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

// Destruct stops the sweeper when the last config using this limit is
// unloaded (caddy.UsagePool).
func (s *bucketStore) Destruct() error {
	close(s.stop)
	if s.started {
		<-s.done
	}
	return nil
}
