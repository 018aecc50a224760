-- End a run: append its outcome, write the final status, release the lease and drop the
-- run's large body and message copy, unless the status changed since the run started.
-- KEYS: status, events, body, lock, message copy, kept request, kept body, dead-letter index.
-- ARGV: SHA-1 of the expected status ("" = none), new status, ttl s, owner, outcome ("" = it
-- was appended by the XADD just before this script), dead-letter ttl s ("" = not a dead
-- letter), now, run id, the longest a status record is kept (s: to put back one that changed).
-- A large outcome is appended by a plain XADD before the script in the same transaction, so
-- megabytes never pass through Lua (handing 1 MB to a script and on to XADD took about 3 ms
-- more than a plain XADD); when the status changed since the run started, the script takes
-- that entry back, and as the transaction is atomic no reader ever sees it.
-- Usual path: SET (with GET), XADD, EXPIRE, DEL.
local appended = ARGV[5] == ''
-- A dead letter's records live as long as its index entry (or longer).
local dead = ARGV[6] ~= ''
local keep = tonumber(ARGV[3])
if dead then keep = math.max(keep, tonumber(ARGV[6])) end
-- The XADD failed (a key of another type in the stream's place): record nothing.
if appended and redis.call('type', KEYS[2]).ok ~= 'stream' then
  if redis.call('get', KEYS[4]) == ARGV[4] then redis.call('del', KEYS[4]) end
  return -1
end
-- The compare-and-set is folded into the write: SET ... GET writes the final status and
-- answers what it replaced, one command instead of a GET before the SET. The script is
-- atomic, so when the record turns out to have changed it is put back before any reader
-- could see ours (its TTL then restarts at the longest a status record may be kept: it can
-- only live a little longer, never vanish early).
local current = redis.call('set', KEYS[1], ARGV[2], 'EX', keep, 'GET')
local digest = ''
if current then digest = redis.sha1hex(current) end
if digest ~= ARGV[1] then
  if current then
    redis.call('set', KEYS[1], current, 'EX', ARGV[9])
  else
    redis.call('del', KEYS[1])
  end
  -- After `finish` this worker is done with the run either way: release a lease it holds.
  if redis.call('get', KEYS[4]) == ARGV[4] then redis.call('del', KEYS[4]) end
  if appended then
    local last = redis.call('xrevrange', KEYS[2], '+', '-', 'COUNT', 1)
    if last[1] then redis.call('xdel', KEYS[2], last[1][1]) end
    redis.call('expire', KEYS[2], ARGV[3])
  end
  return 0
end
-- The status was still the record this delivery's claim wrote together with the lease, so no
-- other delivery has claimed the run since: the lease is this worker's (or lapsed), and goes
-- with the run's other keys, without a read to compare the owner.
if not appended then redis.call('xadd', KEYS[2], '*', 'k', 'r', 'm', ARGV[5]) end
if not dead then
  redis.call('expire', KEYS[2], ARGV[3])
  redis.call('del', KEYS[4], KEYS[3], KEYS[5])
  return 1
end
-- A dead letter: its request and body stay for `failed retry`. Entries past the period go as
-- the index is written.
redis.call('del', KEYS[4])
redis.call('expire', KEYS[2], keep)
if redis.call('exists', KEYS[3]) == 1 then
  redis.call('rename', KEYS[3], KEYS[7])
  redis.call('expire', KEYS[7], ARGV[6])
end
if redis.call('exists', KEYS[5]) == 1 then
  redis.call('rename', KEYS[5], KEYS[6])
  redis.call('expire', KEYS[6], ARGV[6])
end
-- A key of another type in the index's place must not fail the script half-way.
local kind = redis.call('type', KEYS[8]).ok
if kind == 'none' or kind == 'zset' then
  redis.call('zadd', KEYS[8], ARGV[7], ARGV[8])
  redis.call('zremrangebyscore', KEYS[8], '-inf', tonumber(ARGV[7]) - tonumber(ARGV[6]))
end
return 1
