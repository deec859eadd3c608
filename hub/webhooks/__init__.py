"""Webhooks: partners' endpoints hear the hub's events, signed (Standard Webhooks), at least once, in order
per key, retried with backoff, with dead letters, replays and a delivery log (docs/api.md, "Webhooks").

    sources.py   which event types exist, the streams that carry them, matching and the messages' bodies
    signing.py   the Standard Webhooks signature
    targets.py   where a webhook may be sent (SSRF checks, at creation and at every connection)
    delivery.py  one attempt over HTTP, and the retry schedule
    worker.py    the node's leases and, per leased endpoint, taking events in and delivering them

The REST API is hub/routes/webhooks.py; the records and the store's guarantees storage/webhooks.py.
"""
