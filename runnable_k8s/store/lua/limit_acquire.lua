-- Take one model call's share of every limit that applies to it, all or nothing.
-- KEYS: per rule five keys (requests zset, tokens zset, token amounts hash, holders zset,
--       pause string), then the cluster's zset of waiting calls.
-- ARGV: call id, lease ms, margin ms, rule count, poll ms, input characters of the call (0:
--       unknown), then per rule: requests, request
--       window ms, tokens, token window ms, concurrency (0 = no such limit).
-- Returns {0} when granted, else {ms to wait, reason, rule number}: the caller sleeps exactly
-- that long (a rate or a pause frees up at a known time; a concurrency slot is polled).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id, lease, margin = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local rules, poll = tonumber(ARGV[4]), tonumber(ARGV[5])
local size = tonumber(ARGV[6])

-- A call's tokens, before it runs: its input characters times the tokens per character that
-- calls of this key settled at, else the average call, else (nothing settled yet) the whole
-- budget, so the first call goes alone.
local function estimate_of(tokn, tok_n)
  local ratio = tonumber(redis.call('HGET', tokn, 'ratio') or '')
  local estimate
  if ratio and size > 0 then
    estimate = math.ceil(size * ratio)
  else
    estimate = tonumber(redis.call('HGET', tokn, 'avg') or '') or tok_n
  end
  if estimate > tok_n then estimate = tok_n end
  return estimate
end
local waiting = KEYS[rules * 5 + 1]
local wait, reason, which = 0, '', 0

local function later(ms, why, i)
  if ms > wait then wait, reason, which = ms, why, i end
end

for i = 1, rules do
  local k = (i - 1) * 5
  local a = 6 + (i - 1) * 5
  local req, tok, tokn, conc, pause = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4], KEYS[k + 5]
  local req_n, req_ms = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]) + margin
  local tok_n, tok_ms = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]) + margin
  local conc_n = tonumber(ARGV[a + 5])
  local paused = redis.call('PTTL', pause)
  if paused > 0 then later(paused, 'paused', i) end
  if req_n > 0 then
    redis.call('ZREMRANGEBYSCORE', req, '-inf', now - req_ms)
    local used = redis.call('ZCARD', req)
    if used >= req_n then
      -- The slot frees when the (used - n + 1)-th oldest request leaves the window.
      local at = redis.call('ZRANGE', req, used - req_n, used - req_n, 'WITHSCORES')
      later(tonumber(at[2]) + req_ms - now + 1, 'requests', i)
    end
  end
  if tok_n > 0 then
    local gone = redis.call('ZRANGEBYSCORE', tok, '-inf', now - tok_ms)
    if #gone > 0 then
      redis.call('ZREMRANGEBYSCORE', tok, '-inf', now - tok_ms)
      redis.call('HDEL', tokn, unpack(gone))
    end
    -- Amounts are settled token counts, or "~N" for a call still running on an estimate.
    local members = redis.call('ZRANGE', tok, 0, -1, 'WITHSCORES')
    local amounts = {}
    local used, unsettled = 0, false
    for j = 1, #members, 2 do
      local raw = redis.call('HGET', tokn, members[j]) or '0'
      if string.sub(raw, 1, 1) == '~' then
        unsettled = true
        raw = string.sub(raw, 2)
      end
      local amount = tonumber(raw) or 0
      amounts[#amounts + 1] = {amount, tonumber(members[j + 1])}
      used = used + amount
    end
    local estimate = estimate_of(tokn, tok_n)
    if used > 0 and used + estimate > tok_n then
      -- Wait until enough of the oldest calls leave the window for this one's estimate.
      local at = now
      for j = 1, #amounts do
        used = used - amounts[j][1]
        at = amounts[j][2]
        if used + estimate <= tok_n or used <= 0 then break end
      end
      local ms = at + tok_ms - now + 1
      -- A running call may settle below its estimate long before then.
      if unsettled and ms > poll then ms = poll end
      later(ms, 'tokens', i)
    end
  end
  if conc_n > 0 then
    redis.call('ZREMRANGEBYSCORE', conc, '-inf', now)
    if redis.call('ZCARD', conc) >= conc_n then later(poll, 'concurrency', i) end
  end
end

redis.call('ZREMRANGEBYSCORE', waiting, '-inf', now)
if wait > 0 then
  redis.call('ZADD', waiting, now + lease, id)
  redis.call('PEXPIRE', waiting, lease)
  return {wait, reason, which}
end
redis.call('ZREM', waiting, id)

for i = 1, rules do
  local k = (i - 1) * 5
  local a = 6 + (i - 1) * 5
  local req, tok, tokn, conc = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]
  local req_ms, tok_ms = tonumber(ARGV[a + 2]) + margin, tonumber(ARGV[a + 4]) + margin
  if tonumber(ARGV[a + 1]) > 0 then
    redis.call('ZADD', req, now, id)
    redis.call('PEXPIRE', req, req_ms)
  end
  if tonumber(ARGV[a + 3]) > 0 then
    local estimate = estimate_of(tokn, tonumber(ARGV[a + 3]))
    redis.call('ZADD', tok, now, id)
    redis.call('HSET', tokn, id, '~' .. estimate)
    redis.call('PEXPIRE', tok, tok_ms)
    -- The averages outlive the window so the next burst starts with a fair estimate.
    redis.call('PEXPIRE', tokn, tok_ms * 10)
  end
  if tonumber(ARGV[a + 5]) > 0 then
    redis.call('ZADD', conc, now + lease, id)
    redis.call('PEXPIRE', conc, lease)
  end
end
return {0}
