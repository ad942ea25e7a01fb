"""Parley client SDK: protocol crypto, API and WebSocket client, CLI."""
