-- Lock up to ARGV[2] rows claimable at ARGV[1] with lease ARGV[3].
-- KEYS: rows hash, due index. Returns {next due or false, (name, scheduled_at,
-- locked_until, spec or false) per claimed row}.
local rows, due = KEYS[1], KEYS[2]
local now, lease = tonumber(ARGV[1]), ARGV[3]
local found = redis.call('ZRANGEBYSCORE', due, '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local out = {false}
if #found > 0 then
  local values = redis.call('HMGET', rows, unpack(found))
  local hset, zadd, stale, n, m, k = {}, {}, {}, 1, 0, 0
  for i = 1, #found do
    local name, value = found[i], values[i]
    if value then
      local sched, dur, _, _, tail = read_row(value)
      local till = integer(now + tonumber(dur))
      hset[m + 1], hset[m + 2] = name, write_row(sched, dur, till, lease, tail)
      zadd[m + 1], zadd[m + 2] = till, name
      m = m + 2
      out[n + 1], out[n + 2], out[n + 3], out[n + 4] =
        name, tonumber(sched), tonumber(till), spec_of(tail)
      n = n + 4
    else
      -- an index entry without a row can only be debris; drop it
      k = k + 1
      stale[k] = name
    end
  end
  if m > 0 then
    redis.call('HSET', rows, unpack(hset))
    redis.call('ZADD', due, unpack(zadd))
  end
  if k > 0 then
    redis.call('ZREM', due, unpack(stale))
  end
end
local first = redis.call('ZRANGE', due, 0, 0, 'WITHSCORES')
if first[2] then
  out[1] = tonumber(first[2])
end
return out
