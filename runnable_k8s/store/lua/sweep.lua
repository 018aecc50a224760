-- Push back runs pending for too long whose message is neither queued nor held by a worker.
-- KEYS: pending set, unacked hash, then the queue's lists (normal first, then the other
-- priorities). ARGV: cutoff score, batch, key prefix, max scan. A copy goes back to the list its
-- routing key names if that is one of KEYS (a copy never chooses another key; else normal).
-- Returns the rescued run ids. The message key is spelled by `keys.message` (PREFIX:{id}:message);
-- store/rescue.py passes the prefix, and a unit test holds the two to the same name.
local ids = redis.call('zrangebyscore', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local rescued = {}
for _, id in ipairs(ids) do
  local message = redis.call('get', ARGV[3] .. '{' .. id .. '}:message')
  if not message then
    redis.call('zrem', KEYS[1], id)
  else
    -- The copy is read from Redis: check every type before use, so one hostile copy cannot
    -- stop the sweep for every run after it.
    local ok, decoded = pcall(cjson.decode, message)
    local tag = nil
    local list = KEYS[3]
    if ok and type(decoded) == 'table' and type(decoded['properties']) == 'table' then
      local properties = decoded['properties']
      tag = properties['delivery_tag']
      if type(properties['delivery_info']) == 'table' then
        local routed = properties['delivery_info']['routing_key']
        for i = 3, #KEYS do
          if KEYS[i] == routed then list = KEYS[i] end
        end
      end
    end
    if type(tag) ~= 'string' then
      redis.call('zrem', KEYS[1], id)
    -- RANK -1: from the consuming end, where messages pending the longest wait (producers
    -- LPUSH, kombu BRPOPs): a queued one is found in a few steps, not after the whole list.
    elseif redis.call('hexists', KEYS[2], tag) == 0
       and not redis.call('lpos', list, message, 'RANK', -1, 'MAXLEN', ARGV[4]) then
      redis.call('rpush', list, message)
      table.insert(rescued, id)
    end
  end
end
return rescued
