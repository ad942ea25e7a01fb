"""Format and signature checks, without any server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from services.common.errors import ApiError, ErrorCode
from services.keys import models, verify
from tests.keys.conftest import KeysApi
from tests.keys.keygen import DeviceKeys, b64, keys_digest, mlkem_pub


@pytest.mark.parametrize(
    ("text", "length"),
    [
        ("", 32),
        ("AAAA=", 3),
        ("A", 0),
        ("AA AA", 3),
        ("AB", 1),  # non-canonical: unused bits set
        ("AA+A", 3),
        ("AA/A", 3),
        (b64(b"x" * 31), 32),
        (b64(b"x" * 33), 32),
        ("é" * 4, 3),
    ],
)
def test_b64decode_is_strict(text: str, length: int) -> None:
    with pytest.raises(ApiError) as exc:
        verify.b64decode(text, "f", length)
    assert exc.value.code is ErrorCode.INVALID_KEY
    assert exc.value.details == {"field": "f"}


def test_b64decode_round_trips() -> None:
    for n in (0, 1, 2, 3, 32, 64, 1184):
        data = bytes(range(256)) * 5
        assert verify.b64decode(b64(data[:n]), "f", n) == data[:n]


def test_identity_and_prekeys_verify() -> None:
    dev = DeviceKeys()
    ident = verify.identity(models.Identity.model_validate(dev.identity()))
    assert ident.doc() == dev.identity()
    spk = dev.signed_prekey(2**32 - 1)
    verify.signed_prekey(models.SignedPrekey.model_validate(spk), ident.signing_key)
    lr = models.KemPrekey.model_validate(dev.last_resort(0))
    verify.kem_prekey(lr, ident.signing_key, last_resort=True, field="lr")
    with pytest.raises(ApiError) as exc:
        verify.kem_prekey(lr, ident.signing_key, last_resort=False, field="lr")
    assert exc.value.code is ErrorCode.INVALID_SIGNATURE


def test_small_order_x25519_keys_are_refused() -> None:
    order_8 = bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")
    p = 2**255 - 19
    for raw in (b"\0" * 32, (1).to_bytes(32, "little"), order_8, (p - 1).to_bytes(32, "little")):
        with pytest.raises(ApiError) as exc:
            verify.check_x25519(raw, "k")
        assert exc.value.code is ErrorCode.INVALID_KEY


def test_mlkem_keys_are_checked() -> None:
    verify.check_mlkem768(mlkem_pub(), "k")
    with pytest.raises(ApiError):
        verify.check_mlkem768(b"\xff" * 1184, "k")


def test_duplicate_ids() -> None:
    keys = [verify.VerifiedPrekey(i, b"") for i in (1, 2, 2, 3, 1, 1)]
    assert verify.duplicate_ids(keys) == [1, 2]


def test_keys_digest_matches_the_documented_construction() -> None:
    dev = DeviceKeys()
    ident, spk, lr = dev.identity(), dev.signed_prekey(3), dev.last_resort(4)
    device = {"identity": ident, "signed_prekey": spk, "last_resort": lr}
    assert b64(verify.keys_digest(device) or b"") == keys_digest(ident, spk, lr)
    assert verify.keys_digest({"identity": ident, "signed_prekey": spk}) is None


# Device lists: the server's canonical bytes are the client library's (client/vectors).

VECTOR = json.loads(
    (Path(__file__).resolve().parents[2] / "client/vectors/device_list.json").read_text()
)


def test_device_list_bytes_equal_the_client_vector() -> None:
    request = models.AccountRegistration.model_validate(VECTOR["request"])
    listed = verify.device_list(request.device_list)
    assert listed.canonical == VECTOR["canonical_json"].encode("utf-8")
    assert listed.signed_bytes == bytes.fromhex(VECTOR["signed_bytes"])
    assert listed.device_ids == [3, 12]
    public = verify.account_key(request.account_key)
    assert public.hex() == VECTOR["account_public"]
    verify.list_signature(listed, public, request.signature)
    assert verify.canonical_json(VECTOR["device_list"]) == listed.canonical


@pytest.mark.parametrize("case", VECTOR["invalid"], ids=lambda c: c["name"])
def test_device_list_vector_invalid_cases_are_refused(case: dict[str, Any]) -> None:
    """The client's refusals, as the server words them."""
    public = bytes.fromhex(VECTOR["account_public"])
    signature = b64(bytes.fromhex(case["signature"]))
    expected = {
        "InvalidSignature": ErrorCode.INVALID_SIGNATURE,
        "MalformedDeviceList": ErrorCode.VALIDATION_FAILED,
    }[case["error"]]
    with pytest.raises((ApiError, ValidationError)) as exc:
        body = models.DeviceList.model_validate(case["device_list"])
        verify.list_signature(verify.device_list(body), public, signature)
    if isinstance(exc.value, ApiError):
        assert exc.value.code is expected
    else:
        assert expected is ErrorCode.VALIDATION_FAILED


async def test_the_vector_request_registers_as_is(api: KeysApi) -> None:
    """The client vector's PUT /keys/v1/account body, byte for byte, is accepted."""
    for device_id, identity in VECTOR["identities"].items():
        status, body = await api.put_identity("alice", int(device_id), identity)
        assert status == 200, body
    status, body = await api.put_account("alice", VECTOR["request"])
    assert (status, body) == (200, {"version": 1, "created": True, "changed": False})
    _, listed = await api.devices_of("bob", "alice")
    assert listed["device_list"] == VECTOR["device_list"]
    assert listed["devices"][1]["name"] == 'Téléphone "pro" 📱'
    stored = await api.keys.store.get_account("alice")
    assert stored is not None and stored["device_list"] == VECTOR["canonical_json"]


@pytest.mark.parametrize(
    "text",
    ["", "AAAAAAAAAAA=", "AAAAAAAAAA", "AAAAAAAAAAAA", "+AAAAAAAAAA", "AAAAAAAAAAB"],
)
def test_link_ids_are_strict(text: str) -> None:
    with pytest.raises(ApiError) as exc:
        verify.link_id(text)
    assert exc.value.code is ErrorCode.VALIDATION_FAILED
