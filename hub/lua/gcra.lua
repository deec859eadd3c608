-- One request of one key under a GCRA policy (hub/ratelimit/limiter.py has the arithmetic and its
-- guarantees), on Redis's clock, so that every node shares one limit.
--
-- KEYS[1]  the key's TAT: {prefix}{rl:<class>:<scope>:<id>} — one key, so one hash slot on a Cluster
-- ARGV[1]  the emission interval in microseconds (period / rate), a decimal integer
-- ARGV[2]  the burst
--
-- Returns {allowed (1 or 0), remaining, reset_after_us, retry_after_us}. An allowed request stores
-- the new TAT, expiring when the bucket is full again (a key idle that long is as good as absent);
-- a refused one writes nothing.
--
-- Times are microseconds since the epoch (~1.8e15): Lua numbers are doubles, exact to 2^53, and are
-- written with %d, since Lua's own number-to-string would round them to 14 digits.

local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])

local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then
    tat = now
end
local new_tat = tat + interval
local allow_at = new_tat - burst * interval
if now < allow_at then
    return {0, 0, tat - now, allow_at - now}
end

local ttl_ms = math.ceil((new_tat - now) / 1000)
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', ttl_ms)
return {1, math.floor((now - allow_at) / interval), new_tat - now, 0}
