-- Count one more call in flight and raise the recorded peak if it is exceeded, atomically.
-- KEYS[1]: calls in flight, KEYS[2]: the peak. Returns the calls in flight now.
local n = redis.call('INCR', KEYS[1])
if n > tonumber(redis.call('GET', KEYS[2]) or '0') then
  redis.call('SET', KEYS[2], n)
end
return n
