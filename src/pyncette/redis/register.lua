-- Create or update rows. ARGV[1] is now, ARGV[2] '1' to force, ARGV[3] a JSON array of
-- [name, scheduled_at, lease duration (microseconds), spec or false].
-- KEYS: rows hash, due index, name index. Returns the names left untouched.
local now, force = tonumber(ARGV[1]), ARGV[2] == '1'
local batch = cjson.decode(ARGV[3])
local names = {}
for i = 1, #batch do
  names[i] = batch[i][1]
end
local current = batch_reader(KEYS[1], names)
local order, scores, skipped, touched = {}, {}, {}, {}
for i = 1, #batch do
  local name, sched, dur, spec = batch[i][1], batch[i][2], batch[i][3], batch[i][4]
  local value = current[name]
  local write = true
  if value then
    local old_sched, _, till = read_row(value)
    if till ~= '' and tonumber(till) > now and not force then
      write = false
      skipped[#skipped + 1] = name
    elseif tonumber(old_sched) < sched then
      sched = tonumber(old_sched)
    end
  end
  if write then
    local at = integer(sched)
    local tail = 'n'
    if spec then
      tail = 's' .. spec
    end
    current[name] = write_row(at, integer(dur), '', '', tail)
    scores[name] = at
    if not touched[name] then
      touched[name] = true
      order[#order + 1] = name
    end
  end
end
batch_write(KEYS, order, current, scores)
if #order > 0 then
  local listed = {}
  for i = 1, #order do
    listed[2 * i - 1], listed[2 * i] = 0, order[i]
  end
  redis.call('ZADD', KEYS[3], unpack(listed))
end
return skipped
