"""The sync engine: brokers that carry events between nodes, and the outbox relay."""
