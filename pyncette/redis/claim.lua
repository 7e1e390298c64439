-- Lock up to ARGV[2] rows claimable at ARGV[1] with lease ARGV[3].
-- KEYS: rows hash, due index. Returns {next due or false, (name, scheduled_at,
-- locked_until, spec or false) per claimed row}.
local now, lease = tonumber(ARGV[1]), ARGV[3]
local found = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local batch = batch_open(KEYS[1], found)
local out, n = {false}, 1
for i = 1, #found do
  local name = found[i]
  local value = batch.current[name]
  if value then
    local sched, dur, _, _, tail = read_row(value)
    local till = integer(now + tonumber(dur))
    batch_set(batch, name, write_row(sched, dur, till, lease, tail), till)
    out[n + 1], out[n + 2], out[n + 3], out[n + 4] =
      name, tonumber(sched), tonumber(till), spec_of(tail)
    n = n + 4
  else
    batch_set(batch, name, false)  -- an index entry without a row is debris: drop it
  end
end
batch_close(KEYS, batch)
local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if first[2] then
  out[1] = tonumber(first[2])
end
return out
