"""Real-time transports: WebSocket, SSE and long-poll. All three serve the same events with the same
positions; docs/protocol.md is their wire contract."""
