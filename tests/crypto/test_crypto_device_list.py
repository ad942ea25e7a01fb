"""The account identity key and the signed device list: vector, strict parsing, checks."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from parley.crypto import (
    AccountKey,
    CounterExhausted,
    Device,
    DeviceEntry,
    DeviceList,
    DeviceMismatch,
    InvalidKeyLength,
    InvalidSignature,
    MalformedDeviceList,
    PrekeyBundle,
    PublicIdentity,
    SignedDeviceList,
    UnlistedDevice,
    safety_number,
)
from parley.crypto import errors as crypto_errors
from parley.crypto.device_list import LABEL_DEVICE_LIST, VERSION_MAX, canonical_json
from parley.crypto.encoding import b64encode

from tests.crypto.drbg import deterministic_random
from tests.crypto.helpers import claimed_bundle, load_vector

VECTOR = load_vector("device_list.json")


def _identity(seed_hex: str) -> PublicIdentity:
    return Device.generate(deterministic_random(bytes.fromhex(seed_hex))).identity


def _account() -> AccountKey:
    return AccountKey.generate(deterministic_random(bytes.fromhex(VECTOR["account_drbg_seed"])))


def _entry(device_id: int, name: str = "device") -> DeviceEntry:
    return DeviceEntry(device_id, name, bytes([device_id % 256]) * 32, bytes([7]) * 32)


# --------------------------------------------------------------------------- the vector


def test_vector_is_what_the_library_produces_byte_for_byte() -> None:
    account = _account()
    assert account.seed().hex() == VECTOR["account_seed"]
    assert account.public.hex() == VECTOR["account_public"]
    seeds = VECTOR["device_drbg_seeds"]
    for device_id, identity in VECTOR["identities"].items():
        assert _identity(seeds[device_id]).to_json() == identity
    listed = VECTOR["device_list"]
    entries = [DeviceEntry.from_json(d) for d in reversed(listed["devices"])]
    device_list = DeviceList("alice", 1, entries)  # given out of order, kept sorted
    assert device_list.to_json() == listed
    assert device_list.canonical_json() == VECTOR["canonical_json"].encode("utf-8")
    assert device_list.signed_bytes() == bytes.fromhex(VECTOR["signed_bytes"])
    assert device_list.signed_bytes().startswith(LABEL_DEVICE_LIST)
    assert canonical_json(listed) == VECTOR["canonical_json"].encode("utf-8")
    signed = account.sign(device_list)
    assert signed.signature.hex() == VECTOR["signature"]  # Ed25519 is deterministic
    assert device_list.sign(account) == signed
    request = VECTOR["request"]
    assert request == {"account_key": b64encode(account.public), **signed.to_json()}
    assert SignedDeviceList.from_json(request).verify(account.public, user_id="alice") == (
        device_list
    )


def test_canonical_json_pins_the_encoding() -> None:
    text = VECTOR["canonical_json"]
    # No whitespace, sorted keys, UTF-8 (not \\u escapes), ids in numeric order.
    assert ": " not in text and ", " not in text
    assert text.startswith('{"devices":[{"device_id":3,"dh_key":')
    assert text.endswith('"user_id":"alice","version":1}')
    assert 'Téléphone \\"pro\\" 📱' in text
    assert json.loads(text) == VECTOR["device_list"]
    assert "📱".encode() in bytes.fromhex(VECTOR["signed_bytes"])


@pytest.mark.parametrize("case", VECTOR["invalid"], ids=lambda c: c["name"])
def test_vector_invalid_cases_are_refused(case: dict[str, Any]) -> None:
    error = getattr(crypto_errors, case["error"])
    account_public = bytes.fromhex(VECTOR["account_public"])
    body = {
        "device_list": case["device_list"],
        "signature": b64encode(bytes.fromhex(case["signature"])),
    }
    with pytest.raises(error):
        SignedDeviceList.from_json(body).verify(account_public)


def test_another_account_key_does_not_verify() -> None:
    signed = SignedDeviceList.from_json(VECTOR["request"])
    other = AccountKey.generate(deterministic_random(b"another"))
    with pytest.raises(InvalidSignature):
        signed.verify(other.public)


def test_a_list_of_another_user_is_refused_when_the_user_is_given() -> None:
    signed = SignedDeviceList.from_json(VECTOR["request"])
    with pytest.raises(DeviceMismatch):
        signed.verify(bytes.fromhex(VECTOR["account_public"]), user_id="bob")


def test_every_flipped_signature_bit_is_refused() -> None:
    signed = SignedDeviceList.from_json(VECTOR["request"])
    public = bytes.fromhex(VECTOR["account_public"])
    for bit in range(0, 512, 7):
        sig = bytearray(signed.signature)
        sig[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(InvalidSignature):
            SignedDeviceList(signed.device_list, bytes(sig)).verify(public)


def test_a_list_read_again_is_not_verified_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A contact's list is checked when read and again with each claim of its bundles
    (a private room of 1,000's first message: both for every member): the second check
    of the same signed bytes is remembered; another signature is verified (and refused)
    every time."""
    from parley.crypto import bundle as bundle_module
    from parley.crypto.primitives import ed25519_verify

    calls: list[bytes] = []

    def counting(key: bytes, signature: bytes, message: bytes) -> None:
        calls.append(signature)
        ed25519_verify(key, signature, message)

    monkeypatch.setattr(bundle_module, "ed25519_verify", counting)
    bundle_module.forget_verified_signatures()
    signed = SignedDeviceList.from_json(VECTOR["request"])
    public = bytes.fromhex(VECTOR["account_public"])
    for _ in range(3):
        signed.verify(public)
    assert len(calls) == 1
    forged = SignedDeviceList(
        signed.device_list, bytes([signed.signature[0] ^ 1]) + signed.signature[1:]
    )
    for _ in range(2):
        with pytest.raises(InvalidSignature):
            forged.verify(public)
    assert len(calls) == 3
    with pytest.raises(DeviceMismatch):  # remembered, and still checked for its user
        signed.verify(public, user_id="bob")
    assert len(calls) == 3
    bundle_module.forget_verified_signatures()


