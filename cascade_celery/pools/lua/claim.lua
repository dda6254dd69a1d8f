--[[
  Claim the reservation a task started on (runtime.py: a direct hand-off's grant): it
  becomes the task's own lease, so a copy of the same message delivered again can't
  take it over (it waits like any newcomer), and the task's id is free to park again.

  The lease keeps the reservation's expiry and units; the reservation's bookkeeping
  (arrival position, parking time) goes. In a rate pool the lease expires one window
  (and its guard) after now instead (the task started before now, never before its reservation), and
  the pool's due is announced (includes/pool.lua).

  Counted (includes/stats.lua): "admitted:reservation", and the hand-off's latency
  (its dispatch to now).

  Clock: Redis TIME.

  Input:
    KEYS[1..7]  the pool's keys, as listed in includes/pool.lua
    ARGV[1]     task id
    ARGV[2]     the task's lease member, "t:<task id>:<token>"

  Output:
    1   claimed
    0   no such reservation (it expired and was reaped): the slot is not held
]]
--- @include "includes/stats"
--- @include "includes/pool"

local task_id = ARGV[1]
local lease_member = ARGV[2]
local k = pool_keys(1)

local expiry = redis.call('ZSCORE', k.holders, 'r:' .. task_id)
if not expiry then return 0 end
local now = now_ms()
if window_ms(k) then expiry = now + holder_ttl(k, 0) end
local _, handed_at = claim_reservation(k, task_id, lease_member, expiry)
observe_handoff(k, handed_at, now)
announce_dues(1, {})
return 1
