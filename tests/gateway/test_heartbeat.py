"""The pod's heartbeat (services/gateway/heartbeat.py): one schedule for every socket,
with aiohttp's timing: a ping after ``ws_heartbeat_s`` without a frame from the
client, the connection dropped (1006) half of that after an unanswered ping. It
also files a socket for its token's expiry once that comes before its next look."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson
from parley_contract.frames import CLOSE_REAUTH

from services.common.state import KAFKA
from services.gateway.app import create_app
from services.gateway.heartbeat import Heartbeat
from services.gateway.state import HUB
from tests.support.aio import eventually
from tests.support.users import uid
from tests.support.wsclient import WsClient


async def _value(v: Any) -> Any:
    return v


class Sock:
    """A socket as the heartbeat sees it; ``answers``: a ping is answered at once."""

    def __init__(self, answers: bool = False) -> None:
        self.heard = 0.0
        self.beat = 0.0
        self.busy = False
        self.answers = answers
        self.pings: list[float] = []
        self.aborted: float | None = None

    def ping(self) -> None:
        self.pings.append(time.monotonic())
        if self.answers:
            self.heard = time.monotonic()

    def abort(self) -> None:
        self.aborted = time.monotonic()


async def test_a_silent_socket_is_pinged_then_dropped_unless_it_answers() -> None:
    beat: Heartbeat[Sock] = Heartbeat(0.2)
    silent, answering = Sock(), Sock(answers=True)
    added = time.monotonic()
    beat.add(silent)
    beat.add(answering)
    await eventually(lambda: _value(silent.aborted), lambda t: t is not None, timeout=10)
    assert silent.aborted is not None
    # Pinged once, no earlier than the interval; dropped no earlier than the timeout.
    (pinged,) = silent.pings
    assert pinged - added >= 0.2
    assert silent.aborted - pinged >= 0.1
    # The socket that answers is pinged every interval and never dropped.
    await eventually(lambda: _value(len(answering.pings)), lambda n: n >= 3, timeout=10)
    assert answering.aborted is None
    gaps = [b - a for a, b in zip(answering.pings, answering.pings[1:], strict=False)]
    assert min(gaps) >= 0.2
    beat.close()


async def test_frames_move_the_ping_and_a_discarded_socket_is_left_alone() -> None:
    beat: Heartbeat[Sock] = Heartbeat(1.0)
    chatty, gone = Sock(), Sock()
    beat.add(chatty)
    beat.add(gone)
    beat.discard(gone)
    start = time.monotonic()
    # Frames every 50 ms for 2.5 intervals: never a ping.
    while time.monotonic() - start < 2.5:
        chatty.heard = time.monotonic()
        await asyncio.sleep(0.05)
    assert chatty.pings == [] and chatty.aborted is None
    # Silent from now on: pinged an interval after its last frame, then dropped.
    last = chatty.heard
    await eventually(lambda: _value(chatty.aborted), lambda t: t is not None, timeout=10)
    assert chatty.pings[0] - last >= 1.0
    assert gone.pings == [] and gone.aborted is None
    beat.close()


async def _gateway(issuer: Any, make_client: Any) -> tuple[Any, str]:
    gw = await make_client(await create_app(issuer.settings.model_copy(
        update={"ws_heartbeat_s": 0.4})))  # fmt: skip
    await gw.server.app[KAFKA].wait_ready(30)
    return gw, str(gw.make_url("/ws"))


async def _open(session: aiohttp.ClientSession, url: str, token: str) -> Any:
    """An authenticated socket whose pings the test answers itself (or not)."""
    ws = await session.ws_connect(url, autoping=False)
    await ws.send_str(orjson.dumps({"op": "auth", "token": token}).decode())
    msg = await ws.receive(timeout=10)
    assert orjson.loads(msg.data)["op"] == "ready"
    return ws


async def test_a_client_that_never_answers_pings_is_dropped_with_1006(
    issuer: Any, make_client: Any
) -> None:
    gw, url = await _gateway(issuer, make_client)
    hub = gw.server.app[HUB]
    user = uid()
    async with aiohttp.ClientSession() as session:
        ws = await _open(session, url, issuer.token(user, did=1))
        assert len(hub.local(user)) == 1
        msg = await ws.receive(timeout=10)
        assert msg.type is aiohttp.WSMsgType.PING
        pinged = time.monotonic()
        msg = await ws.receive(timeout=10)  # not answered: no close frame, the TCP closes
        assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
        assert time.monotonic() - pinged >= 0.15
        assert ws.close_code == 1006
    # Unregistered. (The test server cancels a handler whose connection is lost, so
    # the close code it counts is not 1006 here; `python -m services.gateway` does not.)
    await eventually(lambda: _value(hub.local(user)), lambda conns: conns == (), timeout=10)


async def _answering(ws: Any) -> Any:
    """The next message that is not the pod's ping (those are answered)."""
    while (msg := await ws.receive(timeout=10)).type is aiohttp.WSMsgType.PING:
        await ws.pong(msg.data)
    return msg


async def test_a_client_that_answers_pings_stays_open(issuer: Any, make_client: Any) -> None:
    gw, url = await _gateway(issuer, make_client)
    hub = gw.server.app[HUB]
    user = uid()
    async with aiohttp.ClientSession() as session:
        ws = await _open(session, url, issuer.token(user, did=1))
        for _ in range(3):  # over three intervals, each ping answered
            msg = await ws.receive(timeout=10)
            assert msg.type is aiohttp.WSMsgType.PING
            await ws.pong(msg.data)
        # Still open and served; a ping from the client is answered by the pod.
        await ws.ping(b"hi")
        msg = await _answering(ws)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.PONG, b"hi")
        await ws.send_str(orjson.dumps({"op": "ping", "id": "p"}).decode())
        msg = await _answering(ws)
        assert orjson.loads(msg.data) == {"op": "pong", "id": "p"}
        assert len(hub.local(user)) == 1
        await ws.close()
    await eventually(lambda: _value(hub.local(user)), lambda conns: conns == (), timeout=10)


async def test_a_token_that_outlives_the_next_look_joins_the_expiry_schedule_later(
    issuer: Any, make_client: Any
) -> None:
    gw, url = await _gateway(issuer, make_client)
    hub = gw.server.app[HUB]
    user = uid()
    client = await WsClient.connect(url, issuer.token(user, did=1, ttl=4))  # answers pings
    (conn,) = hub.local(user)
    # Not filed yet: the token ends after the heartbeat's next look at the socket.
    assert len(hub._expiries) == 0
    err = await client.expect("error", timeout=30)
    assert err["code"] == "reauth_required"
    assert time.time() >= conn.expires_at
    assert await client.wait_closed(timeout=30) == CLOSE_REAUTH
    await client.close()


async def test_a_socket_busy_handling_a_frame_is_not_dropped_for_an_unread_pong() -> None:
    """A sync waiting on a slow delivery holds the socket's frame loop: the client's pong
    waits unread behind it. Such a socket was dropped (1006) as if its client were
    gone; it is looked at again once the frame loop is free."""
    beat: Heartbeat[Sock] = Heartbeat(0.2)
    busy = Sock()
    busy.busy = True
    beat.add(busy)
    await eventually(lambda: _value(len(busy.pings)), lambda n: n >= 1, timeout=10)
    await asyncio.sleep(0.6)  # several timeouts (0.1 s) past the ping: nothing to await
    assert busy.aborted is None
    busy.busy = False  # its handler returned, and still nothing came
    await eventually(lambda: _value(busy.aborted), lambda t: t is not None, timeout=10)
    beat.close()
