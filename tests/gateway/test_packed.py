"""A socket's access token kept packed (services/gateway/packed.py): the same text back."""

from __future__ import annotations

import sys
from typing import Any

from services.gateway import packed

from .conftest import Messaging


def test_a_token_packs_smaller_and_unpacks_to_the_same_text(issuer: Any) -> None:
    first, second = issuer.token("alice", did=1), issuer.token("bob", did=2)
    head, body = packed.pack(first)
    assert body and packed.unpack(head, body) == first
    assert sys.getsizeof(body) < 0.75 * sys.getsizeof(first)
    # Tokens signed with one key share their header's string.
    head2, body2 = packed.pack(second)
    assert head2 is head and packed.unpack(head2, body2) == second


def test_what_would_not_come_back_exactly_is_kept_as_it_is() -> None:
    canonical = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhIn0.c2ln"
    assert packed.unpack(*packed.pack(canonical)) == canonical
    for odd in (
        "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhIn1.c2ln",  # non-canonical trailing bits
        "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhIn0=.c2ln",  # padded
        "eyJhbGciOiJFZERTQSJ9.eyJz dWIiOiJhIn0.c2ln",  # not base64url
        "not.a.token!",
        "no-dots",
        "é.é.é",
        "",
    ):
        assert packed.pack(odd) == (odd, b""), odd
        assert packed.unpack(*packed.pack(odd)) == odd


async def test_a_socket_calls_with_the_token_it_authenticated_with(messaging: Messaging) -> None:
    token = messaging.issuer.token("carol", did=1)
    client = await messaging.connect("carol")
    (conn,) = messaging.hub(0).local("carol")
    assert conn._token_body  # packed
    # Renewed in place: the new token is the one sent from now on.
    await client.send({"op": "auth", "token": token, "id": "renew"})
    await client.expect("ready", id="renew")
    assert conn._token() == token
    await client.send({"op": "sync", "id": "s", "after": 0})
    await client.expect("synced", id="s")
