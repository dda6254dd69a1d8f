--[[
  Release a running task's lease in each of its pools and hand the room to waiters.

  Releasing a lease that is gone (it expired and was reaped) changes nothing.

  Clock: Redis TIME.

  Input:
    KEYS[7*(i-1)+1 .. 7*i]  the keys of pool i, as listed in includes/pool.lua
    ARGV[1]                 lease member, "t:<task id>:<token>"
    ARGV[2]                 reservation ttl in milliseconds for handed-off waiters
    ARGV[3]                 most waiters to hand off per pool
    ARGV[4]                 optional: the reservation member "r:<task id>" the task
                            started on and has not claimed yet (claim.lua), released too

  Output:
    {released, 0, handoffs...}   released: how many pools still held the lease
]]
--- @include "includes/pool"

local lease_member = ARGV[1]
local ttl_ms = tonumber(ARGV[2])
local max_handoffs = tonumber(ARGV[3])
local reservation = ARGV[4]
local now = now_ms()
local out = {0, 0}

for i = 1, #KEYS / POOL_KEYS do
  local k = pool_keys(i)
  if release_lease(k, lease_member) or (reservation and release_lease(k, reservation)) then
    out[1] = out[1] + 1
  end
  reap(k, now)
  dispatch(k, i, now, ttl_ms, max_handoffs, out)
end
return out
