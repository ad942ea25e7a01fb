"""Linking a new device: the link code and the sealed provisioning blob."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from parley.crypto import (
    DecryptionFailed,
    InvalidKey,
    InvalidKeyLength,
    LinkRequest,
    MalformedLinkCode,
    MalformedMessage,
    link_code,
    open_on_new_device,
    parse_link_code,
    seal_for_new_device,
)
from parley.crypto import errors as crypto_errors
from parley.crypto.encoding import b64decode, b64encode
from parley.crypto.linking import (
    LINK_CODE_LEN,
    LINK_INFO,
    SEALED_MIN_LEN,
    link_associated_data,
    link_key,
)
from parley.crypto.primitives import Ed25519KeyPair, X25519KeyPair, hkdf_sha256

from tests.crypto.drbg import deterministic_random
from tests.crypto.helpers import load_vector

VECTOR = load_vector("link.json")
# A point of order 8 on Curve25519 (RFC 7748 section 6.1 rules it out via the all-zero output).
LOW_ORDER = bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")


def _vector_request() -> LinkRequest:
    return LinkRequest.generate(deterministic_random(bytes.fromhex(VECTOR["request_drbg_seed"])))


def _new_device() -> Ed25519KeyPair:
    return Ed25519KeyPair.from_seed(bytes.fromhex(VECTOR["new_device_signing_seed"]))


def test_vector_is_what_the_library_produces_byte_for_byte() -> None:
    request = _vector_request()
    assert request.link_id.hex() == VECTOR["link_id"]
    assert request.private_bytes().hex() == VECTOR["e_private"]
    assert request.e_public.hex() == VECTOR["e_public"]
    assert request.code == VECTOR["link_code"] == link_code(request.link_id, request.e_public)
    assert len(request.code) == LINK_CODE_LEN == 54
    assert parse_link_code(VECTOR["link_code"]) == (request.link_id, request.e_public)
    new_device = _new_device()
    assert new_device.public.hex() == VECTOR["new_device_signing_key"]
    payload = bytes.fromhex(VECTOR["payload"])
    sealed = seal_for_new_device(
        request.e_public,
        request.link_id,
        new_device.public,
        payload,
        deterministic_random(bytes.fromhex(VECTOR["seal_drbg_seed"])),
    )
    assert sealed.hex() == VECTOR["sealed"]
    assert b64encode(sealed) == VECTOR["sealed_b64"]
    # The documented construction, step by step.
    f = X25519KeyPair.from_private_bytes(bytes.fromhex(VECTOR["f_private"]))
    assert f.public.hex() == VECTOR["f_public"] == sealed[:32].hex()
    shared = f.dh(request.e_public)
    assert shared.hex() == VECTOR["shared_secret"]
    key = hkdf_sha256(shared, salt=request.link_id, info=b"parley-v1/link", length=32)
    assert key == link_key(shared, request.link_id)
    assert key.hex() == VECTOR["key"] and LINK_INFO.decode() == VECTOR["info"]
    assert sealed[32:44].hex() == VECTOR["nonce"]
    ad = request.link_id + request.e_public + f.public + new_device.public
    assert ad.hex() == VECTOR["associated_data"]
    assert (
        link_associated_data(request.link_id, request.e_public, f.public, new_device.public) == ad
    )
    assert request.open(new_device.public, sealed) == payload
    assert (
        open_on_new_device(
            bytes.fromhex(VECTOR["e_private"]),
            bytes.fromhex(VECTOR["link_id"]),
            new_device.public,
            b64decode(VECTOR["sealed_b64"]),
        )
        == payload
    )


@pytest.mark.parametrize("case", VECTOR["invalid"], ids=lambda c: c["name"])
def test_vector_invalid_cases_are_refused(case: dict[str, Any]) -> None:
    error = getattr(crypto_errors, case["error"])
    with pytest.raises(error):
        open_on_new_device(
            bytes.fromhex(VECTOR["e_private"]),
            bytes.fromhex(case.get("link_id", VECTOR["link_id"])),
            bytes.fromhex(case.get("signing_key", VECTOR["new_device_signing_key"])),
            bytes.fromhex(case["sealed"]),
        )


def _sealed(payload: bytes = b"the account key") -> tuple[LinkRequest, bytes, bytes]:
    request = LinkRequest.generate()
    signing_key = Ed25519KeyPair.generate().public
    sealed = seal_for_new_device(request.e_public, request.link_id, signing_key, payload)
    return request, signing_key, sealed


def test_only_the_holder_of_e_opens_it() -> None:
    request, signing_key, sealed = _sealed()
    other = LinkRequest.from_private(request.link_id, LinkRequest.generate().private_bytes())
    with pytest.raises(DecryptionFailed):
        other.open(signing_key, sealed)
    again = LinkRequest.from_private(request.link_id, request.private_bytes())
    assert again.open(signing_key, sealed) == b"the account key"


def test_every_flipped_bit_is_refused() -> None:
    request, signing_key, sealed = _sealed(b"x" * 40)
    for bit in range(len(sealed) * 8):
        changed = bytearray(sealed)
        changed[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises((DecryptionFailed, MalformedMessage)):
            request.open(signing_key, bytes(changed))


def test_truncated_blobs_are_malformed_or_fail() -> None:
    request, signing_key, sealed = _sealed()
    for n in range(SEALED_MIN_LEN):
        with pytest.raises(MalformedMessage):
            request.open(signing_key, sealed[:n])
    for n in range(SEALED_MIN_LEN, len(sealed)):
        with pytest.raises(DecryptionFailed):
            request.open(signing_key, sealed[:n])


def test_an_empty_payload_is_the_shortest_blob() -> None:
    request, signing_key, sealed = _sealed(b"")
    assert len(sealed) == SEALED_MIN_LEN
    assert request.open(signing_key, sealed) == b""


def test_low_order_points_are_refused() -> None:
    request, signing_key, sealed = _sealed()
    with pytest.raises(MalformedMessage):
        request.open(signing_key, LOW_ORDER + sealed[32:])
    with pytest.raises(InvalidKey):
        seal_for_new_device(LOW_ORDER, request.link_id, signing_key, b"payload")


def test_inputs_of_the_wrong_length_draw_nothing() -> None:
    drawn: list[int] = []

    def rng(n: int) -> bytes:
        drawn.append(n)
        return bytes(n)

    request = LinkRequest.generate()
    for args in [
        (request.e_public[:31], request.link_id, bytes(32)),
        (request.e_public, request.link_id[:7], bytes(32)),
        (request.e_public, request.link_id, bytes(31)),
    ]:
        with pytest.raises(InvalidKeyLength):
            seal_for_new_device(*args, b"payload", rng)
    assert drawn == []
    with pytest.raises(TypeError):
        seal_for_new_device(request.e_public, request.link_id, bytes(32), "text", rng)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "code",
    [
        VECTOR["link_code"][:-1],  # 53
        VECTOR["link_code"] + "A",  # 55
        VECTOR["link_code"][:-2] + "==",  # padding
        "+" + VECTOR["link_code"][1:],  # standard alphabet
        "/" + VECTOR["link_code"][1:],
        " " + VECTOR["link_code"][1:],
        VECTOR["link_code"][:-1] + "B",  # unused trailing bits set: not canonical
        "é" * 54,
    ],
)
def test_link_codes_are_parsed_strictly(code: str) -> None:
    with pytest.raises(MalformedLinkCode):
        parse_link_code(code)


def test_link_code_types() -> None:
    with pytest.raises(TypeError):
        parse_link_code(VECTOR["link_code"].encode())  # type: ignore[arg-type]
    with pytest.raises(InvalidKeyLength):
        link_code(bytes(7), bytes(32))


def test_request_repr_hides_e() -> None:
    request = LinkRequest.generate()
    assert request.private_bytes().hex() not in repr(request)
    assert request.e_public.hex() in repr(request)


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=2048), st.binary(min_size=8, max_size=8))
def test_any_payload_round_trips(payload: bytes, link_id: bytes) -> None:
    e = X25519KeyPair.generate()
    signing_key = bytes(range(32))
    sealed = seal_for_new_device(e.public, link_id, signing_key, payload)
    assert len(sealed) == SEALED_MIN_LEN + len(payload)
    assert open_on_new_device(e.private_bytes(), link_id, signing_key, sealed) == payload
