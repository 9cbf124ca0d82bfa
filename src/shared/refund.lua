-- An admitted request was not forwarded after all: its quota units go
-- back (on the day they were taken) and its jti is released, but only if
-- this request is the one holding it.
-- KEYS: 1 jti, then the quota keys. ARGV: 1 request id ('' = no jti), 2 day.
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
for i = 2, #KEYS do
  local v = redis.call('GET', KEYS[i])
  if v then
    local d, n = string.match(v, '^(%d+):(%d+)$')
    if d == ARGV[2] and tonumber(n) > 0 then
      redis.call('SET', KEYS[i], string.format('%s:%d', d, tonumber(n) - 1), 'KEEPTTL')
    end
  end
end
return 1
