-- Row encoding, prepended to every other script when it is loaded.
--
-- The rows of a group live in one hash (field = row name). A value reads
--
--   <scheduled_at>,<lease_duration>,<locked_until>,<holder length>,<holder><tail>
--
-- Times are integer microseconds since the Unix epoch. While a row is unlocked,
-- <locked_until> is empty and <holder length> is 0. <holder> is the lease token, as
-- many bytes as its length says. <tail> is the row's last outcome, if it has one, as
-- "o", its length in bytes, "," and the text, followed by the spec: "n" (no spec) or
-- "s" and the spec text. Rows written before outcomes were stored have no "o" part and
-- read as having none.
--
-- The second key of a group is a sorted set of row names scored by the time each row
-- becomes claimable (locked_until when locked, scheduled_at otherwise); the third one
-- holds every row name at score 0, for listing in name order.
-- A row's run history is a list of its own, passed by the caller to the scripts that
-- append to it (see keys.py).
--
-- Callers keep batches small enough (at most a few thousand arguments) for unpack().

local match, sub, len, format = string.match, string.sub, string.len, string.format

local function read_row(value)
  local sched, dur, till, size, at = match(value, '^(%-?%d+),(%-?%d+),(%-?%d*),(%d+),()')
  local stop = at + tonumber(size)
  return sched, dur, till, sub(value, at, stop - 1), sub(value, stop)
end

local function write_row(sched, dur, till, holder, tail)
  return sched .. ',' .. dur .. ',' .. till .. ',' .. len(holder) .. ',' .. holder .. tail
end

local function integer(number)
  return format('%.0f', number)
end

-- Where the spec part ('n' or 's' .. spec) of a tail starts: after the outcome, if any.
local function spec_start(tail)
  if sub(tail, 1, 1) ~= 'o' then
    return 1
  end
  local size, at = match(tail, '^o(%d+),()')
  return at + tonumber(size)
end

local function spec_of(tail)
  local at = spec_start(tail)
  if sub(tail, at, at) == 's' then
    return sub(tail, at + 1)
  end
  return false
end

-- `tail` with its outcome replaced by `outcome`.
local function with_outcome(tail, outcome)
  return 'o' .. len(outcome) .. ',' .. outcome .. sub(tail, spec_start(tail))
end

-- `spec_tail` ('n' or 's' .. spec) after the outcome that `tail` holds, if any.
local function with_spec(tail, spec_tail)
  local at = spec_start(tail)
  if at == 1 then
    return spec_tail
  end
  return sub(tail, 1, at - 1) .. spec_tail
end

-- Add `outcome` to the run history list `key`: the newest `keep` entries, the key
-- expiring `retention` milliseconds after this write.
local function remember(key, outcome, keep, retention)
  redis.call('LPUSH', key, outcome)
  redis.call('LTRIM', key, 0, integer(keep - 1))
  redis.call('PEXPIRE', key, integer(retention))
end

-- The fields of row `name` if lease `lease` holds it; nil otherwise.
local function held_row(rows, name, lease)
  local value = redis.call('HGET', rows, name)
  if not value then
    return nil
  end
  local sched, dur, till, holder, tail = read_row(value)
  if till == '' or holder ~= lease then
    return nil
  end
  return sched, dur, till, holder, tail
end

-- The first element of each entry of a JSON batch: the row names.
local function names_of(entries)
  local names = {}
  for i = 1, #entries do
    names[i] = entries[i][1]
  end
  return names
end

-- Sequential updates of a batch of rows, written back with a few multi-argument calls.
-- batch_open reads the rows `names`; batch.current maps a name to its value as the
-- batch has left it (false: deleted); batch_set changes one; batch_close writes every
-- changed row back, in the order first changed.
local function batch_open(rows, names)
  local current = {}
  if #names > 0 then
    local values = redis.call('HMGET', rows, unpack(names))
    for i = 1, #names do
      current[names[i]] = values[i]
    end
  end
  return {current = current, order = {}, scores = {}, touched = {}}
end

local function batch_set(batch, name, value, score)
  batch.current[name] = value
  batch.scores[name] = score
  if not batch.touched[name] then
    batch.touched[name] = true
    batch.order[#batch.order + 1] = name
  end
end

local function batch_close(keys, batch)
  local rows, due, index = keys[1], keys[2], keys[3]
  local order, current, scores = batch.order, batch.current, batch.scores
  local hset, zadd, gone, n, k = {}, {}, {}, 0, 0
  for i = 1, #order do
    local name = order[i]
    local value = current[name]
    if value then
      hset[n + 1], hset[n + 2] = name, value
      zadd[n + 1], zadd[n + 2] = scores[name], name
      n = n + 2
    else
      k = k + 1
      gone[k] = name
    end
  end
  if n > 0 then
    redis.call('HSET', rows, unpack(hset))
    redis.call('ZADD', due, unpack(zadd))
  end
  if k > 0 then
    redis.call('HDEL', rows, unpack(gone))
    redis.call('ZREM', due, unpack(gone))
    if index then
      redis.call('ZREM', index, unpack(gone))
    end
  end
  return order
end
