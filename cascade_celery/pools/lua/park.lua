--[[
  Park a blocked task at the back of one pool's line, unless the pool has room now.

  The room check and the park are one step, so a slot freed between a failed acquire
  and this call is never missed: the caller is told to acquire again instead. Parking
  a task that already waits (a duplicate delivery) keeps its place.

  Clock: Redis TIME.

  Input:
    KEYS[1..7]  the pool's keys, as listed in includes/pool.lua
    ARGV[1]     task id
    ARGV[2]     units the task needs
    ARGV[3]     capacity in the caller's view (-1: unlimited)
    ARGV[4]     payload: the message to hand off (pools/parking.py: JSON or direct)
    ARGV[5]     reservation ttl in milliseconds
    ARGV[6]     most waiters to hand off
    ARGV[7]     optional: when the task's worker received it (ms): its place in line

  Output:
    {1, 0, dues, handoffs...}   parked (or already waiting)
    {0, 0, dues, handoffs...}   not parked: the pool has room now, acquire again
    dues: (pool index, due ms) pairs, one per rate pool with waiters (see
    includes/pool.lua)
]]
--- @include "includes/stats"
--- @include "includes/pool"

local task_id, units, payload = ARGV[1], tonumber(ARGV[2]), ARGV[4]
local k, now, out = pool_keys(1), now_ms(), {0, 0, {}}
refresh(k, 1, tonumber(ARGV[3]), now, tonumber(ARGV[5]), tonumber(ARGV[6]), out)

if park_in(k, task_id, units, payload, now, tonumber(ARGV[7])) then
  out[1] = 1
end
announce_dues(1, out[3])
return out
