-- The store's epoch ('<created, unix ms>:<id>', created when missing: a
-- store that lost its data has none), the epoch this replica last
-- re-seeded, and the store's clock.
-- KEYS: 1 epoch, 2 this replica's seeded marker. ARGV: 1 a fresh id.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SET', KEYS[1], string.format('%d:%s', now, ARGV[1]), 'NX')
return {redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2]) or '', now}
