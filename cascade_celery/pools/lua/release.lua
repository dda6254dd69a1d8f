--[[
  Release a running task's lease in each of its pools and hand the room to waiters.

  Releasing a lease that is gone (it expired and was reaped) changes nothing. A rate
  pool keeps the lease until its window has passed (the admission happened); an
  unclaimed reservation there becomes the task's lease, expiring one window after now
  (its task has started by now, so the log never counts it earlier than it was).

  Counted (includes/stats.lua): "released" for every lease given back, and for an
  unclaimed reservation given back; "admitted:reservation" for an unclaimed one (its
  task started on it), without a hand-off latency (it is not known when it started).

  Clock: Redis TIME.

  Input:
    KEYS[8*(i-1)+1 .. 8*i]  the keys of pool i, as listed in includes/pool.lua
    ARGV[1]                 lease member, "t:<task id>:<token>"
    ARGV[2]                 reservation ttl in milliseconds for handed-off waiters
    ARGV[3]                 most waiters to hand off per pool
    ARGV[4]                 optional: the task id whose reservation the task started
                            on and has not claimed yet (claim.lua): released instead

  Output:
    {released, 0, dues, {}, handoffs...}   released: how many pools still held the lease
    dues: (pool index, due ms) pairs, one per rate pool with waiters (see
    includes/pool.lua)
]]
--- @include "includes/stats"
--- @include "includes/pool"

local lease_member = ARGV[1]
local ttl_ms = tonumber(ARGV[2])
local max_handoffs = tonumber(ARGV[3])
local unclaimed = ARGV[4]
local now = now_ms()
local out = {0, 0, {}, {}}

for i = 1, #KEYS / POOL_KEYS do
  local k = pool_keys(i)
  if release_lease(k, lease_member) then
    out[1] = out[1] + 1
  elseif unclaimed and window_ms(k) then
    if claim_reservation(k, unclaimed, lease_member, now + holder_ttl(k, 0)) then
      out[1] = out[1] + 1
    end
  elseif unclaimed then
    local units = forget_reservation(k, unclaimed)
    if units then
      add_used(k, -units)
      count(k.stats, 'admitted:reservation')
      count(k.stats, 'released')
      out[1] = out[1] + 1
    end
  end
  reap(k, now)
  dispatch(k, i, now, ttl_ms, max_handoffs, out)
end
announce_dues(#KEYS / POOL_KEYS, out[3])
settle_all(#KEYS / POOL_KEYS)
return out
