"""HTTP routes of the gateway (the WebSocket endpoint lives at /ws)."""

from services.common.openapi import Api

api = Api("Parley gateway", "0.1.0", "WebSocket gateway; see docs/protocol.md for the socket.")
