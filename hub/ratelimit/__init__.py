"""Rate limits and connection caps (issue 15's "Limits"); docs/api.md has the client's view.

limiter.py          the RateLimiter seam: policies, decisions, the GCRA arithmetic
limiter_memory.py   in this process (the default)
limiter_redis.py    shared by every node through one Lua script (hub/lua/gcra.lua), Redis's clock
classes.py          which route is which class: read, write, reservation, review_post, sync_push
http.py             a limited route's check and answers (429 rate_limited, RateLimit and RateLimit-Policy);
                    hub/access.py's middleware runs it, before the route's authorization
connections.py      real-time connections per user and per IP on this node
"""
