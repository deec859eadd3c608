"""Durable state: the catalog, stock, reservations and the outbox.

`storage` knows nothing of `hub`: the HTTP layer depends on it, never the reverse.
Pick an implementation with :func:`storage.factory.open_store`.
"""
