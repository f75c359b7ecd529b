// Package fleet is the Redis plumbing that modules/ratelimit and
// internal/budget share: the client's defaults, this process's id, the
// announcements by which the gateway instances sharing one Redis count
// each other, and the background loop that announces and probes.
package fleet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// InstancesKey is the sorted set in which every gateway instance sharing a
// Redis announces itself, scored by the Redis server's clock in ms. During
// an outage each instance takes 1/count of every limit.
const InstancesKey = "byteproxy:rl:instances"

// Defaults for the Redis client; the URL's own query parameters
// (dial_timeout, read_timeout, write_timeout, pool_timeout, ...) win. The
// timeouts are short so that an outage does not stall requests: decisions
// fall back to memory, and after the first failure no request waits for
// Redis until the prober has seen it answer. They are not shorter because
// a busy host (GC, CPU contention) must not be taken for an outage.
const (
	DialTimeout = 500 * time.Millisecond
	IOTimeout   = 250 * time.Millisecond
	CallTimeout = 500 * time.Millisecond // one decision: pool wait, dial, round trip
	ProbeWait   = 500 * time.Millisecond // one probe or announcement
	CarryWait   = 2 * time.Second        // carrying an outage back: one pipelined round trip
)

// Options parses a redis:// or rediss:// URL with the defaults above
// where the URL sets none. Commands are never retried: a retried script
// could count a request twice.
func Options(url string) (*redis.Options, error) {
	o, err := redis.ParseURL(url)
	if err != nil {
		return nil, err
	}
	if o.DialTimeout == 0 {
		o.DialTimeout = DialTimeout
	}
	if o.ReadTimeout == 0 {
		o.ReadTimeout = IOTimeout
	}
	if o.WriteTimeout == 0 {
		o.WriteTimeout = IOTimeout
	}
	if o.PoolTimeout == 0 {
		o.PoolTimeout = CallTimeout
	}
	if o.MaxRetries == 0 {
		o.MaxRetries = -1
	}
	if o.DialerRetries == 0 {
		o.DialerRetries = 1
	}
	o.DisableIdentity = true
	return o, nil
}

// InstanceID names this process in InstancesKey, the same for its whole
// life and for both users of the package, so that a process is counted
// once: host and pid for an operator reading the set, random bytes so that
// two processes never clash.
var InstanceID = sync.OnceValue(func() string {
	host, _ := os.Hostname()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%s/%d/%s", host, os.Getpid(), hex.EncodeToString(b))
})

// announceScript records that the instance ARGV[1] is alive, forgets the
// instances not seen for ARGV[2] ms, and returns how many are left. Time
// is the Redis server's, so instances with skewed clocks agree.
var announceScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
redis.call('PEXPIRE', KEYS[1], ttl)
return redis.call('ZCARD', KEYS[1])
`)

// Announce records the instance id as alive (waiting at most ProbeWait)
// and returns how many instances announced themselves within ttl, at
// least 1.
func Announce(c redis.Scripter, id string, ttl time.Duration) (int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), ProbeWait)
	defer cancel()
	n, err := announceScript.Run(ctx, c, []string{InstancesKey}, id, max(ttl.Milliseconds(), 1)).Int64()
	if err != nil {
		return 0, err
	}
	return max(n, 1), nil
}

// Leave takes the instance id out of the count at once, instead of after
// the announcements' ttl.
func Leave(c redis.Cmdable, id string) {
	ctx, cancel := context.WithTimeout(context.Background(), ProbeWait)
	defer cancel()
	_ = c.ZRem(ctx, InstancesKey, id).Err()
}

// Timings pace a store's background loop.
type Timings struct {
	Probe    time.Duration // between checks while Redis is unreachable
	Announce time.Duration // between announcements while it answers
	TTL      time.Duration // an instance not announced for this long is no longer counted
}

// DefaultTimings: an instance is counted until it has missed three
// announcements, so a slow host does not drop out of the count.
var DefaultTimings = Timings{Probe: time.Second, Announce: 5 * time.Second, TTL: 15 * time.Second}

// Loop is a store's background work: while Redis answers, announce every
// Timings.Announce (an outage seen there switches to memory before any
// request has to wait for Redis); while it does not, try Reconnect every
// Timings.Probe.
type Loop struct {
	Timings   Timings
	Up        func() bool      // decisions are made in Redis
	Announce  func() error     // announce this instance, read the count
	Down      func(error)      // switch to memory
	Reconnect func() (ok bool) // probe; if Redis answers, carry the outage back and switch to it
}

// Run does the work until stop is closed.
func (l Loop) Run(stop <-chan struct{}) {
	last := time.Now()
	t := time.NewTicker(l.Timings.Probe)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		switch {
		case !l.Up():
			if l.Reconnect() {
				last = time.Now()
			}
		case time.Since(last) >= l.Timings.Announce:
			if err := l.Announce(); err != nil {
				l.Down(err)
			}
			last = time.Now()
		}
	}
}

// Ping reports whether Redis answers within ProbeWait.
func Ping(c redis.Cmdable) bool {
	ctx, cancel := context.WithTimeout(context.Background(), ProbeWait)
	defer cancel()
	return c.Ping(ctx).Err() == nil
}
