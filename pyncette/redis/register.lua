-- Create or update rows. ARGV[1] is now, ARGV[2] '1' to force, ARGV[3] a JSON array of
-- [name, scheduled_at, lease duration (microseconds), spec or false].
-- KEYS: rows hash, due index, name index. Returns the names left untouched.
-- An existing row keeps the sooner of its old and new run, and one with a live lease is
-- left alone; forced, every row takes the new run as given and loses its lease. Either
-- way an existing row keeps its last outcome. Entries apply in order, so a name given
-- twice is updated twice.
local now, force = tonumber(ARGV[1]), ARGV[2] == '1'
local entries = cjson.decode(ARGV[3])
local batch = batch_open(KEYS[1], names_of(entries))
local skipped = {}
for i = 1, #entries do
  local name, sched, dur, spec = entries[i][1], entries[i][2], entries[i][3], entries[i][4]
  local value = batch.current[name]
  local write = true
  local old_tail = 'n'
  if value then
    local old_sched, _, till, _, tail = read_row(value)
    old_tail = tail
    if till ~= '' and tonumber(till) > now and not force then
      write = false
      skipped[#skipped + 1] = name
    elseif not force and tonumber(old_sched) < sched then
      sched = tonumber(old_sched)
    end
  end
  if write then
    local at = integer(sched)
    local spec_tail = 'n'
    if spec then
      spec_tail = 's' .. spec
    end
    local tail = with_spec(old_tail, spec_tail)
    batch_set(batch, name, write_row(at, integer(dur), '', '', tail), at)
  end
end
local order = batch_close(KEYS, batch)
if #order > 0 then
  local listed = {}
  for i = 1, #order do
    listed[2 * i - 1], listed[2 * i] = 0, order[i]
  end
  redis.call('ZADD', KEYS[3], unpack(listed))
end
return skipped
