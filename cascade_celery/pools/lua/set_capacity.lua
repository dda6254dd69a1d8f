--[[
  Set (or lift) a pool's capacity, reap expired holders and hand free room to waiters.

  This is also the periodic sweep: called with the caller's current view, it recovers
  slots of dead workers and re-queues hand-offs whose publisher died. Lowering the
  capacity is a soft limit: holders keep their units, newcomers wait until used < it.

  It is what a timer runs at a rate pool's due time: atomic, so of several processes
  firing at once the first hands off exactly the waiters that now fit and the others
  find nothing more to hand off; each is told the next due.

  Clock: Redis TIME.

  Input:
    KEYS[1..7]  the pool's keys, as listed in includes/pool.lua
    ARGV[1]     capacity (-1: unlimited)
    ARGV[2]     reservation ttl in milliseconds for handed-off waiters
    ARGV[3]     most waiters to hand off
    ARGV[4]     ms after which a dropped waiter not ended yet is returned (dropped)

  Output:
    {waiting, used, dues, dropped, handoffs...}   waiting: tasks still parked after the
                hand-offs; dropped: (task id, payload) of waiters dropped from a full line
                more than ARGV[4] ms ago and not ended yet (their dropper died): end
                them (SUPERSEDED)
    dues: (pool index, due ms) pairs, one per rate pool with waiters (see
    includes/pool.lua)
]]
--- @include "includes/stats"
--- @include "includes/pool"

local k, now, out = pool_keys(1), now_ms(), {0, 0, {}, {}}
refresh(k, 1, tonumber(ARGV[1]), now, tonumber(ARGV[2]), tonumber(ARGV[3]), out)
unended_drops(k, now, tonumber(ARGV[4]), out[4])
out[1] = redis.call('ZCARD', k.waiters)
out[2] = used_of(k)
announce_dues(1, out[3])
settle(k)
return out
