package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// keyPrefix starts every key this module writes in Redis.
const keyPrefix = "byteproxy:rl:"

// Defaults for the Redis client; the URL's own query parameters
// (dial_timeout, read_timeout, write_timeout, pool_timeout, ...) win. The
// timeouts are short so that an outage does not stall requests: the
// decision falls back to memory instead, and after the first failure no
// request waits for Redis until the prober has seen it answer. They are
// not shorter because a busy host (GC, CPU contention) must not be taken
// for an outage.
const (
	redisDialTimeout = 500 * time.Millisecond
	redisIOTimeout   = 250 * time.Millisecond
	redisCallTimeout = 500 * time.Millisecond // a whole decision: pool wait, dial, round trip
	redisProbeEvery  = time.Second
	redisProbeWait   = 500 * time.Millisecond
)

// decideScript makes the whole decision of one request in one round trip,
// atomically: the client's token bucket first, then the service's fixed
// window; a request refused by either spends nothing of the other.
//
// KEYS: the client bucket key (if ARGV[1] > 0), then the service window key
// (if ARGV[3] > 0). ARGV: client burst, client window ms, service max,
// service window ms. Time is the Redis server's, so instances with skewed
// clocks agree.
//
// Returns {verdict (0 ok, 1 client refused, 2 service refused),
// service count, service ttl ms, client tokens x1000, client ms until
// full, client ms until one token}.
var decideScript = redis.NewScript(`
local cmax, cwin = tonumber(ARGV[1]), tonumber(ARGV[2])
local smax, swin = tonumber(ARGV[3]), tonumber(ARGV[4])
local ki, ck, sk = 1, nil, nil
if cmax > 0 then ck = KEYS[ki]; ki = ki + 1 end
if smax > 0 then sk = KEYS[ki] end

local tokens, perms = 0, 0
local now = 0
if ck then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  perms = cmax / cwin
  local v = redis.call('HMGET', ck, 't', 'ts')
  local ts = tonumber(v[2])
  tokens = tonumber(v[1])
  if tokens == nil or ts == nil then tokens = cmax; ts = now end
  if now > ts then tokens = math.min(cmax, tokens + (now - ts) * perms) end
  if tokens < 1 then
    return {1, 0, 0, math.floor(tokens * 1000), math.ceil((cmax - tokens) / perms), math.ceil((1 - tokens) / perms)}
  end
end

local count, ttl = 0, 0
if sk then
  count = tonumber(redis.call('GET', sk) or '0')
  if count >= smax then
    ttl = redis.call('PTTL', sk)
    if ttl < 0 then redis.call('PEXPIRE', sk, swin); ttl = swin end
    local full = 0
    if ck then full = math.ceil((cmax - tokens) / perms) end
    return {2, count, ttl, math.floor(tokens * 1000), full, 0}
  end
  count = redis.call('INCR', sk)
  if count == 1 then
    redis.call('PEXPIRE', sk, swin); ttl = swin
  else
    ttl = redis.call('PTTL', sk)
    if ttl < 0 then redis.call('PEXPIRE', sk, swin); ttl = swin end
  end
end

local full = 0
if ck then
  tokens = tokens - 1
  full = math.max(1, math.ceil((cmax - tokens) / perms))
  redis.call('HSET', ck, 't', tokens, 'ts', now)
  -- A bucket left alone refills completely by then, and a full bucket is
  -- what a missing key means: expiring it loses nothing.
  redis.call('PEXPIRE', ck, full)
end
return {0, count, ttl, math.floor(tokens * 1000), full, 0}
`)

// peekScript reads a service window without counting: {count, ttl ms}.
var peekScript = redis.NewScript(`
return {tonumber(redis.call('GET', KEYS[1]) or '0'), redis.call('PTTL', KEYS[1])}
`)

