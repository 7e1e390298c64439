-- Delete row ARGV[1]. KEYS: rows hash, due index, name index. Returns 1 if it existed.
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
if removed == 1 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
end
return removed
