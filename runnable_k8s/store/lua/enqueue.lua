-- Submit runs: their records, their pending entries and their messages, in one step.
-- KEYS: pending set, queue list, then one key per record. ARGV: number of records, number of
-- runs, then per record its value and ttl s, then per run its score, id and message.
-- One script instead of MULTI/SET.../EXEC: the same atomicity for two fewer commands. Large
-- bodies are written by the caller just before (megabytes do not go through Lua).
local records, runs = tonumber(ARGV[1]), tonumber(ARGV[2])
local at = 3
for i = 1, records do
  redis.call('set', KEYS[2 + i], ARGV[at], 'EX', ARGV[at + 1])
  at = at + 2
end
-- In slices: `unpack` of a very large batch would overflow Lua's stack.
local slice = 1000
for first = 0, runs - 1, slice do
  local scored, messages = {}, {}
  for i = first, math.min(runs, first + slice) - 1 do
    local base = at + 3 * i
    scored[#scored + 1] = ARGV[base]
    scored[#scored + 1] = ARGV[base + 1]
    messages[#messages + 1] = ARGV[base + 2]
  end
  redis.call('zadd', KEYS[1], unpack(scored))
  redis.call('lpush', KEYS[2], unpack(messages))
end
return runs
