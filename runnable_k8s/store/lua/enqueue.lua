-- Submit runs: their records, their pending entries and their messages, in one step; a run on
-- a LangGraph thread either takes its free thread (then is queued as any run) or waits in the
-- thread's line (store/threads.py).
-- KEYS: pending set, the queue's normal, high and low lists, the webhook due-time set, then one
-- key per record, then per thread run its thread holder, the thread's waiting list, its link to
-- the thread, its status, message copy and body beside.
-- ARGV: number of records, number of runs, number of webhooks, number of thread runs, the
-- multitask strategy, then per record its value and ttl s, then per run its score, id, message
-- and list (2, 3 or 4: a KEYS index), then per webhook its first look and run id, then per
-- thread run its id, score, message, list, hold ttl s, link ttl s, thread key, line ttl s.
-- Returns the number of runs, or with thread runs {verdict, holder} for each of them:
-- 'started' (the thread was free: queued as any run), 'waiting' (in the thread's line: not in
-- the queue list nor the pending set, so neither KEDA nor the rescue sweep sees it), 'busy'
-- (strategy reject: every record of the run written here is taken back).
-- One script instead of MULTI/SET.../EXEC: the same atomicity for fewer commands. Large
-- bodies are written by the caller just before (megabytes do not go through Lua).
local records, runs, hooks = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local threaded, strategy = tonumber(ARGV[4]), ARGV[5]
local at = 6
for i = 1, records do
  redis.call('set', KEYS[5 + i], ARGV[at], 'EX', ARGV[at + 1])
  at = at + 2
end
-- In slices: `unpack` of a very large batch would overflow Lua's stack.
local slice = 1000
for first = 0, runs - 1, slice do
  local scored, messages = {}, {[2] = {}, [3] = {}, [4] = {}}
  for i = first, math.min(runs, first + slice) - 1 do
    local base = at + 4 * i
    scored[#scored + 1] = ARGV[base]
    scored[#scored + 1] = ARGV[base + 1]
    local list = messages[tonumber(ARGV[base + 3])] or messages[2]
    list[#list + 1] = ARGV[base + 2]
  end
  redis.call('zadd', KEYS[1], unpack(scored))
  for slot = 2, 4 do
    if #messages[slot] > 0 then redis.call('lpush', KEYS[slot], unpack(messages[slot])) end
  end
end
at = at + 4 * runs
local hooks_at = at
at = at + 2 * hooks
-- A thread is held by a RUN id, never a worker, so a redelivered run keeps its thread and no
-- other run of the thread starts meanwhile.
local entered, busy = {}, {}
local first_key = 6 + records
for i = 0, threaded - 1 do
  local k, a = first_key + 6 * i, at + 8 * i
  local run_id = ARGV[a]
  local holder = redis.call('get', KEYS[k])
  if not holder then
    redis.call('set', KEYS[k], run_id, 'EX', ARGV[a + 4])
    redis.call('set', KEYS[k + 2], ARGV[a + 6], 'EX', ARGV[a + 5])
    redis.call('zadd', KEYS[1], ARGV[a + 1], run_id)
    local slot = tonumber(ARGV[a + 3])
    if slot ~= 3 and slot ~= 4 then slot = 2 end
    redis.call('lpush', KEYS[slot], ARGV[a + 2])
    entered[#entered + 1] = {'started', ''}
  elseif strategy == 'reject' then
    redis.call('del', KEYS[k + 3], KEYS[k + 4], KEYS[k + 5])
    busy[run_id] = true
    entered[#entered + 1] = {'busy', holder}
  else
    redis.call('set', KEYS[k + 2], ARGV[a + 6], 'EX', ARGV[a + 5])
    if strategy == 'enqueue' then
      redis.call('rpush', KEYS[k + 1], run_id)
    else
      -- interrupt / rollback: next in line; the caller then stops the holder.
      redis.call('lpush', KEYS[k + 1], run_id)
    end
    if redis.call('ttl', KEYS[k + 1]) < tonumber(ARGV[a + 7]) then
      redis.call('expire', KEYS[k + 1], ARGV[a + 7])
    end
    entered[#entered + 1] = {'waiting', holder}
  end
end
-- A refused run has no completion to report: no webhook delivery is scheduled for it.
for i = 0, hooks - 1 do
  local run_id = ARGV[hooks_at + 2 * i + 1]
  if not busy[run_id] then redis.call('zadd', KEYS[5], ARGV[hooks_at + 2 * i], run_id) end
end
if threaded > 0 then return entered end
return runs
