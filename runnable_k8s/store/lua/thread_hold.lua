-- A worker received a thread's run: keep the hold alive for this delivery (a run redelivered
-- after a kill renews it), or take a hold that lapsed.
-- KEYS: 1 thread holder. ARGV: 1 run id, 2 hold ttl s.
-- Returns '' when held by this run, else the other holder's id.
local holder = redis.call('get', KEYS[1])
if holder and holder ~= ARGV[1] then return holder end
redis.call('set', KEYS[1], ARGV[1], 'EX', ARGV[2])
return ''
