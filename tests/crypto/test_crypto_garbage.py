"""Arbitrary bytes never crash the parsers: only CryptoError subclasses come out."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from parley.crypto import CryptoError, Device, GroupSession, Session

from tests.crypto.helpers import IDS, session_pair

_SESSIONS: list[tuple[Session, Session]] = []
_DEVICE: list[Device] = []
_GROUP: list[GroupSession] = []


def _fixtures() -> tuple[Session, Device, GroupSession]:
    if not _SESSIONS:
        _SESSIONS.append(session_pair())
        _DEVICE.append(Device.generate())
        _GROUP.append(GroupSession.create("g"))
    return _SESSIONS[0][1], _DEVICE[0], _GROUP[0]


def _messages() -> st.SearchStrategy[bytes]:
    """Random bytes, and random bytes behind a valid version/type prefix."""
    body = st.binary(max_size=1500)
    prefixed = st.tuples(
        st.sampled_from([b"\x01\x01", b"\x01\x02", b"\x01\x03", b"\x01\x04"]), body
    )
    return st.one_of(body, prefixed.map(lambda t: t[0] + t[1]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_messages())
def test_garbage_raises_only_crypto_errors(data: bytes) -> None:
    session, device, group = _fixtures()
    before = (session.to_bytes(), device.to_bytes(), group.to_bytes())
    for call in (
        lambda: session.decrypt(data),
        lambda: Session.respond(device, data, binding=IDS),
        lambda: group.process_distribution("x", data),
        lambda: group.decrypt("x", data),
        lambda: Session.from_bytes(data),
        lambda: Device.from_bytes(data),
        lambda: GroupSession.from_bytes(data),
    ):
        try:
            call()
        except CryptoError:
            pass
    assert (session.to_bytes(), device.to_bytes()) == before[:2]


def test_deeply_nested_json_state_is_malformed_not_a_crash() -> None:
    for cls in (Session, Device, GroupSession):
        for data in (b"[" * 100000, b'{"v": 1}', b"\xff\xfe", b"1"):
            try:
                cls.from_bytes(data)
            except CryptoError:
                continue
            raise AssertionError(f"{cls.__name__} accepted {data[:10]!r}")
