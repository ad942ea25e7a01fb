"""A socket does not outlive its access token unless the client renews it in place (#20)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from parley.connection import Connection
from parley_contract import frames as f
from parley_contract.frames import CLOSE_REAUTH

from tests.support.aio import eventually
from tests.support.messaging import start_messaging
from tests.support.tokens import TokenIssuer
from tests.support.users import uid

from .conftest import Messaging


async def _now() -> float:
    return time.time()


async def test_a_socket_is_closed_with_reauth_when_its_token_expires(
    messaging: Messaging,
) -> None:
    user = uid()
    client = await messaging.connect(user, ttl=4)
    err = await client.expect("error", timeout=30)
    assert err["code"] == "reauth_required"
    assert await client.wait_closed(timeout=30) == CLOSE_REAUTH
    assert not messaging.hub(0).local(user)


async def test_a_socket_renewed_in_place_stays_open_past_the_first_expiry(
    messaging: Messaging,
) -> None:
    user = uid()
    client = await messaging.connect(user, ttl=4)
    (conn,) = messaging.hub(0).local(user)
    first_expiry = conn.expires_at
    fresh = messaging.issuer.token(user, did=1, ttl=900)
    await client.send({"op": "auth", "token": fresh, "id": "renew"})
    await client.expect("ready", id="renew")
    assert conn.expires_at > first_expiry + 800
    # Past the first token's expiry the socket still answers.
    await eventually(_now, lambda now: now > first_expiry + 1, timeout=30)
    await client.send({"op": "ping", "id": "still"})
    await client.expect("pong", id="still")
    assert [f for f in client.drain() if f["op"] == "error"] == []
    assert not client.closed.is_set()


async def test_renewing_with_another_users_token_is_refused_and_the_expiry_stands(
    messaging: Messaging,
) -> None:
    user = uid()
    client = await messaging.connect(user, ttl=6)
    await client.send({"op": "auth", "token": messaging.issuer.token(uid(), did=1), "id": "x"})
    assert (await client.expect("error", id="x"))["code"] == "forbidden"
    assert (await client.expect("error", timeout=30))["code"] == "reauth_required"
    assert await client.wait_closed(timeout=30) == CLOSE_REAUTH


async def test_the_sdk_reconnects_at_once_with_a_fresh_token_after_reauth(
    messaging: Messaging,
) -> None:
    user = uid()
    asked: list[bool] = []

    async def token(refresh: bool) -> str:
        asked.append(refresh)
        # The first token runs out soon; a refreshed one lasts.
        return messaging.issuer.token(user, did=1, ttl=900 if refresh else 4)

    frames: list[f.ServerFrames] = []

    async def handler(frame: f.ServerFrames) -> None:
        frames.append(frame)

    # No renewal in place: the gateway closes the socket with 4005 at expiry.
    conn = Connection(messaging.ws_url(0), token, handler, reauth_every=3600,
                      backoff_start=3600, backoff_max=3600)  # fmt: skip
    try:
        await conn.start()
        await eventually(_connects(conn), lambda n: n >= 2, timeout=40)
        assert asked[:2] == [False, True]
        assert conn.failed is None
        answer = await conn.request(f.Ping())
        assert isinstance(answer, f.Pong)
    finally:
        await conn.close()


def _connects(conn: Connection) -> Callable[[], Awaitable[int]]:
    async def probe() -> int:
        return conn.connects

    return probe


async def test_a_socket_opened_with_a_dropped_keys_token_is_closed_with_reauth(
    issuer: TokenIssuer, make_client: Any
) -> None:
    """Audit finding: a socket checked its token once, so after ``rotate-keys
    --drop-previous`` (a signing key stolen) a token forged with that key kept its
    socket, and the inbox it read and acknowledged, until its ``exp`` (up to a day).
    The gateway reads the JWKS on its own schedule now and closes, with
    ``reauth_required``, every socket whose token a key no longer published signed;
    the sockets of the current key stay open."""
    new_key = Ed25519PrivateKey.generate()
    issuer.extra_keys = [(new_key, "rotated")]  # published before it signs
    m = await start_messaging(issuer, make_client, jwks_cache_s=1, presence_refresh_s=0.2)
    try:
        stolen = await m.connect(uid())
        old = (issuer.key, issuer.kid)
        issuer.key, issuer.kid = new_key, "rotated"
        issuer.extra_keys = [old]
        kept = await m.connect(uid())
        # While the JWKS publishes both keys (read again meanwhile), nothing is closed.
        await m.hub(0).verifier.refresh()
        await stolen.send({"op": "ping", "id": "both"})
        await stolen.expect("pong", id="both")

        issuer.extra_keys = []  # the old key dropped
        err = await stolen.expect("error", timeout=30)
        assert err["code"] == "reauth_required"
        assert await stolen.wait_closed(timeout=30) == CLOSE_REAUTH
        await kept.send({"op": "ping", "id": "still"})
        await kept.expect("pong", id="still")
        assert not kept.closed.is_set()
    finally:
        for c in m.clients:
            await c.close()


async def test_a_renewal_with_a_shorter_token_ends_the_socket_at_its_expiry(
    messaging: Messaging,
) -> None:
    """Audit finding: a renewal whose token expired sooner kept the first token's
    deadline while the socket's calls went on with the new, expired token."""
    user = uid()
    client = await messaging.connect(user, ttl=900)
    short = messaging.issuer.token(user, did=1, ttl=4)
    await client.send({"op": "auth", "token": short, "id": "renew"})
    await client.expect("ready", id="renew")
    (conn,) = messaging.hub(0).local(user)
    assert conn.expires_at < time.time() + 10
    assert (await client.expect("error", timeout=30))["code"] == "reauth_required"
    assert await client.wait_closed(timeout=30) == CLOSE_REAUTH
