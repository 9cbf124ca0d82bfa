-- Batch said 429 or 503: the project cools down on every replica, extended,
-- never shortened.
-- KEYS: 1 cool-down. ARGV: 1 length (ms), 2 1 when Batch said 503.
-- Reply: the cool-down left (ms).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local untl = now + tonumber(ARGV[1])
local cur = redis.call('GET', KEYS[1])
if cur then
  local u = tonumber(string.match(cur, '^(%d+):'))
  if u and u >= untl then
    return u - now
  end
end
redis.call('SET', KEYS[1], string.format('%d:%s', untl, ARGV[2]), 'PXAT', string.format('%d', untl))
return untl - now
