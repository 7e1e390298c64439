-- Release lease ARGV[2] on row ARGV[1], keeping its scheduled time. ARGV[3], if given,
-- is the run's outcome to store with the row; ARGV[4] and ARGV[5], if given, how many
-- entries of the run history (KEYS[3]) to keep and their retention in milliseconds.
-- KEYS: rows hash, due index, history list (only with a history part). Returns 1, or 0
-- when the row is missing or not held.
local rows, due = KEYS[1], KEYS[2]
local name, lease, outcome = ARGV[1], ARGV[2], ARGV[3]
local sched, dur, _, _, tail = held_row(rows, name, lease)
if not sched then
  return 0
end
if outcome then
  tail = with_outcome(tail, outcome)
  if KEYS[3] then
    remember(KEYS[3], outcome, tonumber(ARGV[4]), tonumber(ARGV[5]))
  end
end
redis.call('HSET', rows, name, write_row(sched, dur, '', '', tail))
redis.call('ZADD', due, sched, name)
return 1
