-- A Redis semaphore as commonly written: a ZSET of holders scored by lease expiry (ms).
-- KEYS[1]: the holders ZSET. ARGV: member, now (ms), lease (ms), limit.
-- Drops expired holders, then takes a slot if one is free. Returns 1 if taken, else 0.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[4]) then
  redis.call('ZADD', KEYS[1], tonumber(ARGV[2]) + tonumber(ARGV[3]), ARGV[1])
  return 1
end
return 0
