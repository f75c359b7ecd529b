// Package buckets holds token buckets by key (golang.org/x/time/rate:
// burst max, refilled max per window) in independently locked shards, and
// sweeps away the full ones: a full bucket carries no information (a new
// bucket is full), so memory is bounded by the keys active within about
// one window, and a sweep never changes a decision. modules/ratelimit's
// client limits and modules/auth's key-guessing throttle use it; what
// spends a token is theirs.
package buckets

import (
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Store is the buckets of one limit.
type Store[K comparable] struct {
	max    int
	window time.Duration
	limit  rate.Limit
	hash   func(K) uint64
	cap    int          // buckets per shard at the most; 0: no bound
	held   atomic.Int64 // buckets in all shards

	shards []Shard[K]

	stop    chan struct{}
	done    chan struct{}
	started bool
}

// Shard is the buckets of the keys that hash to it, behind one lock.
type Shard[K comparable] struct {
	mu   sync.Mutex
	m    map[K]*rate.Limiter
	peak int // largest len(m) since the map was last rebuilt
	s    *Store[K]
}

// New returns the buckets of max tokens per window, in shards shards
// chosen by hash. With perShard > 0 a shard holds at most that many
// buckets, and a new key in a full shard evicts an arbitrary one.
func New[K comparable](max int, window time.Duration, shards, perShard int, hash func(K) uint64) *Store[K] {
	s := &Store[K]{
		max:    max,
		window: window,
		limit:  rate.Limit(float64(max) / window.Seconds()),
		hash:   hash,
		cap:    perShard,
		shards: make([]Shard[K], shards),
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
	}
	for i := range s.shards {
		s.shards[i].m = make(map[K]*rate.Limiter)
		s.shards[i].s = s
	}
	return s
}

// Max is the burst: the tokens of a full bucket.
func (s *Store[K]) Max() int { return s.max }

// Lock locks the shard of k and returns it; the caller unlocks it.
func (s *Store[K]) Lock(k K) *Shard[K] {
	sh := &s.shards[s.hash(k)%uint64(len(s.shards))]
	sh.mu.Lock()
	return sh
}

// Unlock unlocks the shard.
func (sh *Shard[K]) Unlock() { sh.mu.Unlock() }

// Get returns k's bucket, nil when it has none (it is full).
func (sh *Shard[K]) Get(k K) *rate.Limiter { return sh.m[k] }

// Add gives k a full bucket and returns it; k must have none.
func (sh *Shard[K]) Add(k K) *rate.Limiter {
	s := sh.s
	if s.cap > 0 && len(sh.m) >= s.cap {
		for old := range sh.m { // an arbitrary bucket: map order is random
			delete(sh.m, old)
			s.held.Add(-1)
			break
		}
	}
	lim := rate.NewLimiter(s.limit, s.max)
	sh.m[k] = lim
	s.held.Add(1)
	sh.peak = max(sh.peak, len(sh.m))
	return lim
}

// Active reports whether any key has a bucket: one atomic load.
func (s *Store[K]) Active() bool { return s.held.Load() > 0 }

// Len is the number of buckets held.
func (s *Store[K]) Len() int { return int(s.held.Load()) }

// DurationFor is how long a bucket takes to gain n tokens.
func (s *Store[K]) DurationFor(n float64) time.Duration {
	if n <= 0 {
		return 0
	}
	return time.Duration(n / float64(s.limit) * float64(time.Second))
}

// Sweep deletes every full bucket and returns how many are left. A shard
// whose map shrank to a quarter of its peak is rebuilt, because Go maps
// keep their memory after deletes.
func (s *Store[K]) Sweep(now time.Time) int {
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
		if removed > 0 && len(sh.m) <= sh.peak/4 {
			m := make(map[K]*rate.Limiter, len(sh.m))
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

// SweepInterval: a bucket idle for one window is full, so sweeping once a
// window (between 1s and 1m) keeps an idle bucket at most about two
// windows.
func (s *Store[K]) SweepInterval() time.Duration {
	return min(max(s.window, time.Second), time.Minute)
}

// Start runs the sweeper until Destruct.
func (s *Store[K]) Start() {
	s.started = true
	go func() {
		defer close(s.done)
		t := time.NewTicker(s.SweepInterval())
		defer t.Stop()
		for {
			select {
			case <-s.stop:
				return
			case now := <-t.C:
				s.Sweep(now)
			}
		}
	}()
}

// Destruct stops the sweeper; it is called when the last config using
// the store is unloaded (caddy.UsagePool).
func (s *Store[K]) Destruct() error {
	close(s.stop)
	if s.started {
		<-s.done
	}
	return nil
}
