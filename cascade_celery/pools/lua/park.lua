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
    ARGV[7]     optional: when the task's worker received it (ms; "": not known): its
                place in line
    ARGV[8]     optional: the task's line, JSON (park_in in includes/pool.lua)

  Output:
    {1, 0, dues, dropped, handoffs...}   parked (or already waiting)
    {0, 0, dues, dropped, handoffs...}   not parked: the pool has room now, acquire again
    {2, 0, dues, dropped, handoffs...}   rejected: its line for its key value is full
    dropped: (task id, payload) pairs of waiters dropped to make room (on_full
    "drop_oldest"): they end SUPERSEDED
    dues: (pool index, due ms) pairs, one per rate pool with waiters (see
    includes/pool.lua)
]]
--- @include "includes/stats"
--- @include "includes/pool"

local task_id, units, payload = ARGV[1], tonumber(ARGV[2]), ARGV[4]
local k, now, out = pool_keys(1), now_ms(), {0, 0, {}, {}}
refresh(k, 1, tonumber(ARGV[3]), now, tonumber(ARGV[5]), tonumber(ARGV[6]), out)

local line = ARGV[8] and cjson.decode(ARGV[8]) or nil
local parked = park_in(k, task_id, units, payload, now, tonumber(ARGV[7]), line, out[4])
if parked == 'parked' then out[1] = 1 elseif parked == 'rejected' then out[1] = 2 end
announce_dues(1, out[3])
settle(k)
return out
