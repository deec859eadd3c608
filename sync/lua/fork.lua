-- Start a new epoch for a stream whose history diverged: a failover lost publications a node had seen,
-- and their offsets were used again for others. Positions of the old epoch then expire (clients
-- resync) instead of silently pointing into two different histories.
--
-- KEYS[1]  the stream's meta hash  {prefix}{name}:meta
-- ARGV[1]  the epoch that diverged
-- ARGV[2]  a new epoch (a random token drawn by the client)
--
-- Returns the stream's epoch afterwards: the new one, or the one another node forked to first.

if redis.call('HGET', KEYS[1], 'epoch') == ARGV[1] then
    redis.call('HSET', KEYS[1], 'epoch', ARGV[2])
end
return redis.call('HGET', KEYS[1], 'epoch')
