-- Read a stream's meta hash, and Redis' clock, on the node that holds the stream (one slot).
--
-- KEYS[1]  its meta hash         {prefix}{name}:meta    fields: epoch, offset, id (of the newest entry)
-- ARGV[1]  an epoch to start if the stream has none, '' to start none
--
-- Returns {epoch or nil, offset or nil, id or nil, seconds, microseconds}.

if ARGV[1] ~= '' then
    redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1])
end
local fields = redis.call('HMGET', KEYS[1], 'epoch', 'offset', 'id')
local now = redis.call('TIME')
return {fields[1], fields[2], fields[3], now[1], now[2]}
