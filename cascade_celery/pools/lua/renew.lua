--[[
  Extend a running task's lease in each of its pools.

  A lease that is gone was reaped (the renewal came too late): it is not re-created,
  because its slot may already belong to someone else; the caller logs it. A rate
  pool's lease is left alone, never lost: it lasts one window from its admission.

  Counted (includes/stats.lua): "lost_leases", per pool where the lease was lost.

  Clock: Redis TIME.

  Input:
    KEYS[1..n]  the holders ZSET of each pool the lease is in (named as in
                pools/keys.py: a rate pool is known by its name)
    KEYS[n+1..2n]  the stats HASH of each of those pools, in the same order
    ARGV[1]     lease member, "t:<task id>:<token>"
    ARGV[2]     new lease ttl in milliseconds

  Output:
    {i, ...}    indices of the pools where the lease was lost (empty: all renewed)
]]

--- @include "includes/stats"
--- @include "includes/pool"

local lease_member = ARGV[1]
local ttl_ms = tonumber(ARGV[2])
local now = now_ms()
local lost = {}

local pool_count = #KEYS / 2

for i = 1, pool_count do
  local holders_key = KEYS[i]
  if window_ms_of(holders_key) then
    -- A rate pool: its lease lasts one window from the admission, renewed or not.
  elseif redis.call('ZSCORE', holders_key, lease_member) then
    redis.call('ZADD', holders_key, 'XX', now + ttl_ms, lease_member)
  else
    lost[#lost + 1] = i
    count(KEYS[pool_count + i], 'lost_leases')
  end
end
return lost
