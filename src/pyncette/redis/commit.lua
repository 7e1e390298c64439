-- Apply finished executions. ARGV[1] is a JSON array of [name, lease, next run in
-- microseconds, or false to delete the row].
-- KEYS: rows hash, due index, name index. Returns the names whose lease was stale.
local batch = cjson.decode(ARGV[1])
local names = {}
for i = 1, #batch do
  names[i] = batch[i][1]
end
local current = batch_reader(KEYS[1], names)
local order, scores, lost, touched = {}, {}, {}, {}
for i = 1, #batch do
  local name, lease, next_at = batch[i][1], batch[i][2], batch[i][3]
  local value = current[name]
  local applied = false
  if value then
    local _, dur, till, holder, tail = read_row(value)
    if till ~= '' and holder == lease then
      applied = true
      if next_at then
        local sched = integer(next_at)
        current[name] = write_row(sched, dur, '', '', tail)
        scores[name] = sched
      else
        current[name] = false
      end
      if not touched[name] then
        touched[name] = true
        order[#order + 1] = name
      end
    end
  end
  if not applied then
    lost[#lost + 1] = name
  end
end
batch_write(KEYS, order, current, scores)
return lost
