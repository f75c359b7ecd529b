package budget

import "github.com/redis/go-redis/v9"

// The Redis store's two decisions, Take and Settle, each one Lua script:
// one round trip, atomic. They port MemStore.Take and MemStore.Settle and
// the transitions of bucket.go and global.go line by line; what differs
// is how reservations are counted. A reservation is a lease: a member of
// a sorted set scored by the instant it lapses, so that the reservations
// of an instance that died (which never settles them) are given back
// after RedisOptions.Lease instead of blocking a bucket for good. In
// flight is the number of members not lapsed (lapsed ones are pruned
// when a reservation of the set is released).
//
// Keys (P is the credential's prefix, "byteproxy:budget:{cred-...}"; the
// braces keep a credential's keys in one Redis Cluster slot; "\0"
// separates the parts, as no header or route holds it):
//
//	P                       hash: lock lscope glock sid suntil snext wknown wpid wpuntil tripped inv seq dseq iseq
//	P\0r                    hash: route -> bucket name ("" no limit of its own)
//	P\0b\0name\0major       hash: a bucket: limit used window reset length rolled gen lock lscope
//	P\0q\0route\0major      hash: a route's probe bucket while its bucket is unknown
//	P\0qm\0route            set: the majors a route has probes on
//	P\0p\0name              hash: a policy (generic services)
//	P\0w                    list: the policies' names, in the order they were learned
//	<bucket>\0f, <bucket>\0g  zsets: its leases; those of the current local window
//	P\0f                    zset: the credential's leases (MaxInFlight; copied into a new policy)
//	P\0go                   zset: leases of requests counting against the global limit
//	P\0gd                   zset: answer times of those (the sliding global window)
//	P\0i                    zset: invalid responses (the ban guard's window)
//
// Every key written gets an expiry: the idle time (Rules.IdleAfter), or
// longer while a window, a lock or a lease it holds lasts. Times are
// milliseconds of the Redis server's clock (TIME), so instances with
// skewed clocks agree; replies give times as milliseconds from then.
//
// ARGV common to both scripts: 1 route, 2 major, 3 flags (1 direct,
// 2 global, 4 serial, 8 wide, 16 force: take without checking), 4 global
// limit, 5 global span ms (window + slack), 6 reset slack ms, 7 mutation
// spacing ms, 8 max in flight, 9 ban threshold, 10 ban window ms, 11 idle
// ms, 12 lease ms, 13 max routes, 14 now ms (0: the server's TIME).
const luaCommon = `
local P = KEYS[1]
local route, major, flags = ARGV[1], ARGV[2], tonumber(ARGV[3])
local GL, SPAN, SLACK, SPACING = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local MI, BANT, BANW, IDLE = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local LEASE, MAXR = tonumber(ARGV[12]), tonumber(ARGV[13])
local now = tonumber(ARGV[14])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local direct = bit.band(flags, 1) ~= 0
local global = bit.band(flags, 2) ~= 0
local serial = bit.band(flags, 4) ~= 0
local wide = bit.band(flags, 8) ~= 0
local force = bit.band(flags, 16) ~= 0

local S_BUCKET, S_GLOBAL, S_SERIAL, S_CONC, S_BAN = 1, 2, 5, 6, 7
local MAXWINDOW = 86400000

local function bucketKey(name, mj) return P .. '\0b\0' .. name .. '\0' .. mj end
local function probeKey(rt, mj) return P .. '\0q\0' .. rt .. '\0' .. mj end
local function policyKey(name) return P .. '\0p\0' .. name end

-- The buckets a script reads, written back at its end when changed.
local B = {}
local function load(key)
  local b = B[key]
  if b then return b end
  local v = redis.call('HMGET', key, 'limit', 'used', 'window', 'reset', 'length', 'rolled', 'gen', 'lock', 'lscope')
  b = {key = key, limit = tonumber(v[1]) or 0, used = tonumber(v[2]) or 0, window = tonumber(v[3]) or 0,
    reset = tonumber(v[4]) or 0, length = tonumber(v[5]) or 0, rolled = tonumber(v[6]) or 0,
    gen = tonumber(v[7]) or 0, lock = tonumber(v[8]) or 0, lscope = tonumber(v[9]) or 0,
    dirty = false, inflight = 0}
  B[key] = b
  return b
end

-- live counts the members of a lease set that have not lapsed (lapsed
-- ones are pruned when a reservation is released).
local function live(key)
  return redis.call('ZCOUNT', key, '(' .. now, '+inf')
end

-- flights counts a bucket's reservations.
local function flights(b)
  b.inflight = live(b.key .. '\0f')
end

-- keep is how long a bucket's keys must last.
local function keep(b)
  return math.max(IDLE, LEASE, b.reset - now, b.lock - now) + 1000
end

local function saveAll()
  for key, b in pairs(B) do
    if b.dirty then
      redis.call('HSET', key, 'limit', b.limit, 'used', b.used, 'window', b.window, 'reset', b.reset,
        'length', b.length, 'rolled', b.rolled, 'gen', b.gen, 'lock', b.lock, 'lscope', b.lscope)
      redis.call('PEXPIRE', key, keep(b))
    end
  end
end

-- bucket.go: rollover
local function rollover(b)
  b.used = 0
  b.rolled = 1
  b.gen = b.gen + 1
  redis.call('DEL', b.key .. '\0g')
  if b.length > 0 then b.reset = now + b.length + SLACK else b.reset = 0 end
  b.dirty = true
end

-- bucket.go: check. Returns ok, until (0 unknown), scope.
local function check(b)
  if now < b.lock then return false, b.lock, b.lscope end
  if b.limit > 0 and b.reset > 0 and now >= b.reset then
    if b.rolled == 1 and live(b.key .. '\0g') > 0 then return false, 0, S_BUCKET end
    rollover(b)
  end
  local room = b.limit - b.used - b.inflight
  if b.limit <= 0 or (b.reset == 0 and room <= 0) then
    if b.inflight == 0 then return true, 0, 0 end
    return false, 0, S_BUCKET
  end
  if room > 0 then return true, 0, 0 end
  return false, b.reset, S_BUCKET
end

local function delta(t)
  if t == 0 then return -1 end
  return math.max(t - now, 0)
end
`

