-- A run is done with its thread (its outcome is recorded, or it was cancelled while queued):
-- if it holds the thread, hand the thread to the next waiting run by pushing that run's kept
-- message copy onto the queue (front: it already waited its turn); otherwise only take it
-- out of the line. Idempotent: a redelivery of a finished run may call it again.
-- KEYS: 1 the run's link to its thread, 2 queue list, 3 pending set.
-- ARGV: 1 run id, 2 now, 3 hold ttl s, 4 key prefix ('rk8s:'), 5 thread key ('' = read the
--       link: the producer's cancel does not know the thread).
-- Returns the id of the run handed the thread ('' = none).
local thread = ARGV[5]
if thread == '' then
  local link = redis.call('get', KEYS[1])
  if not link then return '' end
  thread = link
end
-- Read from Redis: only ever a thread key of ours.
if string.sub(thread, 1, string.len(ARGV[4]) + 7) ~= ARGV[4] .. 'thread:' then return '' end
local waiting = thread .. ':waiting'
redis.call('del', KEYS[1])
local holder = redis.call('get', thread)
-- No holder at all: a hold that lapsed (a run lost for longer than its whole life); hand on
-- anyway, or the runs in line would wait for ever.
if holder and holder ~= ARGV[1] then
  redis.call('lrem', waiting, 0, ARGV[1])
  return ''
end
while true do
  local next = redis.call('lpop', waiting)
  if not next then
    redis.call('del', thread)
    return ''
  end
  -- Ids read from Redis name keys: only the shape producers make.
  if string.len(next) <= 64 and string.match(next, '^[%w_-]+$') then
    local message = redis.call('get', ARGV[4] .. '{' .. next .. '}:message')
    -- No copy: cancelled while waiting (or its copy outlived): skip it.
    if message then
      redis.call('set', thread, next, 'EX', ARGV[3])
      redis.call('zadd', KEYS[3], ARGV[2], next)
      redis.call('rpush', KEYS[2], message)
      return next
    end
  end
end
