"""Format and signature checks, without any server."""

from __future__ import annotations

import pytest

from services.common.errors import ApiError, ErrorCode
from services.keys import models, verify
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
