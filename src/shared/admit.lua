-- One admission, all or nothing, on the store's clock (TIME).
-- KEYS: 1 epoch, 2 cool-down, 3 pacing slot, 4 jti, then the rate keys,
--       then the quota keys.
-- ARGV: 1 the epoch this replica knows, 2 upstream pace per second (0: none),
--       3 the jti is held until (unix ms; 0: not single-use), 4 request id,
--       5 rate keys, 6 quota keys, then each rate's per-minute, then each quota.
-- Reply: {'ok', wait ms, day} | {'epoch'} | {'cool', ms, 1 if 503} |
--        {'replayed'} | {'rate', i, ms} | {'quota', i, ms} | {'pace', ms}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return {'epoch'}
end
local cool = redis.call('GET', KEYS[2])
if cool then
  local untl, unavailable = string.match(cool, '^(%d+):(%d)$')
  untl = tonumber(untl)
  if untl and untl > now then
    return {'cool', untl - now, tonumber(unavailable)}
  end
end
local jti_until = tonumber(ARGV[3])
if jti_until > 0 and redis.call('EXISTS', KEYS[4]) == 1 then
  return {'replayed'}
end
local n_rate, n_quota = tonumber(ARGV[5]), tonumber(ARGV[6])
-- GCRA: the key holds the theoretical arrival time; a burst of per-minute.
local tats = {}
for i = 1, n_rate do
  local interval = 60000 / tonumber(ARGV[6 + i])
  local tat = tonumber(redis.call('GET', KEYS[4 + i]) or '0') or 0
  if tat < now then tat = now end
  tats[i] = tat + interval
  if tats[i] - now > 60000 then
    return {'rate', i, math.ceil(tats[i] - now - 60000)}
  end
end
-- Daily quota: '<utc day>:<used>', expiring an hour after its day.
local day = math.floor(now / 86400000)
local used = {}
for i = 1, n_quota do
  local v = redis.call('GET', KEYS[4 + n_rate + i])
  local n = 0
  if v then
    local d, c = string.match(v, '^(%d+):(%d+)$')
    if tonumber(d) == day then n = tonumber(c) end
  end
  if n >= tonumber(ARGV[6 + n_rate + i]) then
    return {'quota', i, (day + 1) * 86400000 - now}
  end
  used[i] = n
end
-- Pacing: the next free slot towards Batch, taken only within 1 s.
local per_s = tonumber(ARGV[2])
local wait, slot = 0, 0
if per_s > 0 then
  slot = tonumber(redis.call('GET', KEYS[3]) or '0') or 0
  if slot < now then slot = now end
  wait = slot - now
  if wait > 1000 then
    return {'pace', math.ceil(wait - 1000)}
  end
end
-- Every check passed: commit them all.
for i = 1, n_rate do
  redis.call('SET', KEYS[4 + i], string.format('%.3f', tats[i]), 'PX', math.ceil(tats[i] - now) + 1)
end
for i = 1, n_quota do
  redis.call('SET', KEYS[4 + n_rate + i], string.format('%d:%d', day, used[i] + 1),
    'PXAT', string.format('%d', (day + 1) * 86400000 + 3600000))
end
if per_s > 0 then
  local nxt = slot + 1000 / per_s
  redis.call('SET', KEYS[3], string.format('%.3f', nxt), 'PX', math.ceil(nxt - now) + 1000)
end
if jti_until > 0 then
  if jti_until <= now then jti_until = now + 1000 end
  redis.call('SET', KEYS[4], ARGV[4], 'PXAT', string.format('%d', jti_until))
end
return {'ok', math.ceil(wait), day}
