--[[
  Re-time a running task's admissions in rate pools to now, as its body starts (GatedTask's
  before_start): under load a task can start tens of milliseconds after the gate admitted
  it, and the log must count the start the task itself sees. An entry only moves later
  (now is after its admission), so the rate still holds; one whose window has passed, or
  that was reaped, is left alone.

  Clock: Redis TIME.

  Input:
    KEYS[1..n]  the holders key of each rate pool the task was admitted in
    ARGV[1]     the task's lease member, "t:<task id>:<token>"

  Output:
    how many admissions were re-timed
]]
--- @include "includes/stats"
--- @include "includes/pool"

local member = ARGV[1]
local now = now_ms()
local moved = 0
for i = 1, #KEYS do
  local window = window_ms_of(KEYS[i])
  local expiry = redis.call('ZSCORE', KEYS[i], member)
  if window and expiry and tonumber(expiry) > now then
    redis.call('ZADD', KEYS[i], 'XX', now + window + RATE_GUARD_MS, member)
    moved = moved + 1
  end
end
return moved
