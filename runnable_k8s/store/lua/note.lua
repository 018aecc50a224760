-- Leave a notice that a message claiming a run could not be verified (protocol/rejection.py).
-- KEYS: status, events, pending set, message copy. ARGV: digest, reason label, ttl s, SHA-1 of
-- the copy the rejected bytes equal ("" = they equal no copy), run id.
-- A notice goes only to a run that exists (a status record), into its stream if that is a
-- stream, without extending a TTL already set (a forged message must not keep a finished run's
-- results alive). The run leaves the pending set only if its copy is still the one whose bytes
-- were rejected: rescuing it would only push the same bytes to the same rejection.
-- 'x' is rejection.NOTICE.
if redis.call('exists', KEYS[1]) == 0 then return 0 end
local kind = redis.call('type', KEYS[2]).ok
if kind == 'none' or kind == 'stream' then
  redis.call('xadd', KEYS[2], '*', 'k', 'x', 'd', ARGV[1], 'r', ARGV[2])
  if redis.call('ttl', KEYS[2]) < 0 then redis.call('expire', KEYS[2], ARGV[3]) end
end
if ARGV[4] == '' or redis.call('type', KEYS[4]).ok ~= 'string' then return 0 end
if redis.sha1hex(redis.call('get', KEYS[4])) ~= ARGV[4] then return 0 end
redis.call('zrem', KEYS[3], ARGV[5])
return 1
