-- Release lease ARGV[2] on row ARGV[1], keeping its scheduled time.
-- KEYS: rows hash, due index. Returns 1, or 0 when the row is missing or not held.
local rows, due = KEYS[1], KEYS[2]
local name, lease = ARGV[1], ARGV[2]
local sched, dur, _, _, tail = held_row(rows, name, lease)
if not sched then
  return 0
end
redis.call('HSET', rows, name, write_row(sched, dur, '', '', tail))
redis.call('ZADD', due, sched, name)
return 1
