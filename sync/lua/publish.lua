-- Append one publication to a stream, atomically with its offset and its dedupe version.
--
-- KEYS[1]  the stream            {prefix}{name}:stream  (one hash tag: the three keys share a slot)
-- KEYS[2]  its meta hash         {prefix}{name}:meta    fields: epoch, offset, id (of the newest entry)
-- KEYS[3]  its dedupe hash       {prefix}{name}:dedupe  field per dedupe key: the last version appended
-- ARGV[1]  the payload
-- ARGV[2]  an epoch to start if the stream has none (a random token drawn by the client)
-- ARGV[3]  max length (approximate trimming; the client enforces the exact bound by offset)
-- ARGV[4]  max age in milliseconds, 0 for none (approximate trimming, by entry id = time)
-- ARGV[5]  dedupe key, '' for none
-- ARGV[6]  dedupe version: a decimal integer
--
-- Returns {epoch, offset}, or nil if the dedupe version was not greater than the last one appended.

local stream, meta, dedupe = KEYS[1], KEYS[2], KEYS[3]

-- Versions are compared as decimal strings: Lua numbers are doubles, exact only up to 2^53.
local function greater(a, b)
    if #a ~= #b then
        return #a > #b
    end
    return a > b
end

local key = ARGV[5]
if key ~= '' then
    local version = ARGV[6]
    if string.sub(version, 1, 1) == '-' or version == '0' then
        return nil
    end
    local last = redis.call('HGET', dedupe, key)
    if last and not greater(version, last) then
        return nil
    end
    redis.call('HSET', dedupe, key, version)
end

redis.call('HSETNX', meta, 'epoch', ARGV[2])
local epoch = redis.call('HGET', meta, 'epoch')
local offset = redis.call('HINCRBY', meta, 'offset', 1)
local id = redis.call(
    'XADD', stream, 'MAXLEN', '~', ARGV[3], '*',
    'o', string.format('%d', offset), 'e', epoch, 'd', ARGV[1]
)
redis.call('HSET', meta, 'id', id)

local max_age_ms = tonumber(ARGV[4])
if max_age_ms > 0 then
    local now = redis.call('TIME')
    local min_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - max_age_ms
    if min_ms > 0 then
        redis.call('XTRIM', stream, 'MINID', '~', string.format('%d', min_ms))
    end
end

return {epoch, offset}
