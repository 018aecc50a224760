-- A delivery's first stream entry: appended only if no earlier delivery of the run has
-- published entries (kinds ARGV[4] and ARGV[5]: signed batches; other kinds, such as unsigned
-- rejection notices, do not count), else the count of those entries. Redis cannot check
-- signatures: the caller tells genuine entries from forged ones (worker/stream_writer.py).
-- KEYS: the stream. ARGV: entry kind, sealed entry, ttl s, the two batch kinds, the kind
-- field's name, the message field's name (protocol/stream.py).
local earlier = 0
for _, entry in ipairs(redis.call('xrange', KEYS[1], '-', '+')) do
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == ARGV[6] and (fields[i + 1] == ARGV[4] or fields[i + 1] == ARGV[5]) then
      earlier = earlier + 1
    end
  end
end
if earlier > 0 then return earlier end
local id = redis.call('xadd', KEYS[1], '*', ARGV[6], ARGV[1], ARGV[7], ARGV[2])
redis.call('expire', KEYS[1], ARGV[3])
return id
