package ratelimit

import (
	"hash/maphash"
	"math"
	"time"

	"github.com/byteproxy/byteproxy/internal/buckets"
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

// bucketStore holds one token bucket per consumer (internal/buckets:
// burst max, refilled max per size); every request spends a token before
// it goes on.
type bucketStore struct {
	*buckets.Store[clientKey]
}

func newBucketStore(max int, size time.Duration) *bucketStore {
	seed := maphash.MakeSeed()
	return &bucketStore{buckets.New(max, size, bucketShards, 0, func(k clientKey) uint64 {
		return maphash.String(seed, k.id) ^ uint64(k.kind)
	})}
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
	sh := s.Lock(k)
	defer sh.Unlock()
	lim := sh.Get(k)
	if lim == nil {
		lim = sh.Add(k)
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
	sh := s.Lock(k)
	defer sh.Unlock()
	if lim := sh.Get(k); lim != nil {
		return s.state(true, lim.TokensAt(now), cost)
	}
	return s.state(true, float64(s.Max()), cost)
}

// state reports a bucket holding tokens to requests costing cost each.
func (s *bucketStore) state(ok bool, tokens float64, cost int) bucketState {
	st := bucketState{ok: ok, remaining: int64(math.Floor(max(tokens, 0) / float64(cost)))}
	st.full = s.DurationFor(float64(s.Max()) - tokens)
	if !ok {
		st.retry = s.DurationFor(float64(cost) - tokens)
	}
	return st
}
