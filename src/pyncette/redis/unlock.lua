-- Release lease ARGV[2] on row ARGV[1], keeping its scheduled time.
-- KEYS: rows hash, due index. Returns 1, or 0 when the row is missing or not held.
local rows, due = KEYS[1], KEYS[2]
local name, lease = ARGV[1], ARGV[2]
local value = redis.call('HGET', rows, name)
if not value then
  return 0
end
local sched, dur, till, holder, tail = read_row(value)
if till == '' or holder ~= lease then
  return 0
end
redis.call('HSET', rows, name, write_row(sched, dur, '', '', tail))
redis.call('ZADD', due, sched, name)
return 1
