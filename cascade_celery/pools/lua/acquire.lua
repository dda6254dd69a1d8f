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

  Clock: Redis TIME.

  Input:
    KEYS[7*(i-1)+1 .. 7*i]  the keys of pool i, as listed in includes/pool.lua
    ARGV[1]                 task id
    ARGV[2]                 lease member, "t:<task id>:<token>"
    ARGV[3]                 lease ttl in milliseconds
    ARGV[4]                 most waiters to hand off per pool
    ARGV[5]                 required: how many pools (the first ones) the task needs
    ARGV[6 + 2*(i-1)]       required pool i capacity in the caller's view (-1: unlimited)
    ARGV[7 + 2*(i-1)]       units of required pool i the task needs
    ARGV[6 + 2*required]    optional: payload to park with when blocked

  Output:
    {1, c, handoffs...}        acquired every pool; c = 1 when one of them is contended
                               (full now, or tasks wait in it), else 0
    {0, i, handoffs...}        blocked at pool i; the caller parks the task there
    {2, i, handoffs...}        blocked at pool i, and parked there with the payload
    handoffs: (pool index, task id, payload) triples to publish, then confirm
]]
--- @include "includes/pool"

local task_id = ARGV[1]
local lease_member = ARGV[2]
local ttl_ms = tonumber(ARGV[3])
local max_handoffs = tonumber(ARGV[4])
local pool_count = tonumber(ARGV[5])
local all_pools = #KEYS / POOL_KEYS
local reservation = 'r:' .. task_id
local now = now_ms()
local out = {0, 0}

for i = 1, pool_count do
  local k = pool_keys(i)
  apply_capacity(k, tonumber(ARGV[6 + 2 * (i - 1)]))
  reap(k, now)
  dispatch(k, i, now, ttl_ms, max_handoffs, out)
end

-- Reservations in pools the task no longer needs go to the next waiter.
for i = pool_count + 1, all_pools do
  local k = pool_keys(i)
  local reserved = drop_reservation(k, task_id)
  if reserved then
    add_used(k, -reserved)
    dispatch(k, i, now, ttl_ms, max_handoffs, out)
  end
end

local blocked = 0
for i = 1, pool_count do
  local k = pool_keys(i)
  local units = tonumber(ARGV[7 + 2 * (i - 1)])
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
    local k = pool_keys(i)
    local reserved = drop_reservation(k, task_id)
    if reserved then
      add_used(k, -reserved)
      dispatch(k, i, now, ttl_ms, max_handoffs, out)
    end
  end
  out[2] = blocked
  local payload = ARGV[6 + 2 * pool_count]
  if payload and park_in(pool_keys(blocked), task_id, tonumber(ARGV[7 + 2 * (blocked - 1)]),
                         payload, now) then
    out[1] = 2
  end
  return out
end

for i = 1, pool_count do
  local k = pool_keys(i)
  local units = tonumber(ARGV[7 + 2 * (i - 1)])
  local reserved = drop_reservation(k, task_id)
  add_used(k, units - (reserved or 0))
  redis.call('ZADD', k.holders, now + ttl_ms, lease_member)
  redis.call('HSET', k.units, lease_member, units)
  local capacity = capacity_of(k)
  if (capacity ~= nil and used_of(k) >= capacity) or redis.call('ZCARD', k.waiters) > 0 then
    out[2] = 1
  end
end
out[1] = 1
return out
