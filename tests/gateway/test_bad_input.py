"""Bad input on the socket: an `error` frame with a stable code, a close where right,
and the pod keeps serving everyone else. Nothing is stored for a refused frame."""

from __future__ import annotations

import secrets
from typing import Any

import aiohttp
import pytest
from parley_contract.frames import CLOSE_AUTH_FAILED, CLOSE_AUTH_TIMEOUT, CLOSE_FLOOD

from services.common.state import KAFKA
from tests.support.aio import eventually
from tests.support.users import uid
from tests.support.wsclient import WsClient, send_frame

from .conftest import Messaging


async def still_serving(messaging: Messaging) -> None:
    """A fresh pair on the same pod still exchanges a message."""
    a, b = uid(), uid()
    ca = await messaging.connect(a)
    cb = await messaging.connect(b)
    await ca.send(send_frame("ok", b, "aGk"))
    assert (await cb.expect("message"))["body"] == "aGk"


async def inbox_of(messaging: Messaging, user: str) -> list[dict[str, Any]]:
    c = await messaging.connect(user, pod=1)
    await c.send({"op": "sync", "id": "probe", "after": 0})
    await c.expect("synced", id="probe")
    return [f for f in c.drain() if f["op"] == "message"]


@pytest.mark.parametrize(
    ("first", "code"),
    [
        (send_frame("1", "x", "eA"), "auth_required"),
        ({"op": "auth", "token": "not-a-jwt"}, "invalid_token"),
        ({"op": "auth"}, "validation_failed"),
        ({"op": "warp"}, "unknown_op"),
        ("{not json", "invalid_json"),
        ('{"op": "auth", "token": ' + "[" * 2000 + "]" * 2000 + "}", "bad_request"),
        # Over max_frame_bytes (64 KiB), under the 4x that the WebSocket layer cuts.
        ('{"op": "auth", "token": "' + "a" * 100_000 + '"}', "frame_too_large"),
    ],
)
async def test_unauthenticated_socket_is_refused(
    messaging: Messaging, first: Any, code: str
) -> None:
    client = await WsClient.connect(messaging.ws_url(0))
    messaging.clients.append(client)
    if isinstance(first, str):
        await client.send_raw(first)
    else:
        await client.send(first)
    err = await client.expect("error")
    assert err["code"] == code
    assert await client.wait_closed() == CLOSE_AUTH_FAILED
    await still_serving(messaging)


async def test_forged_expired_and_wrong_audience_tokens_are_refused(messaging: Messaging) -> None:
    iss = messaging.issuer
    good = iss.token(uid(), did=1)
    forged = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    for token, code in [
        (forged, "invalid_token"),
        (iss.token(uid(), ttl=-60), "token_expired"),
        (iss.token(uid(), aud="someone-else"), "invalid_token"),
        # A session not bound to a device (protocol v2 needs one: docs/devices.md).
        (iss.token(uid()), "device_required"),
    ]:
        client = await WsClient.connect(messaging.ws_url(1))
        messaging.clients.append(client)
        await client.send({"op": "auth", "token": token})
        assert (await client.expect("error"))["code"] == code
        assert await client.wait_closed() == CLOSE_AUTH_FAILED


