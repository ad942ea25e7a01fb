"""The WebSocket gateway pods (stateless)."""
