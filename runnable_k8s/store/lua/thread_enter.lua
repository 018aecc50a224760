-- A run with a thread_id arrives (inside the producer's MULTI, after its status and message
-- copy were written). The thread is held by a RUN id, never a worker, so a redelivered run
-- keeps its thread and no other run of the thread starts meanwhile.
-- KEYS: 1 thread holder, 2 thread's waiting list, 3 queue list, 4 pending set,
--       5 the run's link to its thread, 6 status, 7 message copy, 8 body beside.
-- ARGV: 1 run id, 2 strategy, 3 now, 4 hold ttl s, 5 link ttl s, 6 thread key, 7 waiting ttl s.
-- Returns {verdict, holder}: 'started' (free: queued as any run), 'waiting' (in the thread's
-- line: not in the queue list nor the pending set, so neither KEDA nor the rescue sweep sees
-- it), 'busy' (strategy reject: every record of the run written above is taken back).
local holder = redis.call('get', KEYS[1])
if not holder then
  local message = redis.call('get', KEYS[7])
  redis.call('set', KEYS[1], ARGV[1], 'EX', ARGV[4])
  redis.call('set', KEYS[5], ARGV[6], 'EX', ARGV[5])
  redis.call('zadd', KEYS[4], ARGV[3], ARGV[1])
  redis.call('lpush', KEYS[3], message)
  return {'started', ''}
end
if ARGV[2] == 'reject' then
  redis.call('del', KEYS[6], KEYS[7], KEYS[8])
  return {'busy', holder}
end
redis.call('set', KEYS[5], ARGV[6], 'EX', ARGV[5])
if ARGV[2] == 'enqueue' then
  redis.call('rpush', KEYS[2], ARGV[1])
else
  -- interrupt / rollback: next in line; the caller then stops the holder.
  redis.call('lpush', KEYS[2], ARGV[1])
end
if redis.call('ttl', KEYS[2]) < tonumber(ARGV[7]) then
  redis.call('expire', KEYS[2], ARGV[7])
end
return {'waiting', holder}