# --------------------------------------------------------------------------- the account key


def test_account_key_round_trips_its_seed_and_hides_it() -> None:
    account = AccountKey.generate()
    again = AccountKey.from_seed(account.seed())
    assert again.public == account.public and len(account.public) == 32
    assert account.seed().hex() not in repr(account)
    with pytest.raises(InvalidKeyLength):
        AccountKey.from_seed(bytes(31))
    with pytest.raises(TypeError):
        account.sign(b"anything")  # type: ignore[arg-type]


def test_safety_number_over_account_keys_ignores_devices() -> None:
    """The safety number is computed over the two ACCOUNT keys: adding a device
    (a new list version) changes nothing a contact compares."""
    alice, bob = _account(), AccountKey.generate(deterministic_random(b"bob"))
    before = safety_number(alice.public, "alice", bob.public, "bob")
    assert before == safety_number(bob.public, "bob", alice.public, "alice")
    signed = SignedDeviceList.from_json(VECTOR["request"])
    bigger = signed.device_list.with_device(_entry(99))
    alice.sign(bigger).verify(alice.public)
    assert safety_number(alice.public, "alice", bob.public, "bob") == before


# --------------------------------------------------------------------------- structure


def test_constructor_sorts_and_refuses_repeated_ids() -> None:
    listed = DeviceList("u", 1, [_entry(5), _entry(2), _entry(9)])
    assert listed.device_ids == [2, 5, 9]
    with pytest.raises(MalformedDeviceList):
        DeviceList("u", 1, [_entry(5), _entry(2), _entry(5, "again")])
    assert DeviceList("u", 1, []).to_json() == {"user_id": "u", "version": 1, "devices": []}


@pytest.mark.parametrize(
    "name",
    ["", "x" * 65, "tab\there", "nl\n", "del\x7f", "c1\x85", "lone \ud800 surrogate"],
)
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(MalformedDeviceList):
        _entry(1, name)


def test_names_count_code_points() -> None:
    assert _entry(1, "📱" * 64).name == "📱" * 64
    assert _entry(1, 'quote " and \\ backslash').name
    with pytest.raises(MalformedDeviceList):
        _entry(1, "📱" * 65)


@pytest.mark.parametrize("device_id", [0, -1, 2**31, True, "1", 1.0])
def test_bad_device_ids_are_refused(device_id: Any) -> None:
    with pytest.raises(MalformedDeviceList):
        DeviceEntry(device_id, "x", bytes(32), bytes(32))


@pytest.mark.parametrize(
    ("user_id", "version"), [("", 1), ("u" * 65, 1), ("u", 0), ("u", 2**31), ("u", True)]
)
def test_bad_user_ids_and_versions_are_refused(user_id: str, version: Any) -> None:
    with pytest.raises(MalformedDeviceList):
        DeviceList(user_id, version, [])


def test_bad_key_lengths_are_refused() -> None:
    with pytest.raises(MalformedDeviceList):
        DeviceEntry(1, "x", bytes(31), bytes(32))
    with pytest.raises(MalformedDeviceList):
        DeviceEntry(1, "x", bytes(32), bytes(33))


def _mutations() -> list[tuple[str, Any]]:
    base = VECTOR["device_list"]
    dev = base["devices"][0]
    sig = dev["signing_key"]
    cases: list[tuple[str, Any]] = [
        ("not an object", []),
        ("missing version", {k: v for k, v in base.items() if k != "version"}),
        ("missing devices", {k: v for k, v in base.items() if k != "devices"}),
        ("devices not a list", dict(base, devices={"3": dev})),
        ("version as text", dict(base, version="1")),
        ("version as float", dict(base, version=1.0)),
        ("user id not text", dict(base, user_id=7)),
        ("unknown member", dict(base, extra=1)),
        ("entry missing name", dict(base, devices=[{k: v for k, v in dev.items() if k != "name"}])),
        ("entry unknown member", dict(base, devices=[dict(dev, identity={})])),
        ("entry not an object", dict(base, devices=["3"])),
        ("padded key", dict(base, devices=[dict(dev, signing_key=sig + "=")])),
        ("standard alphabet", dict(base, devices=[dict(dev, signing_key="+" + sig[1:])])),
        ("short key", dict(base, devices=[dict(dev, dh_key=sig[:-2])])),
        ("non-canonical base64", dict(base, devices=[dict(dev, signing_key=sig[:-1] + "R")])),
        ("reordered", dict(base, devices=base["devices"][::-1])),
        ("repeated", dict(base, devices=[dev, dev])),
    ]
    return cases


