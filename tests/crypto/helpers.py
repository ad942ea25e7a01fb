"""Shared helpers for the crypto tests (imported as tests.crypto.helpers)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from parley.crypto import Binding, Device, Session

VECTORS = Path(__file__).resolve().parents[2] / "client" / "vectors"


IDS = Binding("alice", 1, "bob", 1)
"""The account and device ids both sides of a test handshake bind (the tests that are
not about them use these)."""


def load_vector(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text())
    assert data.get("provenance"), f"{name} has no provenance"
    return data


def claimed_bundle(
    device: Device,
    *,
    one_time: bool = True,
    kem_one_time: bool = True,
    user_id: str = "bob",
    device_id: int = 1,
) -> dict[str, Any]:
    """What the key directory would hand out for ``device`` (claims fresh prekeys)."""
    otp = device.generate_one_time_prekeys(1)[0] if one_time else None
    if kem_one_time:
        kem = dict(device.generate_kem_prekeys(1)[0], last_resort=False)
    else:
        kem = dict(device.last_resort_kem_prekey(), last_resort=True)
    return {
        "user_id": user_id,
        "device_id": device_id,
        "identity": device.public_identity(),
        "signed_prekey": device.signed_prekey(),
        "one_time_prekey": otp,
        "kem_prekey": kem,
    }


def session_pair(
    plaintext: bytes = b"hello", *, established: bool = True
) -> tuple[Session, Session]:
    """A fresh Alice->Bob session pair; ``established`` means Alice got a reply."""
    alice, bob = Device.generate(), Device.generate()
    a, first = Session.initiate(alice, claimed_bundle(bob), plaintext, binding=IDS)
    b, received = Session.respond(bob, first, binding=IDS)
    assert received == plaintext
    if established:
        assert a.decrypt(b.encrypt(b"ack")) == b"ack"
    return a, b
