"""The contract as JSON Schema (draft 2020-12), for clients in other languages.

    python -m parley_contract.schema > contract/schema/parley.schema.json

The file is generated and committed; ``tests/contract/test_schema.py`` fails
when it is stale. The browser client types its frames from it.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import msgspec
from parley_contract import PROTOCOL_VERSION
from parley_contract import envelopes as e
from parley_contract import frames as f

ROOTS: dict[str, Any] = {
    "ClientFrame": f.ClientFrames,
    "ServerFrame": f.ServerFrames,
    "InboxPage": f.InboxPage,
    "RoomLogPage": f.RoomLogPage,
    "Envelope": e.Envelope,
    "RoomEnvelope": e.RoomEnvelope,
    "Event": e.Event,
    "RoomEvent": e.RoomEvent,
    "Routed": e.Routed,
    "Revocation": e.Revocation,
}


def document() -> dict[str, Any]:
    roots, components = msgspec.json.schema_components(
        list(ROOTS.values()), ref_template="#/$defs/{name}"
    )
    defs = dict(sorted(components.items()))
    for name, schema in zip(ROOTS, roots, strict=True):
        defs[name] = schema
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://parley.invalid/schema/parley.schema.json",
        "title": f"Parley wire contract, protocol version {PROTOCOL_VERSION}",
        "description": (
            "Generated from contract/parley_contract by `python -m parley_contract.schema`. "
            "ClientFrame/ServerFrame: WebSocket frames (docs/protocol.md); Envelope, Event, "
            "RoomEvent: Kafka records; Routed, Revocation: Redis messages; InboxPage, "
            "RoomLogPage: delivery's HTTP pages."
        ),
        "$defs": defs,
    }


def render() -> str:
    return json.dumps(document(), indent=2, sort_keys=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
