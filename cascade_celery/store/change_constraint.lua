--[[
  Store or remove one constraint of the set and bump the set's version, in one step.

  A writer that has stored into this Redis before asks for its history: if the version
  key is gone, Redis lost the set (restarted without persistence, flushed) and a lone
  write would start a new history over the loss, so nothing is written. The check and
  the write are one script, so a write that a client retries into a restarted Redis is
  checked there too.

  Input:
    KEYS[1]  the constraint HASH
    KEYS[2]  the version counter
    ARGV[1]  the constraint id
    ARGV[2]  its JSON, or "" to remove it
    ARGV[3]  "1": the set's history must exist; "0": it may start here

  Output:
    the new version; 0 if nothing changed; -1 if the history is required and gone
]]
local hash, version = KEYS[1], KEYS[2]
local id, data = ARGV[1], ARGV[2]

if ARGV[3] == '1' and redis.call('EXISTS', version) == 0 then
  return -1
end
if data == '' then
  if redis.call('HDEL', hash, id) == 0 then return 0 end
else
  if redis.call('HGET', hash, id) == data then return 0 end
  redis.call('HSET', hash, id, data)
end
return redis.call('INCR', version)