// redisStatus is what /status shows about Redis (never the URL, which may
// hold a password).
type redisStatus struct {
	Configured bool   `json:"configured"`
	Connected  bool   `json:"connected"`
	Fallback   bool   `json:"fallback"`
	Address    string `json:"address,omitempty"`
	Since      string `json:"since,omitempty"`
	LastError  string `json:"lastError,omitempty"`
}

// redisStore shares the rate-limit counters of every instance through one
// Redis. It lives in the usage pool, so its connections and its health
// state survive config reloads. While Redis is unreachable, up is false,
// callers decide in memory, and a prober checks once a second until Redis
// answers again.
type redisStore struct {
	client *redis.Client
	addr   string
	up     atomic.Bool
	logger atomic.Pointer[zap.Logger]

	mu        sync.Mutex // guards the fields below and orders notifications
	status    redisStatus
	listeners map[int]func(redisStatus)
	nextID    int
	probing   bool
	closed    bool

	stop chan struct{}
	wg   sync.WaitGroup
}

// newRedisStore connects lazily to the Redis at url; it checks the
// connection in the background.
func newRedisStore(url string, logger *zap.Logger) (*redisStore, error) {
	opt, err := redis.ParseURL(url)
	if err != nil {
		return nil, err
	}
	if opt.DialTimeout == 0 {
		opt.DialTimeout = redisDialTimeout
	}
	if opt.ReadTimeout == 0 {
		opt.ReadTimeout = redisIOTimeout
	}
	if opt.WriteTimeout == 0 {
		opt.WriteTimeout = redisIOTimeout
	}
	if opt.PoolTimeout == 0 {
		opt.PoolTimeout = redisCallTimeout
	}
	if opt.MaxRetries == 0 {
		opt.MaxRetries = -1 // a retried script could count a request twice
	}
	if opt.DialerRetries == 0 {
		opt.DialerRetries = 1
	}
	opt.DisableIdentity = true
	s := &redisStore{
		client:    redis.NewClient(opt),
		addr:      opt.Addr,
		listeners: map[int]func(redisStatus){},
		stop:      make(chan struct{}),
	}
	s.logger.Store(logger)
	s.up.Store(true)
	s.status = redisStatus{Configured: true, Address: s.addr}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), redisProbeWait)
		defer cancel()
		if err := s.client.Ping(ctx).Err(); err != nil {
			s.markDown(err)
			return
		}
		s.markUp()
	}()
	return s, nil
}

// redisReply is the outcome of decideScript.
type redisReply struct {
	verdict int64 // 0 admitted, 1 client refused, 2 service refused
	count   int64
	ttl     time.Duration
	tokens  float64
	full    time.Duration
	retry   time.Duration
}

// decide runs decideScript. bucketKey (the client's) and windowKey (the
// service's) are empty when that limit does not apply.
func (s *redisStore) decide(ctx context.Context, bucketKey string, cmax int, cwin time.Duration, windowKey string, smax int, swin time.Duration) (redisReply, error) {
	keys := make([]string, 0, 2)
	if bucketKey == "" {
		cmax = 0
	} else {
		keys = append(keys, bucketKey)
	}
	if windowKey == "" {
		smax = 0
	} else {
		keys = append(keys, windowKey)
	}
	res, err := decideScript.Run(ctx, s.client, keys, cmax, millis(cwin), smax, millis(swin)).Int64Slice()
	if err != nil {
		return redisReply{}, err
	}
	if len(res) != 6 {
		return redisReply{}, fmt.Errorf("rate-limit script returned %d values", len(res))
	}
	return redisReply{
		verdict: res[0],
		count:   res[1],
		ttl:     time.Duration(res[2]) * time.Millisecond,
		tokens:  float64(res[3]) / 1000,
		full:    time.Duration(res[4]) * time.Millisecond,
		retry:   time.Duration(res[5]) * time.Millisecond,
	}, nil
}

