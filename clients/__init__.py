"""Client SDKs: they speak the wire protocol and use :mod:`crdt`, nothing else of the hub."""
