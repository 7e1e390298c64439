-- Move the expiry of lease ARGV[2] on row ARGV[1] to ARGV[3].
-- KEYS: rows hash, due index. Returns 1, or 0 when the row is missing or not held.
local rows, due = KEYS[1], KEYS[2]
local name, lease, till = ARGV[1], ARGV[2], ARGV[3]
local sched, dur, _, holder, tail = held_row(rows, name, lease)
if not sched then
  return 0
end
redis.call('HSET', rows, name, write_row(sched, dur, till, holder, tail))
redis.call('ZADD', due, till, name)
return 1
