"""The Redis Lua scripts of sync.broker_redis, shipped as package data."""
