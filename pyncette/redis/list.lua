-- One page of rows in name order. ARGV[1] is where to start ('-' or '(' .. last name
-- seen), ARGV[2] the page size. KEYS: rows hash, name index.
-- Returns {last name of the page when more follow, or false, (name, stored value)...}.
local rows, names = KEYS[1], KEYS[2]
local limit = tonumber(ARGV[2])
local page = redis.call('ZRANGEBYLEX', names, ARGV[1], '+', 'LIMIT', 0, limit + 1)
local out = {false}
local count = math.min(#page, limit)
for i = 1, count do
  local value = redis.call('HGET', rows, page[i])
  if value then
    out[#out + 1] = page[i]
    out[#out + 1] = value
  end
end
if #page > limit then
  out[1] = page[limit]
end
return out