async def test_silent_client_is_closed_after_the_auth_time_limit(
    issuer: Any, make_client: Any
) -> None:
    from services.gateway.app import create_app

    settings = issuer.settings.model_copy(update={"ws_auth_timeout_s": 0.3})
    gw = await make_client(await create_app(settings))
    client = await WsClient.connect(str(gw.make_url("/ws")))
    err = await client.expect("error")
    assert err["code"] == "auth_timeout"
    assert await client.wait_closed() == CLOSE_AUTH_TIMEOUT
    await client.close()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("[1, 2", "invalid_json"),
        ('["send"]', "bad_request"),
        # Nested past msgspec's limit (~1,000 levels, 2 KB): a RecursionError that closed
        # the socket with 1011 and logged a traceback.
        ("[" * 2000 + "]" * 2000, "bad_request"),
        ('{"op": "ping", "id": ' + "[" * 2000 + "]" * 2000 + "}", "bad_request"),
        (
            '{"op": "send", "id": "a0", "to": "bob", "copies": [{"user": "bob", "device": 1, '
            '"body": "eA", "x": ' + '{"a": ' * 2000 + "1" + "}" * 2000 + "}]}",
            "bad_request",
        ),
        ('{"op": "teleport"}', "unknown_op"),
        ('{"op": "send", "id": "a1", "to": "bob"}', "validation_failed"),
        ('{"op": "send", "id": "a1", "to": "bob", "copies": []}', "validation_failed"),
        (
            '{"op": "send", "id": "a2", "to": "bob", "copies": [{"user": "bob", "device": 1, '
            '"body": "not base64!"}]}',
            "validation_failed",
        ),
        (
            '{"op": "send", "id": "", "to": "bob", "copies": [{"user": "bob", "device": 1, '
            '"body": "eA"}]}',
            "validation_failed",
        ),
        (
            '{"op": "send", "id": "a3", "to": "../etc", "copies": [{"user": "bob", "device": 1, '
            '"body": "eA"}]}',
            "validation_failed",
        ),
        (
            '{"op": "send", "id": "a4", "to": "bob", "copies": [{"user": "bob", "device": 1, '
            '"body": "eA"}], "extra": 1}',
            "validation_failed",
        ),
        (
            '{"op": "send", "id": "a5", "to": "bob", "copies": [{"user": "bob", "device": 0, '
            '"body": "eA"}]}',
            "validation_failed",
        ),
        (
            '{"op": "send", "id": "a6", "to": "bob", "copies": [{"user": "bob", "device": 1, '
            '"body": "eA"}, {"user": "bob", "device": 1, "body": "eA"}]}',
            "validation_failed",
        ),
        ('{"op": "send", "id": "a7", "to": "bob", "body": "eA"}', "validation_failed"),
        ('{"op": "ack", "seq": -1}', "validation_failed"),
        ('{"op": "sync", "after": "zero"}', "validation_failed"),
    ],
)
async def test_bad_frames_get_an_error_and_store_nothing(
    messaging: Messaging, frame: str, code: str
) -> None:
    sender, bob = uid(), "bob" + uid()
    messaging.issuer.users.add(bob)
    client = await messaging.connect(sender)
    await client.send_raw(frame.replace('"bob"', f'"{bob}"'))
    err = await client.expect("error")
    assert err["code"] == code
    assert err["message"]
    # The socket stays usable.
    await client.send({"op": "ping", "id": "p"})
    await client.expect("pong", id="p")
    assert await inbox_of(messaging, bob) == []


async def test_error_frame_answers_the_frames_id(messaging: Messaging) -> None:
    client = await messaging.connect(uid())
    await client.send(send_frame("q9", uid(), "eA"))
    err = await client.expect("error")
    assert err["id"] == "q9"
    assert err["code"] == "recipient_not_found"


async def test_oversize_frame_is_refused_and_not_stored(messaging: Messaging) -> None:
    sender, bob = uid(), uid()
    messaging.issuer.users.add(bob)
    client = await messaging.connect(sender)
    big = "A" * (messaging.settings.ws_max_frame_bytes + 10)
    await client.send(send_frame("big", bob, big))
    assert (await client.expect("error"))["code"] == "frame_too_large"
    await client.send({"op": "ping", "id": "after"})
    await client.expect("pong", id="after")
    assert await inbox_of(messaging, bob) == []


async def test_binary_frames_are_refused(messaging: Messaging) -> None:
    client = await messaging.connect(uid())
    await client.send_raw(b"\x00\x01binary")
    assert (await client.expect("error"))["code"] == "bad_request"


async def test_flood_is_rate_limited_then_closed(issuer: Any, make_client: Any) -> None:
    from services.gateway.app import create_app

    settings = issuer.settings.model_copy(update={"ws_sends_per_s": 1.0, "ws_send_burst": 2})
    gw = await make_client(await create_app(settings))
    await gw.server.app[KAFKA].wait_ready(30)
    bob = uid()
    issuer.users.add(bob)
    client = await WsClient.connect(str(gw.make_url("/ws")), issuer.token(uid(), did=1))
    for i in range(20):
        await client.send(send_frame(f"f{i}", bob, "eA"))
    codes = []
    while True:
        frame = await client.next()
        if frame["op"] == "error":
            codes.append(frame["code"])
            if len(codes) > 8:
                break
    assert set(codes) == {"rate_limited"}
    assert await client.wait_closed() == CLOSE_FLOOD
    await client.close()


