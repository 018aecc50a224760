-- Start a run: take its lease and record "running", by compare-and-set on the status record.
-- KEYS: status, lock, cancel, pending set. ARGV: SHA-1 of the expected status ("" = none), new
-- status ("" = leave it), owner, lease ms, ttl s, "1" to skip the cancellation check, run id,
-- "1" if the expected status is the producer's own "queued" record.
-- Returns 'ok', 'changed' (the status is not the one expected), 'locked' (another delivery
-- holds the lease) or 'cancelled' (a cancellation record exists; the lease is taken first, so
-- the caller may record the cancellation as the lease holder once it has verified it: Redis
-- cannot check a signature).
-- Usual path (a first delivery): ZREM, SET NX, SET. The message copy stays where it is: the
-- run leaves the pending set (the rescue sweep's only index), and `finish` drops or keeps it.
-- While a run is pending its "queued" record is the producer's: cancelling a queued run, the
-- only other change of that record, takes the run off the pending set in the same
-- transaction. So taking it off the pending set is the compare-and-set, with no read; a run
-- no longer pending (claimed before, cancelled, swept) is compared by the record's SHA-1.
local fresh = ARGV[8] == '1' and redis.call('zrem', KEYS[4], ARGV[7]) == 1
if not fresh then
  local current = redis.call('get', KEYS[1])
  local digest = ''
  if current then digest = redis.sha1hex(current) end
  if digest ~= ARGV[1] then return 'changed' end
end
if not redis.call('set', KEYS[2], ARGV[3], 'NX', 'PX', ARGV[4]) then
  if redis.call('get', KEYS[2]) ~= ARGV[3] then
    -- A genuine lease never outlives one lease period; one with no expiry, or a longer one,
    -- was not written by a worker: take it over.
    local ttl = redis.call('pttl', KEYS[2])
    if ttl >= 0 and ttl <= tonumber(ARGV[4]) then return 'locked' end
  end
  redis.call('set', KEYS[2], ARGV[3], 'PX', ARGV[4])
end
if not fresh then redis.call('zrem', KEYS[4], ARGV[7]) end
-- Skipped for the producer's own "queued" record: cancelling a queued run replaces that
-- record in the same transaction as it writes the cancellation, so finding the record
-- unchanged already says no genuine cancellation exists.
if ARGV[6] == '' and redis.call('exists', KEYS[3]) == 1 then return 'cancelled' end
if ARGV[2] ~= '' then redis.call('set', KEYS[1], ARGV[2], 'EX', ARGV[5]) end
return 'ok'
