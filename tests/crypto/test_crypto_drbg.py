"""The test DRBG of the vectors (tests/crypto/drbg.py), against its documented definition."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from tests.crypto.drbg import deterministic_random


def test_deterministic_random_matches_its_documented_definition() -> None:
    rng = deterministic_random(b"seed")
    first = rng(20) + rng(40) + rng(4)
    blocks = b"".join(
        hmac.digest(b"seed", b"parley-test-drbg" + i.to_bytes(8, "big"), hashlib.sha256)
        for i in range(2)
    )
    assert first == blocks[:64]
    assert deterministic_random(b"seed")(64) == first
    with pytest.raises(TypeError):
        deterministic_random("seed")  # type: ignore[arg-type]
