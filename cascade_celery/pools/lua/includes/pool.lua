--[[
  Shared helpers for one pool. Every script that includes this file receives each
  pool's keys as 7 consecutive KEYS, in this order (see pools/keys.py); includes/stats.lua
  must be included before it:

    capacity  STRING  units the pool may hand out; absent means unlimited
    used      STRING  units held now, by running leases and reservations
    holders   ZSET    member -> lease expiry (ms, Redis clock)
                      "t:<task id>:<token>"  a running task's lease
                      "r:<task id>"          a reservation for a handed-off waiter
    units     HASH    member -> units, for holders and for waiting "r:<task id>" entries;
                      "q:<task id>" -> arrival position of a task handed off from the line
                      "a:<task id>" -> when the task was parked (ms), for "oldest wait"
                      "h:<task id>" -> when it was handed off (ms), until it arrives
    waiters   ZSET    task id -> arrival (ms): when its worker received the message, else
                      when it parked (Redis clock); lowest first
    parked    HASH    task id -> message payload, until its hand-off is confirmed (or pushed)
    stats     HASH    counters and histograms (includes/stats.lua), with a TTL

  A pool whose line goes from empty to one waiter announces it on the pub/sub channel
  "<prefix>:pools:contended" (message: the pool's name as escaped in its keys), so
  processes stop reusing the leases of their ended tasks there (see runtime.py).

  A payload in the direct format ("cascade-direct <broker db> <own db> <key length>\n"
  then the broker's list key and the kombu envelope, see pools/parking.py) gets the
  pool's name in its hand-off header when it parks, and is handed off by pushing the
  envelope onto that list (in the broker's DB on this server) at once, while some
  process reports that DB as its broker ("<prefix>:handoff:direct" holds the DB's
  number); otherwise it is returned like any payload, for the caller to publish. A pushed
  envelope's grant header says when, under which capacity and for how many units the
  script reserved the slot: the task may start on that reservation without asking again
  (runtime.py), and claims it as its own lease afterwards (claim.lua).

  A rate pool (its name matches "^constraint:rate_limit:.*@<count><unit>$", unit s, m,
  h or d; constraints/rate.py names them) counts admissions in a sliding window of
  that length: every holder it gets (a lease, a reservation) expires exactly one window
  after it was made, and is never released or renewed; a reservation taken over by
  its task expires one window after the task's arrival (the log records actual starts,
  never earlier than they were). The units hash's field "due" is the rate pool's next
  due time last announced: while tasks wait in it, every script that touches it returns
  (pool index, due) with due = its earliest holder's expiry, and announces that on
  "<prefix>:pools:due" as "<due ms> <name as escaped in its keys>" when it changed
  since the last announcement, so a timer sweeps it then (set_capacity.lua) instead of
  anyone polling. With no waiters the field is cleared.

  Keys: a script touches only the keys passed in KEYS, with two exceptions, both in
  push_direct: it reads "<prefix>:handoff:direct" (the prefix taken from the pool's
  keys), and it SELECTs the broker's DB named in a direct payload to LPUSH the envelope
  onto the list key named there, then SELECTs back the DB named in the payload as its
  own. (Pub/sub channels are not keys.)

  Clock: every script uses Redis's own TIME, so leases mean the same on every host.
  Invariant: used == sum(units[m] for m in holders), and a task id is in waiters
  at most once.
]]

local POOL_KEYS = 7

local function pool_keys(index)
  local base = (index - 1) * POOL_KEYS
  local capacity = KEYS[base + 1]
  local stem = string.sub(capacity, 1, #capacity - #':capacity')
  return {
    capacity = capacity, used = KEYS[base + 2], holders = KEYS[base + 3],
    units = KEYS[base + 4], waiters = KEYS[base + 5], parked = KEYS[base + 6],
    stats = KEYS[base + 7], stem = stem, ring = stem .. ':ring',
  }
end

-- Redis's clock in ms, to the microsecond: a place in a line (scripts run one at a time).
local function now_precise_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A caller's view of the capacity: >= 0 sets it, < 0 lifts the limit.
-- Written only when it changes: most calls find it as it was (no write to replicate).
local function apply_capacity(k, capacity)
  if capacity < 0 then
    redis.call('DEL', k.capacity)
  elseif redis.call('GET', k.capacity) ~= tostring(capacity) then
    redis.call('SET', k.capacity, capacity)
  end
end

local function capacity_of(k)
  local capacity = redis.call('GET', k.capacity)
  if capacity then return tonumber(capacity) end
  return nil
end

local function used_of(k)
  return tonumber(redis.call('GET', k.used) or '0')
end

local function add_used(k, delta)
  if delta == 0 then return end
  if redis.call('INCRBY', k.used, delta) < 0 then
    -- Never below zero, even if a key was lost (e.g. Redis restarted without AOF).
    redis.call('SET', k.used, 0)
  end
end

-- The key prefix, the pool's name as escaped in its keys (pools/keys.py), and its base
-- pool's name (the name of a pool that is not keyed), from any one of the pool's keys.
local function prefix_and_name_of(key)
  local prefix, base, rest = string.match(key, '^(.*):{pool:([^{}]*)}([^{}]*):[a-z]+$')
  if not prefix then return nil end
  return prefix, base .. rest, base
end

local function prefix_and_name(k)
  return prefix_and_name_of(k.capacity)
end

local UNIT_MS = {s = 1000, m = 60000, h = 3600000, d = 86400000}

-- A rate pool's window in ms, from any one of its keys; nil for any other pool.
-- Mirrors window_of_pool in constraints/rate.py.
local function window_ms_of(key)
  local _, _, base = prefix_and_name_of(key)
  if not base then return nil end
  local count, unit = string.match(base, '^constraint:rate_limit:.*@([1-9]%d*)([smhd])$')
  if not count then return nil end
  return tonumber(count) * UNIT_MS[unit]
end

local function window_ms(k)
  return window_ms_of(k.capacity)
end

-- Added to a rate pool's window: a task's own start stamp, taken a few ms after the gate
-- admitted it, then never shows N + 1 starts in a period either (constraints/rate.py).
local RATE_GUARD_MS = 10

-- How long a holder made now lasts: a rate pool's window (and guard), else the lease ttl.
local function holder_ttl(k, ttl_ms)
  local window = window_ms(k)
  if window then return window + RATE_GUARD_MS end
  return ttl_ms
end

--[[
  Fair lines (constraints/flow.py, fair_by). A task parked with a fair value v ("f:<task
  id>" in units) also waits in the ZSET "<stem>:q:<v>" (by arrival), and v is in the
  LIST "<stem>:ring" once while it has waiters ("in:<v>" in units marks it; an entry
  whose queue emptied out of turn is dropped when it reaches the head). The head value
  is served "w:<v>" (its weight, default 1) times in a row ("turn" counts them), then
  goes to the back: while k values wait, each is served at least once in every k
  hand-offs, and a hand-off costs O(log n), never a scan. Waiters without a fair value
  are served first come first served once the ring is empty.
]]

local function queue_key(k, value)
  return k.stem .. ':q:' .. value
end

-- Put a task in line; the first waiter announces that the pool has a line now.
local function add_waiter(k, position, task_id)
  if redis.call('ZCARD', k.waiters) == 0 then
    local prefix, name = prefix_and_name(k)
    if prefix then redis.call('PUBLISH', prefix .. ':pools:contended', name) end
  end
  redis.call('ZADD', k.waiters, position, task_id)
  local value = redis.call('HGET', k.units, 'f:' .. task_id)
  if value then
    redis.call('ZADD', queue_key(k, value), position, task_id)
    if redis.call('HSETNX', k.units, 'in:' .. value, 1) == 1 then
      redis.call('RPUSH', k.ring, value)
    end
  end
end

-- Take task_id out of line (not served: dropped or purged); a fair value it leaves
-- empty stays in the ring until it reaches the head.
local function remove_waiter(k, task_id)
  redis.call('ZREM', k.waiters, task_id)
  local value = redis.call('HGET', k.units, 'f:' .. task_id)
  if value then redis.call('ZREM', queue_key(k, value), task_id) end
end

-- The next task in line and its fair value (nil: first come first served), or nil.
local function head_of_line(k)
  while true do
    local value = redis.call('LINDEX', k.ring, 0)
    if not value then break end
    local head = redis.call('ZRANGE', queue_key(k, value), 0, 0)
    if #head > 0 then return head[1], value end
    redis.call('LPOP', k.ring)  -- its queue emptied out of turn
    redis.call('HDEL', k.units, 'in:' .. value, 'w:' .. value, 'turn')
  end
  local head = redis.call('ZRANGE', k.waiters, 0, 0)
  return head[1], nil
end

-- The head of line (fair value `value`) was served: it leaves the line, and its value
-- keeps its turn, or goes to the back of the ring (out of it, if nobody is left).
local function leave_line(k, task_id, value)
  redis.call('ZREM', k.waiters, task_id)
  if not value then return end
  local queue = queue_key(k, value)
  redis.call('ZREM', queue, task_id)
  local served = redis.call('HINCRBY', k.units, 'turn', 1)
  if redis.call('ZCARD', queue) == 0 then
    redis.call('LPOP', k.ring)
    redis.call('HDEL', k.units, 'in:' .. value, 'w:' .. value, 'turn')
  elseif served >= tonumber(redis.call('HGET', k.units, 'w:' .. value) or '1') then
    redis.call('LMOVE', k.ring, k.ring, 'LEFT', 'RIGHT')
    redis.call('HDEL', k.units, 'turn')
  end
end

local DIRECT = 'cascade-direct '
local PLACEHOLDER = '"\\u0000cascade-pool"'
local GRANT_PLACEHOLDER = '"\\u0000cascade-grant"'

local function is_direct(payload)
  return string.sub(payload, 1, #DIRECT) == DIRECT
end

-- A direct payload parking in the pool: its hand-off header names the pool.
local function naming_pool(k, payload)
  if not is_direct(payload) then return payload end
  local at, to = string.find(payload, PLACEHOLDER, 1, true)
  local _, escaped = prefix_and_name(k)
  if not at or not escaped then return payload end
  local name = string.gsub(string.gsub(string.gsub(escaped, '%%7B', '{'), '%%7D', '}'),
                           '%%25', '%%')
  return string.sub(payload, 1, at - 1) .. cjson.encode(name) .. string.sub(payload, to + 1)
end

-- Push a direct payload's envelope onto the broker's list, its grant header saying when
-- (ms) and under which capacity (-1: unlimited) it was handed how many units; false if
-- it is not direct, no process reports that DB as its broker, or the push failed.
local function push_direct(k, payload, now, capacity, units)
  if not is_direct(payload) then return false end
  local newline = string.find(payload, '\n', 1, true)
  if not newline then return false end
  local broker_db, own_db, length = string.match(
    string.sub(payload, #DIRECT + 1, newline - 1), '^(%d+) (%d+) (%d+)$')
  local prefix = prefix_and_name(k)
  if not length or not prefix
      or redis.call('GET', prefix .. ':handoff:direct') ~= broker_db then
    return false
  end
  local key = string.sub(payload, newline + 1, newline + tonumber(length))
  local envelope = string.sub(payload, newline + tonumber(length) + 1)
  local at, to = string.find(envelope, GRANT_PLACEHOLDER, 1, true)
  if at then
    local grant = now .. ',' .. (capacity or -1) .. ',' .. units  -- after the delivery tag
    envelope = string.sub(envelope, 1, at - 1) .. grant .. string.sub(envelope, to + 1)
  end
  local selected = redis.pcall('SELECT', broker_db)
  if type(selected) == 'table' and selected.err then
    redis.log(redis.LOG_WARNING, 'cascade: direct hand-off SELECT failed: ' .. selected.err)
    return false
  end
  local pushed = redis.pcall('LPUSH', key, envelope)
  redis.call('SELECT', own_db)
  if type(pushed) ~= 'number' then
    redis.log(redis.LOG_WARNING, 'cascade: direct hand-off push failed: ' .. tostring(pushed.err))
    return false
  end
  return true
end

-- Give back a running task's lease; true if the pool still held it (not reaped). A
-- rate pool keeps it: the admission stays counted until its window has passed (and
-- "released" counts only leases given back).
local function release_lease(k, member)
  if window_ms(k) then return redis.call('ZSCORE', k.holders, member) ~= false end
  if redis.call('ZREM', k.holders, member) == 0 then return false end
  add_used(k, -tonumber(redis.call('HGET', k.units, member) or '0'))
  redis.call('HDEL', k.units, member)
  count(k.stats, 'released')
  return true
end

-- Drop expired holders: leases of dead workers, and reservations whose task never
-- arrived. A reservation whose payload is still parked was never published (its
-- publisher died): it goes back in line at its original arrival position ("q:<id>"
-- remembers it), so it is neither lost nor moved behind later arrivals.
-- Counted: every expired reservation ("reclaimed:reservation", and "requeued" when it
-- goes back in line) and lease ("reclaimed:lease"); not a rate pool's expired lease,
-- which is its window passing, not a slot taken back.
local function reap(k, now)
  local expired = redis.call('ZRANGEBYSCORE', k.holders, '-inf', now, 'LIMIT', 0, 1000)
  for _, member in ipairs(expired) do
    local units = tonumber(redis.call('HGET', k.units, member) or '0')
    redis.call('ZREM', k.holders, member)
    add_used(k, -units)
    local task_id = nil
    if string.sub(member, 1, 2) == 'r:' then
      task_id = string.sub(member, 3)
      count(k.stats, 'reclaimed:reservation')
    elseif not window_ms(k) then
      count(k.stats, 'reclaimed:lease')
    end
    if task_id and redis.call('HEXISTS', k.parked, task_id) == 1 then
      local position = redis.call('HGET', k.units, 'q:' .. task_id) or 0
      add_waiter(k, position, task_id)
      redis.call('HDEL', k.units, 'h:' .. task_id)
      count(k.stats, 'requeued')
    else
      redis.call('HDEL', k.units, member)
      if task_id then
        redis.call('HDEL', k.units, 'q:' .. task_id, 'a:' .. task_id, 'h:' .. task_id,
                   'f:' .. task_id)
      end
    end
  end
end

-- Remove task_id's reservation and its bookkeeping (arrival position, parking and
-- hand-off times); returns its units (nil if it holds none) and when it was handed off
-- (ms; nil if not recorded). Its units stay counted in `used`.
local function forget_reservation(k, task_id)
  local member = 'r:' .. task_id
  if redis.call('ZREM', k.holders, member) == 0 then return nil end
  local held = redis.call('HMGET', k.units, member, 'h:' .. task_id)
  redis.call('HDEL', k.units, member, 'q:' .. task_id, 'a:' .. task_id, 'h:' .. task_id,
             'f:' .. task_id)
  return tonumber(held[1] or '0'), tonumber(held[2])
end

-- Make task_id's reservation its lease `member`, expiring at `expiry` (ms), and count
-- the admission; false if it is gone (reaped), else true and when it was handed off.
local function claim_reservation(k, task_id, member, expiry)
  local units, handed_at = forget_reservation(k, task_id)
  if not units then return false end
  redis.call('ZADD', k.holders, expiry, member)
  redis.call('HSET', k.units, member, units)
  count(k.stats, 'admitted:reservation')
  return true, handed_at
end

-- The task handed off at `handed_at` (ms) took its reservation at `now`.
local function observe_handoff(k, handed_at, now)
  if handed_at then observe(k.stats, 'handoff', HANDOFF_BUCKETS_MS, now - handed_at) end
end

-- Forget a reservation (taken over by its task, or given back); returns its units.
-- Its task has arrived, so the hand-off was published: its payload goes too, even if
-- the publisher never confirmed it (it died, or Redis was down at that moment), and
-- the hand-off's latency is observed.
local function drop_reservation(k, task_id, now)
  local units, handed_at = forget_reservation(k, task_id)
  if units then
    redis.call('HDEL', k.parked, task_id)
    observe_handoff(k, handed_at, now)
  end
  return units
end

-- Hand free room to waiters in arrival order, at most `max` of them. Each gets a
-- reservation lease of ttl_ms (a rate pool's: its window) and is appended to `out`
-- as (pool index, task id, payload): for the caller to publish, then confirm; or
-- pushed here (direct format), its payload forgotten, and appended with an empty payload.
-- Each is counted ("handoffs:direct" or "handoffs:published") and its wait observed.
local function dispatch(k, index, now, ttl_ms, max, out)
  local capacity = capacity_of(k)
  local expiry = now + holder_ttl(k, ttl_ms)
  local handed = 0
  while handed < max do
    local task_id, value = head_of_line(k)
    if not task_id then break end
    local member = 'r:' .. task_id
    local booked = redis.call('HMGET', k.units, member, 'a:' .. task_id)
    local units = tonumber(booked[1] or '1')
    local payload = redis.call('HGET', k.parked, task_id)
    if not payload then
      -- Nothing to publish (purged): drop the entry and look at the next one.
      remove_waiter(k, task_id)
      redis.call('HDEL', k.units, member, 'q:' .. task_id, 'a:' .. task_id, 'h:' .. task_id,
                 'f:' .. task_id)
    else
      if capacity ~= nil and used_of(k) + units > capacity then break end
      redis.call('HSET', k.units, 'q:' .. task_id, redis.call('ZSCORE', k.waiters, task_id),
                 'h:' .. task_id, now)
      leave_line(k, task_id, value)
      redis.call('ZADD', k.holders, expiry, member)
      add_used(k, units)
      if booked[2] then observe(k.stats, 'wait', WAIT_BUCKETS_MS, now - tonumber(booked[2])) end
      if push_direct(k, payload, now, capacity, units) then
        redis.call('HDEL', k.parked, task_id)
        payload = ''
        count(k.stats, 'handoffs:direct')
      else
        count(k.stats, 'handoffs:published')
      end
      out[#out + 1] = index
      out[#out + 1] = task_id
      out[#out + 1] = payload
      handed = handed + 1
    end
  end
end

-- Bring a pool up to date: the caller's view of its capacity (nil: leave it), expired
-- holders reaped, free room handed to waiters.
local function refresh(k, index, capacity, now, ttl_ms, max, out)
  if capacity then apply_capacity(k, capacity) end
  reap(k, now)
  dispatch(k, index, now, ttl_ms, max, out)
end

-- Give task_id's reservation in a pool back: its room goes to the next waiter.
local function give_back(k, index, task_id, now, ttl_ms, max, out)
  local reserved = drop_reservation(k, task_id, now)
  if reserved then
    add_used(k, -reserved)
    dispatch(k, index, now, ttl_ms, max, out)
  end
end

-- Drop the oldest waiter of `line` (its fair value's queue, else the pool's line): it
-- leaves the line, its payload moves to "<stem>:dropped" until the caller has ended it
-- (SUPERSEDED; pools/resources.py forget_dropped), "d:<task id>" in units saying since
-- when, and (task id, payload) is appended to `dropped`.
local function drop_oldest(k, line, dropped, now)
  local head = redis.call('ZRANGE', line, 0, 0)
  if #head == 0 then return end
  local task_id = head[1]
  local payload = redis.call('HGET', k.parked, task_id) or ''
  remove_waiter(k, task_id)
  redis.call('HSET', k.stem .. ':dropped', task_id, payload)
  redis.call('HDEL', k.parked, task_id)
  redis.call('HDEL', k.units, 'r:' .. task_id, 'q:' .. task_id, 'a:' .. task_id,
             'h:' .. task_id, 'f:' .. task_id)
  redis.call('HSET', k.units, 'd:' .. task_id, now)
  dropped[#dropped + 1] = task_id
  dropped[#dropped + 1] = payload
  count(k.stats, 'superseded')
end

-- Dropped waiters whose caller did not end them within `after_ms` (it died): appended to
-- `dropped` for this caller to end, their time renewed (one caller at a time).
local function unended_drops(k, now, after_ms, dropped)
  local key = k.stem .. ':dropped'
  if redis.call('EXISTS', key) == 0 then return end
  local entries = redis.call('HGETALL', key)
  for i = 1, #entries, 2 do
    local task_id = entries[i]
    local since = tonumber(redis.call('HGET', k.units, 'd:' .. task_id) or '0')
    if now - since >= after_ms then
      redis.call('HSET', k.units, 'd:' .. task_id, now)
      dropped[#dropped + 1] = task_id
      dropped[#dropped + 1] = entries[i + 1]
    end
  end
end

-- Park a task in line, placed by its arrival (else now), unless the pool has room for it
-- now: 'parked', or 'room' (acquire again). One already waiting (a duplicate delivery)
-- keeps its place. `line` (constraints/flow.py; nil: plain) gives its fair value `v`
-- and that value's weight `w`, and at most `m` waiting per value (per fair value, else
-- in the pool): when full, the oldest is dropped into `dropped` if `d`, else the
-- newcomer is not parked: 'rejected'.
local function park_in(k, task_id, units, payload, now, arrival, line, dropped)
  payload = naming_pool(k, payload)
  if redis.call('ZSCORE', k.waiters, task_id) then
    redis.call('HSET', k.parked, task_id, payload)
    return 'parked'
  end
  local capacity = capacity_of(k)
  local full = capacity ~= nil and used_of(k) + units > capacity
  if not full and redis.call('ZCARD', k.waiters) == 0 then
    return 'room'
  end
  if line and line.m then
    local queue = line.v and queue_key(k, line.v) or k.waiters
    if redis.call('ZCARD', queue) >= line.m then
      if not line.d then
        count(k.stats, 'rejected')
        return 'rejected'
      end
      while redis.call('ZCARD', queue) >= line.m do drop_oldest(k, queue, dropped, now) end
    end
  end
  if line and line.v then
    redis.call('HSET', k.units, 'f:' .. task_id, line.v)
    if (line.w or 1) ~= 1 then
      redis.call('HSET', k.units, 'w:' .. line.v, line.w)
    else
      redis.call('HDEL', k.units, 'w:' .. line.v)
    end
  end
  add_waiter(k, arrival or now_precise_ms(), task_id)
  redis.call('HSET', k.parked, task_id, payload)
  redis.call('HSET', k.units, 'r:' .. task_id, units, 'a:' .. task_id, now)
  count(k.stats, 'parked')
  return 'parked'
end

-- A keyed pool (its name has a " <key>=<value>" part, pools/keys.py) holding nothing and
-- with nobody waiting leaves no key behind, and leaves its family's "live" SET (the
-- pools of the family that hold or wait, for sweeps and status); else it is in it.
local function settle(k)
  local prefix, name, base = prefix_and_name(k)
  if not prefix or name == base then return end
  local rest = string.sub(name, #base + 2)
  local key = string.match(rest, '^([^=]*)=')
  if not key then return end
  local live = prefix .. ':{pool:' .. base .. '} ' .. key .. ':live'
  if redis.call('ZCARD', k.holders) == 0 and redis.call('ZCARD', k.waiters) == 0
      and redis.call('HLEN', k.parked) == 0
      and redis.call('EXISTS', k.stem .. ':dropped') == 0 then
    redis.call('DEL', k.capacity, k.used, k.units, k.ring)
    redis.call('SREM', live, rest)
  else
    redis.call('SADD', live, rest)
  end
end

-- settle the first `count` pools in KEYS.
local function settle_all(count)
  for i = 1, count do settle(pool_keys(i)) end
end

-- A rate pool's next due, if tasks wait in it: appended to `dues` as (pool index, due
-- ms), and announced if it changed since the last announcement (see the header).
local function announce_due(k, index, dues)
  if not window_ms(k) then return end
  local due = nil
  if redis.call('ZCARD', k.waiters) > 0 then
    local first = redis.call('ZRANGE', k.holders, 0, 0, 'WITHSCORES')
    if #first > 0 then due = string.format('%d', tonumber(first[2])) end
  end
  if not due then
    redis.call('HDEL', k.units, 'due')
    return
  end
  dues[#dues + 1] = index
  dues[#dues + 1] = tonumber(due)
  if redis.call('HGET', k.units, 'due') ~= due then
    redis.call('HSET', k.units, 'due', due)
    local prefix, name = prefix_and_name(k)
    if prefix then redis.call('PUBLISH', prefix .. ':pools:due', due .. ' ' .. name) end
  end
end

-- announce_due for the first `count` pools in KEYS, each pool once (by its first index).
local function announce_dues(count, dues)
  local seen = {}
  for i = 1, count do
    local k = pool_keys(i)
    if not seen[k.capacity] then
      seen[k.capacity] = true
      announce_due(k, i, dues)
    end
  end
end
