-- Where is the message of a queued run a worker left a rejection notice for; record its
-- failure once it is nowhere (producer/rejections.py decides when).
-- KEYS: status, pending set, unacked hash, queue, events, message copy, body, then the queue's
-- other priority lists (the run may wait on any of them). ARGV: SHA-1 of
-- the expected (queued) status, run id, signature hex, delivery tag, max scan, "1" to record,
-- failed status, outcome, ttl s.
-- Returns where the message still is ('started', 'pending', 'held', 'queued', 'unknown'),
-- else 'gone', or 'failed' once recorded. The cheap looks come first; the scans run only for a
-- run no longer pending, which is rare. A hostile key of another type makes the script fail:
-- the caller then looks again later, as for 'unknown'.
local current = redis.call('get', KEYS[1])
if not current or redis.sha1hex(current) ~= ARGV[1] then return 'started' end
if redis.call('zscore', KEYS[2], ARGV[2]) then return 'pending' end
if ARGV[4] ~= '' and redis.call('hexists', KEYS[3], ARGV[4]) == 1 then return 'held' end
local max = tonumber(ARGV[5])
local lists = {KEYS[4]}
for i = 8, #KEYS do table.insert(lists, KEYS[i]) end
local copy = redis.call('get', KEYS[6])
for _, list in ipairs(lists) do
  if copy and redis.call('lpos', list, copy, 'RANK', -1, 'MAXLEN', max) then
    return 'queued'
  end
  if redis.call('llen', list) > max then return 'unknown' end
end
if redis.call('hlen', KEYS[3]) > max then return 'unknown' end
-- By signature, not by bytes or tag: kombu re-serializes a message it hands back, and the
-- tag in the copy is not signed.
local cursor = '0'
repeat
  local page = redis.call('hscan', KEYS[3], cursor, 'COUNT', 100)
  cursor = page[1]
  for i = 2, #page[2], 2 do
    if string.find(page[2][i], ARGV[3], 1, true) then return 'held' end
  end
until cursor == '0'
for _, list in ipairs(lists) do
  local length = redis.call('llen', list)
  for start = 0, length - 1, 100 do
    for _, item in ipairs(redis.call('lrange', list, start, start + 99)) do
      if string.find(item, ARGV[3], 1, true) then return 'queued' end
    end
  end
end
if ARGV[6] == '' then return 'gone' end
redis.call('set', KEYS[1], ARGV[7], 'EX', ARGV[9])
redis.call('xadd', KEYS[5], '*', 'k', 'r', 'm', ARGV[8])
redis.call('expire', KEYS[5], ARGV[9])
redis.call('del', KEYS[6], KEYS[7])
return 'failed'
