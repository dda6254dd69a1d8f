-- A Redis sliding-window rate limiter as commonly written: a ZSET log of admissions per
-- window, scored by admission time (ms, Redis clock).
-- KEYS: one log ZSET per window. ARGV: member, then (count, period ms) per window.
-- Drops admissions older than each period; admits (logs ``member`` in every window) only
-- if every window has room. Returns 0 if admitted, else the ms until the fullest window
-- has room (its oldest admission leaves it).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local wait = 0
for i, key in ipairs(KEYS) do
  local count, period = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - period)
  if redis.call('ZCARD', key) >= count then
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    wait = math.max(wait, tonumber(oldest[2]) + period - now + 1)
  end
end
if wait > 0 then
  return wait
end
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, ARGV[1])
  redis.call('PEXPIRE', key, tonumber(ARGV[2 * i + 1]) * 2)
end
return 0
