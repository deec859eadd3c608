"""Pure CRDT data types for offline carts and reviews: no I/O, usable by the hub and client SDKs."""
