"""Parley's wire contract: every WebSocket frame, Kafka envelope, inbox item and
event, as one typed model each (msgspec ``Struct``), shared by the services and
the ``parley`` client. No crypto and no I/O here: only shapes, limits, and the
functions that turn bytes into models and back.

Modules:

- :mod:`parley_contract.errors`: the stable error codes (``ErrorCode``).
- :mod:`parley_contract.frames`: WebSocket frames, client → server and
  server → client, each a union discriminated by ``op``.
- :mod:`parley_contract.envelopes`: what travels on Kafka (``parley.messages``
  envelopes and ``parley.events`` records), what the gateways route over
  Redis, and the revocations broadcast on Redis.
- :mod:`parley_contract.schema`: the JSON Schema export for the browser client.

The schema of every model is exported to ``contract/schema/`` (generated;
``tests/contract`` fails when it is stale).
"""

from parley_contract.errors import ErrorCode

PROTOCOL_VERSION = 3

__all__ = ["PROTOCOL_VERSION", "ErrorCode"]
