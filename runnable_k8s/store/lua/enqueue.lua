-- Submit runs: their records, their pending entries and their messages, in one step.
-- KEYS: pending set, the queue's normal, high and low lists, the webhook due-time set, then one
-- key per record. ARGV: number of records, number of runs, number of webhooks, then per record
-- its value and ttl s, then per run its score, id, message and list (2, 3 or 4: a KEYS index),
-- then per webhook its first look and run id.
-- One script instead of MULTI/SET.../EXEC: the same atomicity for two fewer commands. Large
-- bodies are written by the caller just before (megabytes do not go through Lua).
local records, runs, hooks = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local at = 4
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
for i = 0, hooks - 1 do
  redis.call('zadd', KEYS[5], ARGV[at + 2 * i], ARGV[at + 2 * i + 1])
end
return runs
