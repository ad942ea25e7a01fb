"""Public key formats: exact JSON, signatures, strict parsing (the key directory's contract)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from parley.crypto import Device, MalformedBundle, PrekeyBundle, PublicIdentity
from parley.crypto import bundle as bundle_module
from parley.crypto.bundle import KemPrekey, SignedPrekey
from parley.crypto.encoding import b64decode, b64encode
from parley.crypto.errors import InvalidSignature
from parley.crypto.primitives import ed25519_verify

from tests.crypto.drbg import deterministic_random
from tests.crypto.helpers import claimed_bundle, load_vector


def test_bundle_vector_signatures_cover_the_documented_bytes() -> None:
    vec = load_vector("bundle.json")
    signing_key = b64decode(vec["identity"]["json"]["signing_key"])
    checks = [
        (vec["identity"]["json"]["dh_sig"], vec["identity"]["signed_message"]),
        (vec["signed_prekey"]["json"]["sig"], vec["signed_prekey"]["signed_message"]),
        (vec["kem_prekey_one_time"]["json"]["sig"], vec["kem_prekey_one_time"]["signed_message"]),
        (
            vec["kem_prekey_last_resort"]["json"]["sig"],
            vec["kem_prekey_last_resort"]["signed_message"],
        ),
    ]
    for sig, message in checks:
        ed25519_verify(signing_key, b64decode(sig), bytes.fromhex(message))
    assert bytes.fromhex(vec["identity"]["signed_message"]).startswith(b"parley-v1/identity-dh")
    spk_msg = bytes.fromhex(vec["signed_prekey"]["signed_message"])
    assert spk_msg[:23] == b"parley-v1/signed-prekey"
    assert int.from_bytes(spk_msg[23:27], "big") == vec["signed_prekey"]["json"]["id"]
    PrekeyBundle.from_json(vec["claimed_bundle"])


def test_bundle_vector_is_what_the_device_produces() -> None:

    vec = load_vector("bundle.json")
    bob = Device.generate(deterministic_random(bytes.fromhex(vec["device"]["drbg_seed"])))
    assert bob.public_identity() == vec["identity"]["json"]
    assert bob.signed_prekey() == vec["signed_prekey"]["json"]
    assert bob.last_resort_kem_prekey() == vec["kem_prekey_last_resort"]["json"]
    assert bob.generate_one_time_prekeys(1) == [vec["one_time_prekey"]["json"]]
    assert bob.generate_kem_prekeys(1) == [vec["kem_prekey_one_time"]["json"]]


def test_bundle_vector_invalid_entries_are_refused() -> None:
    vec = load_vector("bundle.json")
    signing_key = b64decode(vec["identity"]["json"]["signing_key"])
    with pytest.raises(InvalidSignature):
        KemPrekey.from_json(
            vec["invalid"]["kem_prekey_one_time_claimed_as_last_resort"], signing_key
        )
    with pytest.raises(InvalidSignature):
        SignedPrekey.from_json(vec["invalid"]["signed_prekey_with_other_id"], signing_key)


def test_json_shapes_are_exact() -> None:
    device = Device.generate()
    assert set(device.public_identity()) == {"signing_key", "dh_key", "dh_sig"}
    assert set(device.signed_prekey()) == {"id", "key", "sig"}
    assert set(device.generate_one_time_prekeys(1)[0]) == {"id", "key"}
    kem = device.generate_kem_prekeys(1)[0]
    assert set(kem) == {"id", "key", "sig"}
    assert len(b64decode(kem["key"])) == 1184
    assert set(device.last_resort_kem_prekey()) == {"id", "key", "sig"}
    bundle = claimed_bundle(device)
    parsed = PrekeyBundle.from_json(bundle)
    assert parsed.to_json() == bundle
    for value in (device.public_identity()["dh_key"], kem["sig"]):
        assert "=" not in value and "+" not in value and "/" not in value


def test_batches_of_one_hundred_with_distinct_ids() -> None:
    device = Device.generate()
    otps = device.generate_one_time_prekeys()
    kems = device.generate_kem_prekeys()
    assert len(otps) == 100 and len(kems) == 100
    assert len({p["id"] for p in otps}) == 100
    assert len({p["id"] for p in kems}) == 100
    assert device.one_time_prekey_count == 100 and device.kem_prekey_count == 100
    assert all(0 <= p["id"] <= 2**32 - 1 for p in otps + kems)


def _mutations(bundle: dict[str, Any]) -> list[tuple[str, dict[str, Any], type[Exception]]]:
    out: list[tuple[str, dict[str, Any], type[Exception]]] = []

    def variant(name: str, exc: type[Exception], path: list[str], value: Any) -> None:
        b = copy.deepcopy(bundle)
        target = b
        for key in path[:-1]:
            target = target[key]
        if value is _DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value
        out.append((name, b, exc))

    spk_key = b64decode(bundle["signed_prekey"]["key"])
    other = b64encode(bytes([spk_key[0] ^ 1]) + spk_key[1:])
    variant("spk key swapped", InvalidSignature, ["signed_prekey", "key"], other)
    variant("spk id changed", InvalidSignature, ["signed_prekey", "id"], 12345)
    variant("kem flag flipped", InvalidSignature, ["kem_prekey", "last_resort"], True)
    variant("identity dh swapped", InvalidSignature, ["identity", "dh_key"], other)
    variant(
        "padding", MalformedBundle, ["signed_prekey", "key"], bundle["signed_prekey"]["key"] + "="
    )
    variant("std alphabet", MalformedBundle, ["identity", "dh_sig"], "+" * 86)
    variant("short key", MalformedBundle, ["signed_prekey", "key"], b64encode(bytes(31)))
    variant("id too big", MalformedBundle, ["signed_prekey", "id"], 2**32)
    variant("id negative", MalformedBundle, ["signed_prekey", "id"], -1)
    variant("id bool", MalformedBundle, ["signed_prekey", "id"], True)
    variant("id string", MalformedBundle, ["signed_prekey", "id"], "7")
    variant("missing kem", MalformedBundle, ["kem_prekey"], _DELETE)
    variant("kem flag missing", MalformedBundle, ["kem_prekey", "last_resort"], _DELETE)
    variant("kem flag not bool", MalformedBundle, ["kem_prekey", "last_resort"], 0)
    variant("user id empty", MalformedBundle, ["user_id"], "")
    variant("device id bad", MalformedBundle, ["device_id"], "1")
    variant("identity not object", MalformedBundle, ["identity"], [])
    return out


_DELETE = object()


def test_every_bad_bundle_is_refused_with_its_exception() -> None:
    bundle = claimed_bundle(Device.generate())
    for name, bad, exc in _mutations(bundle):
        with pytest.raises(exc):
            PrekeyBundle.from_json(bad)
        assert name


def test_non_canonical_base64_is_refused() -> None:
    # 32 bytes -> 43 chars; the last char carries 2 unused bits that must be zero.
    text = b64encode(bytes(32))
    assert text.endswith("A")
    with pytest.raises(MalformedBundle):
        b64decode(text[:-1] + "B", length=32)


def test_public_identity_round_trip_and_verify() -> None:
    device = Device.generate()
    identity = PublicIdentity.from_json(device.public_identity())
    assert identity == device.identity
    forged = PublicIdentity(
        identity.signing_key, Device.generate().identity.dh_key, identity.dh_sig
    )
    with pytest.raises(InvalidSignature):
        forged.verify()


# ----------------------------------------------------------------- verified-signature memory


class _CountingVerify:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, signing_key: bytes, signature: bytes, message: bytes) -> None:
        self.calls += 1
        ed25519_verify(signing_key, signature, message)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Iterator[_CountingVerify]:
    counter = _CountingVerify()
    monkeypatch.setattr(bundle_module, "ed25519_verify", counter)
    bundle_module.forget_verified_signatures()
    yield counter
    bundle_module.forget_verified_signatures()


def test_known_contact_signatures_are_verified_once(counted: _CountingVerify) -> None:
    bob = Device.generate()
    PrekeyBundle.from_json(claimed_bundle(bob))
    assert counted.calls == 3  # identity, signed prekey, one-time KEM prekey
    PrekeyBundle.from_json(claimed_bundle(bob))
    assert counted.calls == 4  # only the new one-time KEM prekey
    PrekeyBundle.from_json(claimed_bundle(bob, kem_one_time=False))
    PrekeyBundle.from_json(claimed_bundle(bob, kem_one_time=False))
    assert counted.calls == 5  # the last-resort KEM prekey's signature, once


def test_a_rooms_thousand_bundles_are_remembered_from_claim_to_session(
    counted: _CountingVerify,
) -> None:
    """A private room of 1,000's key distribution: every member device's bundle is
    verified when it is claimed and again when its session starts, the others' in
    between. The second time, nothing is verified again (with 512 remembered: all
    3,000; with the one-time KEM prekeys' signatures not remembered: those 1,000)."""
    bundles = [PrekeyBundle.from_json(claimed_bundle(Device.generate())) for _ in range(1000)]
    assert counted.calls == 3000
    for bundle in bundles:
        bundle.verify()
    assert counted.calls == 3000


def test_remembered_signatures_never_admit_a_change(counted: _CountingVerify) -> None:
    bob, other = Device.generate(), Device.generate()
    good = PublicIdentity.from_json(bob.public_identity())
    # Every field changed on its own is a new triple: verified, and refused.
    for forged in (
        PublicIdentity(good.signing_key, other.identity.dh_key, good.dh_sig),
        PublicIdentity(good.signing_key, good.dh_key, other.identity.dh_sig),
        PublicIdentity(other.identity.signing_key, good.dh_key, good.dh_sig),
        PublicIdentity(
            good.signing_key, good.dh_key, bytes([good.dh_sig[0] ^ 1]) + good.dh_sig[1:]
        ),
    ):
        for _ in range(2):  # failures are not remembered either
            with pytest.raises(InvalidSignature):
                forged.verify()
    assert counted.calls == 1 + 8
    good.verify()
    assert counted.calls == 9


def test_only_exact_bytes_are_looked_up(counted: _CountingVerify) -> None:
    class Liar(bytes):
        def __eq__(self, other: object) -> bool:
            return True

        def __hash__(self) -> int:
            return bytes.__hash__(self)

    identity = Device.generate().identity
    identity.verify()
    message = bundle_module.LABEL_IDENTITY_DH + identity.dh_key
    calls = counted.calls
    bundle_module.verify_remembered(identity.signing_key, identity.dh_sig, message)
    assert counted.calls == calls  # remembered
    bundle_module.verify_remembered(identity.signing_key, Liar(identity.dh_sig), message)
    assert counted.calls == calls + 1  # a bytes subclass is verified, not looked up
    with pytest.raises(InvalidSignature):
        bundle_module.verify_remembered(identity.signing_key, Liar(bytes(64)), message)


def test_memory_is_bounded_least_recently_used_first(
    counted: _CountingVerify, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bundle_module, "VERIFIED_CACHE_SIZE", 2)
    a, b, c = (Device.generate().identity for _ in range(3))
    a.verify()
    b.verify()
    a.verify()  # a is now the most recently used
    c.verify()  # evicts b
    assert len(bundle_module._verified) == 2
    calls = counted.calls
    a.verify()
    c.verify()
    assert counted.calls == calls
    b.verify()
    assert counted.calls == calls + 1