// takeScript is MemStore.Take. Returns, granted: {1, bucket, probe, gen,
// wide bits, global, serial, flight, lease, name, limit, remaining, reset
// (ms from now, -1 unknown)}; refused: {0, until (ms from now, -1
// unknown), scope, key, name, limit}.
var takeScript = redis.NewScript(luaCommon + `
local function refuse(untl, scope, key, name, limit)
  saveAll()
  return {0, delta(untl), scope, key, name, limit}
end

local C = redis.call('HMGET', P, 'lock', 'lscope', 'glock', 'sid', 'suntil', 'snext', 'wknown', 'wpid', 'wpuntil', 'tripped', 'inv')
local lock, lscope, glock = tonumber(C[1]) or 0, tonumber(C[2]) or 0, tonumber(C[3]) or 0
local sid, suntil, snext = tonumber(C[4]) or 0, tonumber(C[5]) or 0, tonumber(C[6]) or 0
local wknown, wpid, wpuntil, tripped = tonumber(C[7]) or 0, tonumber(C[8]) or 0, tonumber(C[9]) or 0, tonumber(C[10]) or 0
local inv = tonumber(C[11]) or 0

if not force then
  -- inv is the latest invalid response: none within the window, none to count.
  if BANT > 0 and now - inv < BANW then
    local ik = P .. '\0i'
    redis.call('ZREMRANGEBYSCORE', ik, '-inf', now - BANW)
    local n = redis.call('ZCARD', ik)
    if n >= BANT then
      -- The count falls below the threshold when the (n-BANT+1)th oldest leaves.
      local e = redis.call('ZRANGE', ik, n - BANT, n - BANT, 'WITHSCORES')
      return refuse(tonumber(e[2]) + BANW, S_BAN, 'ban', '', 0)
    end
    if tripped == 1 then redis.call('HSET', P, 'tripped', 0) end
  elseif tripped == 1 then
    redis.call('HSET', P, 'tripped', 0)
  end
  if now < lock then return refuse(lock, lscope, 'cred', '', 0) end
  if global then
    if now < glock then return refuse(glock, S_GLOBAL, 'global', '', GL) end
    if GL > 0 then
      -- An answer at t counts while now < t + SPAN; settles keep at most
      -- GL answers.
      local dk = P .. '\0gd'
      local n, o = redis.call('ZCOUNT', dk, '(' .. (now - SPAN), '+inf'), live(P .. '\0go')
      if n + o >= GL then
        if n > 0 then
          local e = redis.call('ZRANGEBYSCORE', dk, '(' .. (now - SPAN), '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
          return refuse(tonumber(e[2]) + SPAN, S_GLOBAL, 'global', '', GL)
        end
        return refuse(0, S_GLOBAL, 'global', '', GL)
      end
    end
  end
  if MI > 0 and live(P .. '\0f') >= MI then return refuse(0, S_CONC, 'flight', '', 0) end
  if serial and SPACING > 0 then
    if sid ~= 0 and now < suntil then return refuse(0, S_SERIAL, 'serial', '', 0) end
    if now < snext then return refuse(snext, S_SERIAL, 'serial', '', 0) end
  end
end

-- The bucket the request spends from (MemStore planned).
local b, probe, bname = nil, false, ''
if route ~= '' then
  if direct then
    bname = route
    b = load(bucketKey(route, major))
  else
    local rk = P .. '\0r'
    local name = redis.call('HGET', rk, route)
    if name == false then
      b = load(probeKey(route, major))
      probe = true
    elseif name ~= '' then
      bname = name
      b = load(bucketKey(name, major))
    end
    redis.call('PEXPIRE', rk, IDLE)
  end
  if b then
    flights(b)
    if not force then
      local ok, untl, scope = check(b)
      if not ok then
        local key = bname .. '\0' .. major
        if probe then key = '?' .. route .. '\0' .. major end
        return refuse(untl, scope, key, bname, b.limit)
      end
    end
  end
end
local pols = {}
if wide then
  if not force and wknown ~= 1 and wpid ~= 0 and now < wpuntil then return refuse(0, S_BUCKET, 'probe', '', 0) end
  local names = redis.call('LRANGE', P .. '\0w', 0, -1)
  for i, name in ipairs(names) do
    local w = load(policyKey(name))
    w.name = name
    flights(w)
    pols[i] = w
    if not force then
      local ok, untl, scope = check(w)
      if not ok then return refuse(untl, scope, 'policy\0' .. name, name, w.limit) end
    end
  end
end

-- Everything allows it: commit.
local seq = redis.call('HINCRBY', P, 'seq', 1)
local lease = (now % 1073741824) * 1024 + seq % 1024 + 1
local deadline = now + LEASE
local g = {bucket = '', probe = 0, gen = 0, wbits = 0, global = 0, serial = 0, flight = 0, name = '', limit = 0, rem = 0, reset = 0}
local function take(x)
  local k = keep(x)
  redis.call('ZADD', x.key .. '\0f', deadline, lease)
  redis.call('PEXPIRE', x.key .. '\0f', k)
  redis.call('ZADD', x.key .. '\0g', deadline, lease)
  redis.call('PEXPIRE', x.key .. '\0g', k)
  x.inflight = x.inflight + 1
  x.dirty = true
end
local function bind(x, name)
  if x.limit <= 0 then return end
  local room = math.max(x.limit - x.used - x.inflight, 0)
  if g.limit == 0 or room < g.rem then
    g.name, g.limit, g.rem, g.reset = name, x.limit, room, x.reset
  end
end
if b then
  take(b)
  g.gen = b.gen
  if probe then
    g.bucket, g.probe = route, 1
    local mk = P .. '\0qm\0' .. route
    redis.call('SADD', mk, major)
    redis.call('PEXPIRE', mk, math.max(IDLE, LEASE) + 1000)
  else
    g.bucket = bname
  end
  bind(b, bname)
end
if wide then
  if wknown ~= 1 then
    redis.call('HSET', P, 'wpid', lease, 'wpuntil', deadline)
    g.probe = 1
  end
  for i, w in ipairs(pols) do
    take(w)
    g.wbits = g.wbits + 2 ^ (i - 1)
    bind(w, w.name)
  end
end
if global and GL > 0 then
  redis.call('ZADD', P .. '\0go', deadline, lease)
  redis.call('PEXPIRE', P .. '\0go', LEASE + 1000)
  g.global = 1
end
if serial and SPACING > 0 then
  redis.call('HSET', P, 'sid', lease, 'suntil', deadline)
  g.serial = 1
end
if MI > 0 or wide then
  redis.call('ZADD', P .. '\0f', deadline, lease)
  redis.call('PEXPIRE', P .. '\0f', LEASE + 1000)
  g.flight = 1
end
saveAll()
redis.call('PEXPIRE', P, math.max(IDLE, LEASE, lock - now, glock - now, snext - now) + 1000)
return {1, g.bucket, g.probe, g.gen, g.wbits, g.global, g.serial, g.flight, lease, g.name, g.limit, g.rem, delta(g.reset)}
`)

