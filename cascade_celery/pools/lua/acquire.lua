--[[
  Acquire the units a task needs in every required pool, or none.

  Before deciding, each pool is brought up to date: the caller's view of its capacity
  is applied, expired holders are reaped and free room goes to waiters first. A task
  holding a reservation in a pool (it was handed off from there) takes it over, unless
  the capacity has since dropped below the pool's use (soft limit: it waits again). A
  newcomer never overtakes a waiter: a pool with waiters has no room for it (FIFO).
  When the task is blocked, reservations it holds are given back to the next waiter,
  so a task never sits on a slot while waiting for another pool (no deadlock). Pools
  after the first `required` ones are pools the task was handed off from but no
  longer needs: their reservation is given back either way.

  Given the task's message (`payload`), a blocked task is parked where it is blocked in
  the same step (acquire-or-park: one round trip instead of two), unless giving back
  its reservations made room there (then the caller acquires again).

  Leases of tasks that ended in the caller's process since its last call (`released`)
  are released first, as release.lua would: so a process running task after task
  spends one round trip per task, not two.

  Counted (includes/stats.lua): each pool's admission, "admitted:reservation" when the
  task took over its reservation there, else "admitted:acquire"; the hand-off latency
  of every reservation its task takes or gives back; and what the helpers count.

  Clock: Redis TIME.

  Input:
    KEYS                    7 keys per pool, as listed in includes/pool.lua: first the
                            `required` pools, then the `stale` pools (handed off from,
                            no longer needed), then the pools of each released lease
    ARGV[1]                 task id
    ARGV[2]                 lease member, "t:<task id>:<token>"
    ARGV[3]                 lease ttl in milliseconds
    ARGV[4]                 most waiters to hand off per pool
    ARGV[5]                 required: how many pools the task needs
    ARGV[6]                 stale: how many pools it gives its reservation back in
    ARGV[7]                 released: how many ended leases to release first
    ARGV[8 + 2*(i-1)]       required pool i capacity in the caller's view (-1: unlimited)
    ARGV[9 + 2*(i-1)]       units of required pool i the task needs
    ARGV[r + 2*(j-1)]       released lease j's member, where r = 8 + 2*required
    ARGV[r + 1 + 2*(j-1)]   how many pools released lease j is in
    ARGV[r + 2*released]    optional: payload to park with when blocked
    ARGV[r + 2*released + 1]  optional: when the task's worker received it (ms; "": not
                            known): its place in line if it parks
    ARGV[r + 2*released + 2]  optional: JSON {"<pool index>": line} for the required pools
                            whose lines are fair or bounded (park_in in includes/pool.lua)

  A rate pool's lease expires one window after now (includes/pool.lua), also when it
  takes over a reservation: the admission is counted from the task's arrival.

  Output:
    {1, c, dues, dropped, handoffs...}  acquired every pool; c = 1 when one of them is
                               contended (full now, or tasks wait in it), else 0
    {0, i, dues, dropped, handoffs...}  blocked at pool i; the caller parks the task there
    {2, i, dues, dropped, handoffs...}  blocked at pool i, and parked there with the payload
    {3, i, dues, dropped, handoffs...}  blocked at pool i, whose line for its key value is
                               full: rejected (not parked)
    dropped: (task id, payload) pairs of waiters dropped to make room (on_full
    "drop_oldest"): they end SUPERSEDED
    handoffs: (pool index, task id, payload) triples to publish, then confirm; the
    index counts every pool in KEYS
    dues: (pool index, due ms) pairs, one per rate pool with waiters (see
    includes/pool.lua)
]]
--- @include "includes/stats"
--- @include "includes/pool"

local task_id = ARGV[1]
local lease_member = ARGV[2]
local ttl_ms = tonumber(ARGV[3])
local max_handoffs = tonumber(ARGV[4])
local pool_count = tonumber(ARGV[5])
local stale_count = tonumber(ARGV[6])
local released_count = tonumber(ARGV[7])
local first_released = 8 + 2 * pool_count
local reservation = 'r:' .. task_id
local now = now_ms()
local out = {0, 0, {}, {}}

local function capacity_arg(i) return tonumber(ARGV[8 + 2 * (i - 1)]) end
local function units_arg(i) return tonumber(ARGV[9 + 2 * (i - 1)]) end

-- Leases that ended in the caller's process: released before anything else. A pool
-- the task requires is reaped and dispatched below, with the caller's capacity.
local required = {}
for i = 1, pool_count do required[pool_keys(i).capacity] = true end
local index = pool_count + stale_count
for j = 1, released_count do
  local member = ARGV[first_released + 2 * (j - 1)]
  for _ = 1, tonumber(ARGV[first_released + 1 + 2 * (j - 1)]) do
    index = index + 1
    local k = pool_keys(index)
    release_lease(k, member)
    if not required[k.capacity] then
      refresh(k, index, nil, now, ttl_ms, max_handoffs, out)
    end
  end
end

for i = 1, pool_count do
  refresh(pool_keys(i), i, capacity_arg(i), now, ttl_ms, max_handoffs, out)
end

-- Reservations in pools the task no longer needs go to the next waiter.
for i = pool_count + 1, pool_count + stale_count do
  give_back(pool_keys(i), i, task_id, now, ttl_ms, max_handoffs, out)
end

local blocked = 0
for i = 1, pool_count do
  local k = pool_keys(i)
  local units = units_arg(i)
  local capacity = capacity_of(k)
  if redis.call('ZSCORE', k.holders, reservation) then
    if capacity ~= nil and used_of(k) > capacity then
      blocked = i
      break
    end
  elseif (capacity ~= nil and used_of(k) + units > capacity)
      or redis.call('ZCARD', k.waiters) > 0 then
    blocked = i
    break
  end
end

if blocked > 0 then
  for i = 1, pool_count do
    give_back(pool_keys(i), i, task_id, now, ttl_ms, max_handoffs, out)
  end
  out[2] = blocked
  local payload = ARGV[first_released + 2 * released_count]
  local arrival = tonumber(ARGV[first_released + 2 * released_count + 1])
  local lines = ARGV[first_released + 2 * released_count + 2]
  local line = lines and cjson.decode(lines)[tostring(blocked)] or nil
  if payload then
    local parked = park_in(pool_keys(blocked), task_id, units_arg(blocked), payload, now,
                           arrival, line, out[4])
    if parked == 'parked' then out[1] = 2 elseif parked == 'rejected' then out[1] = 3 end
  end
  announce_dues(#KEYS / POOL_KEYS, out[3])
  settle_all(#KEYS / POOL_KEYS)
  return out
end

for i = 1, pool_count do
  local k = pool_keys(i)
  local units = units_arg(i)
  local reserved = drop_reservation(k, task_id, now)
  add_used(k, units - (reserved or 0))
  count(k.stats, reserved and 'admitted:reservation' or 'admitted:acquire')
  redis.call('ZADD', k.holders, now + holder_ttl(k, ttl_ms), lease_member)
  redis.call('HSET', k.units, lease_member, units)
  local capacity = capacity_of(k)
  if (capacity ~= nil and used_of(k) >= capacity) or redis.call('ZCARD', k.waiters) > 0 then
    out[2] = 1
  end
end
out[1] = 1
announce_dues(#KEYS / POOL_KEYS, out[3])
settle_all(#KEYS / POOL_KEYS)
return out