@pytest.mark.parametrize(("name", "value"), _mutations(), ids=[n for n, _ in _mutations()])
def test_from_json_is_strict(name: str, value: Any) -> None:
    with pytest.raises(MalformedDeviceList):
        DeviceList.from_json(value)


def test_signed_list_json_needs_both_members() -> None:
    request = VECTOR["request"]
    for missing in ("device_list", "signature"):
        with pytest.raises(MalformedDeviceList):
            SignedDeviceList.from_json({k: v for k, v in request.items() if k != missing})
    with pytest.raises(MalformedDeviceList):
        SignedDeviceList.from_json(dict(request, signature=request["signature"][:-4]))
    with pytest.raises(MalformedDeviceList):
        SignedDeviceList.from_json("nope")
    # The directory's extra members (account_key, devices, user_id) are ignored.
    extra = dict(request, devices=[{"device_id": 3, "name": "laptop"}], user_id="alice")
    assert SignedDeviceList.from_json(extra) == SignedDeviceList.from_json(request)


# --------------------------------------------------------------------------- checks


def test_lookups_and_identity_checks() -> None:
    seeds = VECTOR["device_drbg_seeds"]
    laptop, phone = _identity(seeds["3"]), _identity(seeds["12"])
    listed = DeviceList.from_json(VECTOR["device_list"])
    assert listed.get(3) == DeviceEntry.of(3, "laptop", laptop)
    assert listed.get(4) is None
    assert listed.check_identity(12, phone).device_id == 12
    with pytest.raises(UnlistedDevice):
        listed.entry(4)
    with pytest.raises(UnlistedDevice):
        listed.check_identity(4, laptop)
    with pytest.raises(DeviceMismatch):
        listed.check_identity(3, phone)  # another device's identity
    other_dh = Device.generate().identity
    mixed = PublicIdentity(laptop.signing_key, other_dh.dh_key, other_dh.dh_sig)
    with pytest.raises(DeviceMismatch):
        listed.check_identity(3, mixed)  # right signing key, other DH key


def test_bundles_are_checked_against_the_list() -> None:
    device = Device.generate()
    account = AccountKey.generate()
    listed = account.sign(DeviceList("bob", 1, [DeviceEntry.of(1, "phone", device.identity)]))
    trusted = listed.verify(account.public, user_id="bob")
    bundle = PrekeyBundle.from_json(claimed_bundle(device, user_id="bob", device_id=1))
    assert trusted.check_bundle(bundle).name == "phone"
    with pytest.raises(UnlistedDevice):  # a directory serving an unlisted device
        trusted.check_bundle(PrekeyBundle.from_json(claimed_bundle(device, device_id=2)))
    with pytest.raises(DeviceMismatch):  # ... or another identity under a listed id
        trusted.check_bundle(PrekeyBundle.from_json(claimed_bundle(Device.generate())))
    with pytest.raises(DeviceMismatch):  # ... or another user's device
        trusted.check_bundle(PrekeyBundle.from_json(claimed_bundle(device, user_id="eve")))


def test_next_versions_add_replace_and_remove() -> None:
    listed = DeviceList("u", 4, [_entry(1), _entry(2)])
    added = listed.with_device(_entry(3))
    assert (added.version, added.device_ids) == (5, [1, 2, 3])
    renamed = added.with_device(_entry(2, "renamed"))
    assert (renamed.version, renamed.entry(2).name, renamed.device_ids) == (6, "renamed", [1, 2, 3])
    removed = renamed.without_device(1)
    assert (removed.version, removed.device_ids) == (7, [2, 3])
    with pytest.raises(UnlistedDevice):
        removed.without_device(1)
    with pytest.raises(CounterExhausted):
        DeviceList("u", VERSION_MAX, []).with_device(_entry(1))


names = st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=64)


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(st.integers(1, 2**31 - 1), names, max_size=8),
    st.integers(1, VERSION_MAX),
)
def test_any_list_round_trips_through_json_to_the_same_signed_bytes(
    devices: dict[int, str], version: int
) -> None:
    account = AccountKey.generate(deterministic_random(b"prop"))
    listed = DeviceList(
        "user", version, [DeviceEntry(i, n, bytes(32), bytes([1]) * 32) for i, n in devices.items()]
    )
    wire = json.loads(json.dumps(account.sign(listed).to_json()))
    again = SignedDeviceList.from_json(copy.deepcopy(wire)).verify(account.public)
    assert again == listed
    assert again.canonical_json() == canonical_json(wire["device_list"])
