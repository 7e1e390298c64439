-- Apply finished executions. ARGV[1] is a JSON array of [name, lease, next run in
-- microseconds, or false to delete the row], followed, when the run stored an outcome,
-- by the outcome text and, when that goes to the run history too, by how many history
-- entries to keep and their retention in milliseconds.
-- KEYS: rows hash, due index, name index, then the history list of each entry that has
-- a history part, in order. Returns the names whose lease was stale.
local entries = cjson.decode(ARGV[1])
local batch = batch_open(KEYS[1], names_of(entries))
local lost = {}
local histories = 3
for i = 1, #entries do
  local entry = entries[i]
  local name, lease, next_at, outcome = entry[1], entry[2], entry[3], entry[4]
  local history = nil
  if entry[5] then
    histories = histories + 1
    history = KEYS[histories]
  end
  local value = batch.current[name]
  local applied = false
  if value then
    local _, dur, till, holder, tail = read_row(value)
    if till ~= '' and holder == lease then
      applied = true
      if outcome then
        tail = with_outcome(tail, outcome)
        if history then
          remember(history, outcome, entry[5], entry[6])
        end
      end
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
