--[[
  Extend a running task's lease in each of its pools.

  A lease that is gone was reaped (the renewal came too late): it is not re-created,
  because its slot may already belong to someone else; the caller logs it.

  Clock: Redis TIME.

  Input:
    KEYS[1..n]  the holders ZSET of each pool the lease is in
    ARGV[1]     lease member, "t:<task id>:<token>"
    ARGV[2]     new lease ttl in milliseconds

  Output:
    {i, ...}    indices of the pools where the lease was lost (empty: all renewed)
]]

local lease_member = ARGV[1]
local ttl_ms = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lost = {}

for i, holders_key in ipairs(KEYS) do
  if redis.call('ZSCORE', holders_key, lease_member) then
    redis.call('ZADD', holders_key, 'XX', now + ttl_ms, lease_member)
  else
    lost[#lost + 1] = i
  end
end
return lost
