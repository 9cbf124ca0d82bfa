-- Re-publishes, from one replica's audit trail, what a store that came back
-- empty forgot: spent jtis and today's counts. Applied only while the epoch
-- is the one being seeded; the last chunk sets the replica's marker.
-- KEYS: 1 epoch, 2 seeded marker, then the jti keys, then the quota keys.
-- ARGV: 1 epoch, 2 jti keys, 3 1 on the last chunk, 4 the day the counts
--       are for, then each jti's request id and until (ms), then each count.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local day = math.floor(now / 86400000)
local n_jti = tonumber(ARGV[2])
for i = 1, n_jti do
  local untl = tonumber(ARGV[4 + 2 * i])
  if untl > now then
    redis.call('SET', KEYS[2 + i], ARGV[3 + 2 * i], 'NX', 'PXAT', string.format('%d', untl))
  end
end
if tonumber(ARGV[4]) == day then
  for i = 2 + n_jti + 1, #KEYS do
    local add = tonumber(ARGV[4 + 2 * n_jti + (i - 2 - n_jti)])
    local v = redis.call('GET', KEYS[i])
    local n = 0
    if v then
      local d, c = string.match(v, '^(%d+):(%d+)$')
      if tonumber(d) == day then n = tonumber(c) end
    end
    redis.call('SET', KEYS[i], string.format('%d:%d', day, n + add),
      'PXAT', string.format('%d', (day + 1) * 86400000 + 3600000))
  end
end
if ARGV[3] == '1' then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', 2592000000)
end
return 1
