--[[
  Forget the payloads of published hand-offs, each only if it is still the payload that
  was handed off.

  Between a hand-off and its confirmation the task may already have arrived, found no
  room (e.g. a pause began) and parked again under the same id, or even been handed off
  again. That newer payload must stay: deleting it would leave a waiter with nothing to
  publish, which dispatch drops, and the task would be lost. Every parking writes a
  payload with its own token (pools/parking.py), so equal bytes mean the same parking.

  Input:
    KEYS[i]             the parked HASH of the pool hand-off i came from
    ARGV[1 + 2*(i-1)]   task id of hand-off i
    ARGV[2 + 2*(i-1)]   the payload hand-off i published

  Output:
    n   how many payloads were forgotten
]]

local forgotten = 0

for i, parked_key in ipairs(KEYS) do
  local task_id = ARGV[1 + 2 * (i - 1)]
  if redis.call('HGET', parked_key, task_id) == ARGV[2 + 2 * (i - 1)] then
    redis.call('HDEL', parked_key, task_id)
    forgotten = forgotten + 1
  end
end
return forgotten