async def test_refusals_far_apart_never_add_up_to_a_flood(
    issuer: Any, make_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A socket open for days that hit the send limit now and then: its refused frames
    added up for its whole life, and it was closed as a flood (4009) once they passed
    4x the burst. Refusals a minute apart are forgotten; a flood still closes it."""
    from services.gateway import connection
    from services.gateway.app import create_app

    clock = [1000.0]
    monkeypatch.setattr(connection, "violation_clock", lambda: clock[0])
    settings = issuer.settings.model_copy(update={"ws_sends_per_s": 0.001, "ws_send_burst": 2})
    gw = await make_client(await create_app(settings))
    await gw.server.app[KAFKA].wait_ready(30)
    bob = uid()
    issuer.users.add(bob)
    client = await WsClient.connect(str(gw.make_url("/ws")), issuer.token(uid(), did=1))
    refused = 0
    for spell in range(4):  # 4 spells of 5 refusals: 20 in all, the close is past 8
        for i in range(5 if spell else 7):  # the first spell takes the burst's 2 too
            await client.send(send_frame(f"f{spell}.{i}", bob, "eA"))
        await client.send({"op": "ping", "id": f"p{spell}"})
        while (frame := await client.next())["op"] != "pong":
            refused += frame["op"] == "error" and frame["code"] == "rate_limited"
        clock[0] += 61.0  # a quiet minute
    assert refused == 20 and client.close_code is None
    for i in range(9):  # a flood: 9 refusals at once
        await client.send(send_frame(f"g{i}", bob, "eA"))
    assert await client.wait_closed() == CLOSE_FLOOD
    await client.close()


async def test_a_valid_ack_behind_a_refused_one_is_still_posted(messaging: Messaging) -> None:
    """Audit finding: an ack at or below the one in flight was dropped as old news, so a
    valid ack right behind a bogus one (never issued: refused) was never posted: the
    messages stayed in the inbox and the sender got no `delivered`."""
    alice_id, bob_id = uid(), uid()
    messaging.issuer.users.add(bob_id)
    alice = await messaging.connect(alice_id, pod=0)
    receipts = await alice.send_stored(bob_id, [(f"a{i}", f"bXNn{i}") for i in range(2)])
    bob = await messaging.connect(bob_id, pod=1)
    await bob.send({"op": "sync", "id": "before", "after": 0})
    await bob.expect("synced", id="before")
    last = max(int(m["seq"]) for m in bob.drain() if m["op"] == "message")

    await bob.send({"op": "ack", "seq": last + 1000, "id": "bogus"})
    await bob.send({"op": "ack", "seq": last, "id": "good"})
    assert (await bob.expect("error", id="bogus"))["code"] == "seq_not_issued"
    delivered = {(await alice.expect("delivered"))["server_id"] for _ in receipts}
    assert delivered == {r["server_id"] for r in receipts}
    await bob.send({"op": "sync", "id": "after", "after": 0})
    await bob.expect("synced", id="after")
    assert [f for f in bob.drain() if f["op"] in ("message", "error")] == []


async def test_close_codes_a_client_picks_do_not_become_metric_series(
    messaging: Messaging,
) -> None:
    """Audit finding: the disconnect counter was labelled with whatever close code the
    client sent (any of 3000-4999, no `auth` needed): a loop of anonymous sockets made
    a series per code for ever, in memory and in every scrape."""
    gateway = messaging.gateways[0]
    hub = messaging.hub(0)
    async with aiohttp.ClientSession() as session:
        for code in (*range(3000, 3040), 4999, 1000):
            ws = await session.ws_connect(messaging.ws_url(0))
            await ws.close(code=code)

    async def closes() -> float:
        return sum(
            s.value
            for metric in hub.disconnects.collect()
            for s in metric.samples
            if s.name.endswith("_total")
        )

    await eventually(closes, lambda n: n >= 42)
    text = await (await gateway.get("/gateway/metrics")).text()
    codes = {
        line.split('code="')[1].split('"')[0]
        for line in text.splitlines()
        if line.startswith("parley_gateway_disconnects_total{")
    }
    assert codes <= {"other", "1000", "none"} and "other" in codes and "1000" in codes


async def test_a_room_message_past_the_largest_record_is_refused_for_good(
    messaging: Messaging, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Audit finding: a private room's record lists every member device's inbox; for a
    room of thousands of members with several devices each and a large body it is
    past the producer's largest request (1 MiB), and the gateway answered
    `service_unavailable`, which clients resend with the same id for ever. It is
    `payload_too_large` now, and nothing is produced."""
    hub = messaging.hub(0)
    # 5,000 members (the most a room has) of six devices (the most an account has).
    many = [f"{secrets.token_hex(16)}:{d}" for d in range(1, 7) for _ in range(5_000)]

    async def huge_room(*_: Any) -> list[str]:
        return many

    monkeypatch.setattr(hub.rooms, "targets", huge_room)
    client = await messaging.connect(uid())
    room = secrets.token_hex(12)
    await client.send({"op": "room_send", "id": "big", "room": room, "body": "QUFB" * 10_000})
    err = await client.expect("error", id="big")
    assert err["code"] == "payload_too_large"
    await client.send({"op": "ping", "id": "after"})  # the socket goes on
    await client.expect("pong", id="after")