// peek reads a service window: requests counted and time until it ends
// (zero or less when no window is open).
func (s *redisStore) peek(ctx context.Context, windowKey string) (int64, time.Duration, error) {
	res, err := peekScript.Run(ctx, s.client, []string{windowKey}).Int64Slice()
	if err != nil {
		return 0, 0, err
	}
	if len(res) != 2 {
		return 0, 0, errors.New("rate-limit peek script returned a malformed reply")
	}
	return res[0], time.Duration(res[1]) * time.Millisecond, nil
}

// markDown switches to the in-memory fallback. Only the first failure of
// an outage is logged; later ones find the store already down.
func (s *redisStore) markDown(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || !s.up.Load() {
		return
	}
	s.up.Store(false)
	s.status.Connected, s.status.Fallback = false, true
	s.status.Since = time.Now().UTC().Format(time.RFC3339)
	s.status.LastError = err.Error()
	s.logger.Load().Warn("redis unreachable: rate limits fall back to this instance's memory until it recovers",
		zap.String("address", s.addr), zap.Error(err))
	s.notifyLocked()
	if !s.probing {
		s.probing = true
		s.wg.Add(1)
		go s.probe()
	}
}

// markUp returns to Redis; the end of an outage is logged once.
func (s *redisStore) markUp() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	wasDown := s.status.Fallback
	s.up.Store(true)
	s.status.Connected, s.status.Fallback, s.status.LastError = true, false, ""
	if wasDown || s.status.Since == "" {
		s.status.Since = time.Now().UTC().Format(time.RFC3339)
	}
	if wasDown {
		s.logger.Load().Info("redis reachable again: rate limits are shared through redis", zap.String("address", s.addr))
	}
	s.notifyLocked()
}

// probe pings Redis once a second until it answers or the store closes.
func (s *redisStore) probe() {
	defer s.wg.Done()
	t := time.NewTicker(redisProbeEvery)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), redisProbeWait)
		err := s.client.Ping(ctx).Err()
		cancel()
		if err == nil {
			s.mu.Lock()
			s.probing = false
			s.mu.Unlock()
			s.markUp()
			return
		}
	}
}

// subscribe calls fn with the current status now and on every change,
// until unsubscribe. The newest subscriber's logger becomes the store's.
func (s *redisStore) subscribe(fn func(redisStatus), logger *zap.Logger) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.logger.Store(logger)
	s.nextID++
	s.listeners[s.nextID] = fn
	fn(s.status)
	return s.nextID
}

func (s *redisStore) unsubscribe(id int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.listeners, id)
}

func (s *redisStore) notifyLocked() {
	for _, fn := range s.listeners {
		fn(s.status)
	}
}

// Destruct stops the prober and closes the connections when the last
// config using this Redis is unloaded.
func (s *redisStore) Destruct() error {
	s.mu.Lock()
	s.closed = true
	close(s.stop)
	s.mu.Unlock()
	s.wg.Wait()
	return s.client.Close()
}

func millis(d time.Duration) int64 { return max(d.Milliseconds(), 1) }

// redisServiceKey names a service window in Redis. The limit is part of
// the name, so a changed limit starts a fresh window.
func redisServiceKey(service string, max int, size time.Duration) string {
	return keyPrefix + "service:" + service + ":" + strconv.Itoa(max) + ":" + strconv.FormatInt(millis(size), 10)
}

// redisClientPrefix starts the name of every client bucket of one limit.
func redisClientPrefix(max int, size time.Duration) string {
	return keyPrefix + "client:" + strconv.Itoa(max) + ":" + strconv.FormatInt(millis(size), 10) + ":"
}

// redisLogger sends go-redis's own messages (one per failed dial) to
// Caddy's log at debug level: the outage itself is logged once by
// markDown.
type redisLogger struct{}

func (redisLogger) Printf(_ context.Context, format string, v ...any) {
	caddy.Log().Named("redis").Debug(fmt.Sprintf(format, v...))
}

func init() {
	redis.SetLogger(redisLogger{})
}
