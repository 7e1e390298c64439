-- Apply finished executions. ARGV[1] is a JSON array of [name, lease, next run in
-- microseconds, or false to delete the row].
-- KEYS: rows hash, due index, name index. Returns the names whose lease was stale.
local entries = cjson.decode(ARGV[1])
local batch = batch_open(KEYS[1], names_of(entries))
local lost = {}
for i = 1, #entries do
  local name, lease, next_at = entries[i][1], entries[i][2], entries[i][3]
  local value = batch.current[name]
  local applied = false
  if value then
    local _, dur, till, holder, tail = read_row(value)
    if till ~= '' and holder == lease then
      applied = true
      if next_at then
        local sched = integer(next_at)
        batch_set(batch, name, write_row(sched, dur, '', '', tail), sched)
      else
        batch_set(batch, name, false)
      end
    end
  end
  if not applied then
    lost[#lost + 1] = name
  end
end
batch_close(KEYS, batch)
return lost
