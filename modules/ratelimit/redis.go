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

	"github.com/byteproxy/byteproxy/internal/fleet"
)

// keyPrefix starts every key this module writes in Redis.
const keyPrefix = "byteproxy:rl:"

// redisTimings paces the store's background goroutine.
type redisTimings struct {
	fleet.Timings
	// instance names this process in the announcements; empty is
	// fleet.InstanceID(), the id the upstream-budget store announces
	// too, so that a process is counted once (tests of several stores in
	// one process set their own).
	instance string
}

var defaultRedisTimings = redisTimings{Timings: fleet.DefaultTimings}

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

// carryScript writes back what one instance knows of a service window
// after an outage: ARGV[1] the count Redis last reported to it, ARGV[2]
// the requests it admitted on its own since, ARGV[3] the ms left of the
// window by its clock. The window becomes max(its count, ARGV[1]) +
// ARGV[2]: if Redis kept the window (or another instance restored it
// first), the local admissions are added to it; if Redis lost it (a
// restart), what was counted before the outage is restored too, so no
// instance's knowledge is forgotten. A window Redis kept keeps its end.
//
// Returns {count, ttl ms}.
var carryScript = redis.NewScript(`
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
count = math.max(count, tonumber(ARGV[1])) + tonumber(ARGV[2])
local ttl = redis.call('PTTL', KEYS[1])
if ttl <= 0 then ttl = tonumber(ARGV[3]) end
redis.call('SET', KEYS[1], count, 'PX', ttl)
return {count, ttl}
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
	// Instances is how many instances announced themselves in this Redis
	// lately (this one included): during an outage each enforces its share
	// of every limit, 1/Instances.
	Instances int64 `json:"instances,omitempty"`
}

// redisStore shares the rate-limit counters of every instance through one
// Redis. It lives in the usage pool, so its connections and its health
// state survive config reloads. While Redis is unreachable, up is false
// and callers decide in memory, each instance with its share of the
// limits (see instances).
//
// One background goroutine does all the periodic work: while Redis
// answers, it announces this instance and reads how many instances are
// alive; while it does not, it checks once a second and, when Redis
// answers again, has every listener carry its outage counts back before
// requests return to Redis.
type redisStore struct {
	client  *redis.Client
	addr    string
	id      string // this instance in the announcements
	timings redisTimings
	up      atomic.Bool
	logger  atomic.Pointer[zap.Logger]

	// instances is the number of live instances last seen in Redis; 1
	// until the first announcement (an instance that never reached Redis
	// knows of no other).
	instances atomic.Int64

	mu        sync.Mutex // guards the fields below and orders notifications
	status    redisStatus
	listeners map[int]redisListener
	nextID    int
	closed    bool

	stop chan struct{}
	wg   sync.WaitGroup
}

// redisListener is a handler using the store.
type redisListener struct {
	// status is called on every change of the status.
	status func(redisStatus)
	// carry writes back what the handler counted on its own during an
	// outage; it returns the requests carried back. Called when Redis
	// answers again, before requests return to it.
	carry func(context.Context) (int64, error)
}

// newRedisStore connects to the Redis at url and announces this instance
// (waiting at most fleet.ProbeWait: /status and the count of instances are
// right from the start), then goes on in the background.
func newRedisStore(url string, logger *zap.Logger, timings redisTimings) (*redisStore, error) {
	opt, err := fleet.Options(url)
	if err != nil {
		return nil, err
	}
	if timings.instance == "" {
		timings.instance = fleet.InstanceID()
	}
	s := &redisStore{
		client:    redis.NewClient(opt),
		addr:      opt.Addr,
		id:        timings.instance,
		timings:   timings,
		listeners: map[int]redisListener{},
		stop:      make(chan struct{}),
	}
	s.logger.Store(logger)
	s.up.Store(true)
	s.instances.Store(1)
	s.status = redisStatus{Configured: true, Address: s.addr, Instances: 1}
	if err := s.announce(); err != nil {
		s.markDown(err)
	} else {
		s.markUp(0)
	}
	s.wg.Add(1)
	go s.run()
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

// redisWindow is a service window as Redis holds it after a carry.
type redisWindow struct {
	ok    bool // false: Redis refused the window (e.g. a key of another type)
	count int64
	ttl   time.Duration
}

// carryBack writes back the outage counts of service windows (see
// carryScript) in one pipelined round trip. It returns each window as
// Redis holds it afterwards. It fails only if Redis could not be reached:
// a window that Redis refuses is logged and dropped, so that one bad key
// never keeps the instance off Redis.
func (s *redisStore) carryBack(ctx context.Context, debts []windowDebt) ([]redisWindow, error) {
	cmds := make([]*redis.Cmd, len(debts))
	_, _ = s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, d := range debts {
			// Eval, not EvalSha: a restarted Redis knows no scripts.
			cmds[i] = carryScript.Eval(ctx, p, []string{d.key}, d.shared, d.count, millis(d.left))
		}
		return nil
	})
	out := make([]redisWindow, len(debts))
	for i, c := range cmds {
		res, err := c.Int64Slice()
		var refused redis.Error
		switch {
		case errors.As(err, &refused):
			s.logger.Load().Warn("redis refused a rate-limit window carried back after an outage; its count is dropped",
				zap.String("key", debts[i].key), zap.Error(err))
			continue
		case err != nil:
			return nil, err
		case len(res) != 2:
			return nil, errors.New("rate-limit carry script returned a malformed reply")
		}
		out[i] = redisWindow{ok: true, count: res[0], ttl: time.Duration(res[1]) * time.Millisecond}
	}
	return out, nil
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
	s.logger.Load().Warn("redis unreachable: each instance enforces its share of the rate limits in memory until it recovers",
		zap.String("address", s.addr), zap.Int64("instances", s.instances.Load()), zap.Error(err))
	s.notifyLocked()
}

// markUp returns to Redis; the end of an outage is logged once, with the
// requests carried back.
func (s *redisStore) markUp(carried int64) {
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
		s.logger.Load().Info("redis reachable again: rate limits are shared through redis",
			zap.String("address", s.addr), zap.Int64("carried_back", carried))
	}
	s.notifyLocked()
}

// run is the store's background goroutine, until Destruct.
func (s *redisStore) run() {
	defer s.wg.Done()
	fleet.Loop{Timings: s.timings.Timings, Up: s.up.Load, Announce: s.announce, Down: s.markDown, Reconnect: s.reconnect}.Run(s.stop)
}

// announce records this instance in Redis and reads how many are alive.
func (s *redisStore) announce() error {
	n, err := fleet.Announce(s.client, s.id, s.timings.TTL)
	if err != nil {
		return err
	}
	if s.instances.Swap(n) != n {
		s.mu.Lock()
		s.status.Instances = n
		s.notifyLocked()
		s.mu.Unlock()
	}
	return nil
}

// reconnect checks whether Redis answers again; if it does, the listeners
// carry their outage counts back and the store returns to Redis. A failure
// on the way leaves it down until the next check (counts not yet carried
// back are kept).
func (s *redisStore) reconnect() bool {
	if !fleet.Ping(s.client) {
		return false
	}
	s.mu.Lock()
	carriers := make([]func(context.Context) (int64, error), 0, len(s.listeners))
	for _, l := range s.listeners {
		if l.carry != nil {
			carriers = append(carriers, l.carry)
		}
	}
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), fleet.CarryWait)
	defer cancel()
	var carried int64
	for _, carry := range carriers {
		n, err := carry(ctx)
		carried += n
		if err != nil {
			s.logger.Load().Debug("redis: carrying outage counts back failed; trying again", zap.Error(err))
			return false
		}
	}
	if err := s.announce(); err != nil {
		return false
	}
	s.markUp(carried)
	return true
}

// subscribe calls l.status with the current status now and on every
// change, and l.carry when Redis returns after an outage, until
// unsubscribe. The newest subscriber's logger becomes the store's.
func (s *redisStore) subscribe(l redisListener, logger *zap.Logger) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.logger.Store(logger)
	s.nextID++
	s.listeners[s.nextID] = l
	if l.status != nil {
		l.status(s.status)
	}
	return s.nextID
}

func (s *redisStore) unsubscribe(id int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.listeners, id)
}

func (s *redisStore) notifyLocked() {
	for _, l := range s.listeners {
		if l.status != nil {
			l.status(s.status)
		}
	}
}

// Destruct stops the background goroutine, leaves the count of live
// instances at once (instead of after the announcements' ttl), and closes
// the connections when the last config using this Redis is unloaded.
func (s *redisStore) Destruct() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.stop)
	s.mu.Unlock()
	s.wg.Wait()
	if s.up.Load() {
		fleet.Leave(s.client, s.id)
	}
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
