"""The Redis Lua scripts of the hub (hub.ratelimit.limiter_redis), shipped as package data."""