// settleScript is MemStore.Settle. ARGV after the common ones: 15 the
// grant's bucket, 16 probe, 17 gen, 18 global, 19 serial, 20 flight, 21
// lease (0: a request reserved elsewhere, whose answer is only observed),
// 22 status, 23 unlimited, 24 bucket lock ms, 25 its scope, 26 global
// lock ms, 27 credential lock ms, 28 its scope, 29 invalid, 30 the number
// of facts, then 7 per fact: name, limit, remaining, window, tolerance
// ms, reset-after ms, no-count. Returns {tripped, invalid count, until
// (ms from now, -1 none)}.
var settleScript = redis.NewScript(luaCommon + `
local gb, gprobe, ggen = ARGV[15], ARGV[16] == '1', tonumber(ARGV[17])
local gglobal, gserial, gflight, lease = ARGV[18] == '1', ARGV[19] == '1', ARGV[20] == '1', tonumber(ARGV[21])
local status, unlimited = tonumber(ARGV[22]), ARGV[23] == '1'
local LB, BSCOPE, LG, LC, CSCOPE = tonumber(ARGV[24]), tonumber(ARGV[25]), tonumber(ARGV[26]), tonumber(ARGV[27]), tonumber(ARGV[28])
local invalid, N = ARGV[29] == '1', tonumber(ARGV[30])
local sent = status ~= -1

local C = redis.call('HMGET', P, 'lock', 'glock', 'sid', 'snext', 'wknown', 'wpid', 'tripped')
local lock, glock, sid = tonumber(C[1]) or 0, tonumber(C[2]) or 0, tonumber(C[3]) or 0
local snext, wknown, wpid, tripped = tonumber(C[4]) or 0, tonumber(C[5]) or 0, tonumber(C[6]) or 0, tonumber(C[7]) or 0

local function finish(a, b2, c)
  saveAll()
  redis.call('PEXPIRE', P, math.max(IDLE, LEASE, lock - now, glock - now, snext - now) + 1000)
  return {a, b2, c}
end

-- unlease ends a reservation in a lease set, and prunes the lapsed ones.
local function unlease(key)
  local n = redis.call('ZREM', key, lease)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  return n
end

-- bucket.go: release
local function release(b, gen, counted)
  unlease(b.key .. '\0f')
  redis.call('ZREM', b.key .. '\0g', lease)
  b.dirty = true
  if not counted or b.limit <= 0 then return end
  if (gen == b.gen or b.rolled == 1) and b.used < b.limit then b.used = b.used + 1 end
  if b.rolled == 1 and b.length > 0 then
    local e = now + b.length + SLACK
    if e > b.reset then b.reset = e end
  end
end

-- MemStore reserved: the bucket the grant reserved from.
local function reserved()
  if not gprobe then return load(bucketKey(gb, major)) end
  local pk = probeKey(route, major)
  if redis.call('EXISTS', pk) == 1 then return load(pk) end
  local name = redis.call('HGET', P .. '\0r', route)
  if name and name ~= '' then return load(bucketKey(name, major)) end
  return nil
end

local policies = nil
local function policyNames()
  if policies == nil then policies = redis.call('LRANGE', P .. '\0w', 0, -1) end
  return policies
end

-- MemStore settleWide: release the policies holding this lease.
local function settleWide(told, counted)
  for _, name in ipairs(policyNames()) do
    local w = load(policyKey(name))
    if redis.call('ZSCORE', w.key .. '\0f', lease) then
      release(w, w.gen, counted and not told[w.key])
    end
  end
end

if gflight then unlease(P .. '\0f') end
if global and GL > 0 and (gglobal or lease == 0) then
  if gglobal then unlease(P .. '\0go') end
  if sent then
    local dk = P .. '\0gd'
    redis.call('ZADD', dk, now, redis.call('HINCRBY', P, 'dseq', 1))
    redis.call('ZREMRANGEBYSCORE', dk, '-inf', now - SPAN)
    local n = redis.call('ZCARD', dk)
    if n > GL then redis.call('ZREMRANGEBYRANK', dk, 0, n - GL - 1) end
    redis.call('PEXPIRE', dk, SPAN + 1000)
  end
end
if gserial or (lease == 0 and serial and SPACING > 0) then
  if gserial and sid == lease then redis.call('HSET', P, 'sid', 0, 'suntil', 0) end
  if sent then
    snext = math.max(snext, now + SPACING)
    redis.call('HSET', P, 'snext', snext)
  end
end
if not sent then
  if gb ~= '' then
    local b = reserved()
    if b then release(b, ggen, false) end
  end
  if wide then
    settleWide({}, false)
    if gprobe and wpid == lease then redis.call('HSET', P, 'wpid', 0) end
  end
  return finish(0, 0, -1)
end

-- MemStore learn: the route spends from name; its probes move there.
local function learn(name)
  local rk = P .. '\0r'
  local old = redis.call('HGET', rk, route)
  if old ~= false and old == name then return end
  if old == false and MAXR > 0 and redis.call('HLEN', rk) >= MAXR then return end
  redis.call('HSET', rk, route, name)
  redis.call('PEXPIRE', rk, IDLE)
  local mk = P .. '\0qm\0' .. route
  for _, mj in ipairs(redis.call('SMEMBERS', mk)) do
    local pk = probeKey(route, mj)
    if name ~= '' then
      redis.call('ZREMRANGEBYSCORE', pk .. '\0f', '-inf', now)
      if redis.call('ZCARD', pk .. '\0f') > 0 then
        local b = load(bucketKey(name, mj))
        redis.call('ZUNIONSTORE', b.key .. '\0f', 2, b.key .. '\0f', pk .. '\0f', 'AGGREGATE', 'MAX')
        redis.call('PEXPIRE', b.key .. '\0f', keep(b))
        local pl = redis.call('HMGET', pk, 'lock', 'lscope')
        local plock = tonumber(pl[1]) or 0
        if plock > b.lock then b.lock, b.lscope = plock, tonumber(pl[2]) or 0 end
        b.dirty = true
      end
    end
    redis.call('DEL', pk, pk .. '\0f', pk .. '\0g')
    B[pk] = nil
  end
  redis.call('DEL', mk)
end

-- MemStore wideBucket: a policy, created counting the requests in flight
-- (nil when the credential has too many).
local function policy(name)
  local names = policyNames()
  for _, n in ipairs(names) do
    if n == name then return load(policyKey(name)) end
  end
  if #names >= 8 then return nil end
  local wl = P .. '\0w'
  redis.call('RPUSH', wl, name)
  redis.call('PEXPIRE', wl, IDLE)
  names[#names + 1] = name
  local w = load(policyKey(name))
  w.dirty = true
  redis.call('ZREMRANGEBYSCORE', P .. '\0f', '-inf', now)
  if redis.call('ZUNIONSTORE', w.key .. '\0f', 1, P .. '\0f') > 0 then
    redis.call('PEXPIRE', w.key .. '\0f', keep(w))
  end
  return w
end

-- bucket.go: observe
local function observe(b, f)
  b.dirty = true
  if f.ra > b.length and f.ra <= MAXWINDOW then b.length = f.ra end
  if f.nocount then return end
  local limit = f.limit
  if limit <= 0 then limit = math.max(b.limit, f.rem, 1) end
  local used = math.max(limit - f.rem, 0)
  if f.window == 0 then
    b.limit, b.used = limit, used
    if f.ra > 0 then b.reset = now + math.min(f.ra, MAXWINDOW) + SLACK end
    return
  end
  local reset = now + math.min(f.ra, MAXWINDOW) + SLACK
  local tol = math.max(f.tol, math.floor(b.length / 2))
  if b.window == 0 or f.window > b.window + tol then
    b.window, b.used, b.reset, b.rolled = f.window, used, reset, 0
  elseif f.window >= b.window - tol and b.rolled == 0 then
    b.used = math.max(b.used, used)
    if b.reset == 0 or reset < b.reset then b.reset = reset end
  end
  b.limit = limit
end

if not direct and route ~= '' then
  if N > 0 and ARGV[31] ~= '' then
    learn(ARGV[31])
  elseif unlimited then
    learn('')
  end
end
local told, first = {}, nil
for i = 1, N do
  local a = 30 + (i - 1) * 7
  local f = {name = ARGV[a + 1], limit = tonumber(ARGV[a + 2]), rem = tonumber(ARGV[a + 3]), window = tonumber(ARGV[a + 4]),
    tol = tonumber(ARGV[a + 5]), ra = tonumber(ARGV[a + 6]), nocount = ARGV[a + 7] == '1'}
  local b
  if wide then b = policy(f.name) else b = load(bucketKey(f.name, major)) end
  if b then
    observe(b, f)
    told[b.key] = true
  end
  if i == 1 then first = b end
end
local rb = nil
if gb ~= '' then
  rb = reserved()
  if rb then release(rb, ggen, not unlimited and not told[rb.key]) end
end
if wide then
  settleWide(told, true)
  if gprobe and wpid == lease then redis.call('HSET', P, 'wpid', 0) end
  if (gprobe or lease == 0) and status > 0 and wknown ~= 1 then redis.call('HSET', P, 'wknown', 1) end
elseif lease == 0 and route ~= '' and first == nil and LB > 0 then
  -- An answer observed only: its bucket lock goes to the route's bucket.
  if direct then
    rb = load(bucketKey(route, major))
  else
    local name = redis.call('HGET', P .. '\0r', route)
    if name and name ~= '' then rb = load(bucketKey(name, major)) end
  end
end
if LB > 0 then
  local fb = first or rb
  if fb then
    local u = now + LB + SLACK
    if u > fb.lock then
      fb.lock, fb.lscope, fb.dirty = u, BSCOPE, true
    end
  end
end
if LG > 0 and now + LG + SLACK > glock then
  glock = now + LG + SLACK
  redis.call('HSET', P, 'glock', glock)
end
if LC > 0 and now + LC + SLACK > lock then
  lock = now + LC + SLACK
  redis.call('HSET', P, 'lock', lock, 'lscope', CSCOPE)
end
local trip, count, untl = 0, 0, -1
if invalid and BANT > 0 then
  local ik = P .. '\0i'
  redis.call('ZADD', ik, now, redis.call('HINCRBY', P, 'iseq', 1))
  redis.call('HSET', P, 'inv', now)
  redis.call('ZREMRANGEBYSCORE', ik, '-inf', now - BANW)
  local n = redis.call('ZCARD', ik)
  -- Beyond the threshold the oldest may go: when the count falls below
  -- it again does not change (and nothing is sent meanwhile).
  if n > BANT + 1024 then
    redis.call('ZREMRANGEBYRANK', ik, 0, n - BANT - 1025)
    n = BANT + 1024
  end
  redis.call('PEXPIRE', ik, BANW + 1000)
  count = n
  if tripped ~= 1 and n >= BANT then
    redis.call('HSET', P, 'tripped', 1)
    trip = 1
    local e = redis.call('ZRANGE', ik, n - BANT, n - BANT, 'WITHSCORES')
    untl = delta(tonumber(e[2]) + BANW)
  end
end
return finish(trip, count, untl)
`)
