"""The SDK sends at the rate the gateway advertises in ``ready.limits``: a backlog
larger than the send burst goes out whole, without collecting the ``rate_limited``
refusals after which the gateway closes the socket (4009, docs/protocol.md)."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator

import pytest
from parley import Client
from parley.client import ConnectionEvent, Message
from parley.messenger import Messenger
from parley_contract import frames as f

from scripts.stack import PYTHONPATH, ROOT, _free_ports, command
from tests.client.conftest import MakeClient
from tests.support.aio import eventually
from tests.support.stack import System, http_status, wait_until

RATE, BURST = 10, 5  # the gateway closes after 4 x BURST = 20 refusals
BACKLOG = 40


@pytest.fixture
def throttled_gateway(system: System) -> Iterator[str]:
    """A third gateway of the system, with a small send limit; its WebSocket URL."""
    argv, extra = command(system.cfg, "gateway1")
    port = _free_ports(1)[0]
    env = {
        **os.environ,
        **extra,
        "PYTHONPATH": PYTHONPATH,
        "PARLEY_PORT": str(port),
        "PARLEY_GATEWAY_ID": "gateway-throttled",
        "PARLEY_WS_SENDS_PER_S": str(RATE),
        "PARLEY_WS_SEND_BURST": str(BURST),
    }
    log = open(system.cfg.data_dir / "gateway-throttled.out", "ab")
    proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        base = f"http://{system.cfg.host}:{port}"
        wait_until(lambda: http_status(base + "/gateway/readyz") == 200, 60)
        yield base.replace("http://", "ws://") + "/ws"
    finally:
        proc.terminate()
        proc.wait(timeout=15)


async def test_a_backlog_past_the_burst_goes_out_paced_on_one_socket(
    make_client: MakeClient, throttled_gateway: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob = await make_client(), await make_client()
    assert bob.username and bob.user_id
    sent = [await alice.send(bob.username, f"m{i}", wait=None) for i in range(BACKLOG)]
    assert len(alice.outbox()) == BACKLOG
    await bob.connect()  # through the load balancer, as usual
    states: list[ConnectionEvent] = []
    alice.add_listener(lambda e: states.append(e) if isinstance(e, ConnectionEvent) else None)
    monkeypatch.setattr(Messenger, "ws_url", property(lambda _: throttled_gateway))
    await alice.connect()  # resends the whole outbox, at RATE per second past BURST

    got = [await bob.next_event(Message, timeout=60) for _ in range(BACKLOG)]
    assert sorted(m.text for m in got if isinstance(m, Message)) == sorted(
        f"m{i}" for i in range(BACKLOG)
    )
    await _outbox_empties(alice)
    assert alice._conn is not None and alice._conn.connects == 1, states  # never closed 4009
    assert not any("4009" in e.detail for e in states), states
    assert {e["client_id"] for e in alice.history(bob.user_id)} >= set(sent)


async def _outbox_empties(client: Client) -> None:
    await eventually(lambda: _outbox(client), lambda n: n == 0, timeout=30)


async def _outbox(client: Client) -> int:
    return len(client.outbox())


@pytest.mark.parametrize("code", ["inbox_full", "too_many_pending", "service_unavailable"])
async def test_a_refusal_that_stored_nothing_keeps_the_message_and_sends_it_again(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch, code: str
) -> None:
    """Before: only ``rate_limited`` and ``service_unavailable`` kept the message;
    ``inbox_full`` and ``too_many_pending`` (docs/protocol.md: "nothing was stored;
    send the same id again later") took it out of the outbox as failed, for good."""
    from parley import connection, messenger

    monkeypatch.setitem(messenger._SEND_AGAIN, code, (0.2, 1.0))
    alice, bob = await make_client(), await make_client()
    assert bob.username and bob.user_id
    await alice.connect()
    await bob.connect()
    send = connection.Connection.send
    refused: list[str] = []

    async def refuse_first(self: connection.Connection, frame: object) -> None:
        if isinstance(frame, f.Send) and not refused:
            refused.append(frame.id)  # as if the server had answered it so
            await self._handler(f.Error(id=frame.id, code=code, message="not now"))
            return
        await send(self, frame)  # type: ignore[arg-type]

    monkeypatch.setattr(connection.Connection, "send", refuse_first)
    client_id = await alice.send(bob.username, "when there is room", wait="accepted")
    assert refused == [client_id]
    got = await bob.next_event(Message)
    assert isinstance(got, Message) and got.text == "when there is room"
    assert alice.outbox() == []
    assert [e["status"] for e in alice.history(bob.user_id)] != ["failed"]


async def test_a_refusal_due_soon_is_not_held_behind_one_due_later(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review finding: the one resend task slept until the earliest due time *when it
    went to sleep*, so a message refused meanwhile for a second waited behind one held
    for minutes (an inbox_full: 5 s, doubling to 5 min)."""
    from parley import connection

    alice, bob, carol = await make_client(), await make_client(), await make_client()
    assert bob.username and carol.username and carol.user_id
    for c in (alice, bob, carol):
        await c.connect()
    send = connection.Connection.send
    refused: dict[str, str] = {}

    async def refuse(self: connection.Connection, frame: f.ClientFrames) -> None:
        if isinstance(frame, f.Send) and frame.to != carol.user_id:
            refused.setdefault(frame.id, "inbox_full")  # bob's inbox stays full
            await self._handler(f.Error(id=frame.id, code="inbox_full", message="full"))
            return
        if isinstance(frame, f.Send) and frame.id not in refused:
            refused[frame.id] = "service_unavailable"
            await self._handler(f.Error(id=frame.id, code="service_unavailable", message="x"))
            return
        await send(self, frame)

    monkeypatch.setattr(connection.Connection, "send", refuse)
    await alice.send(bob.username, "to a full inbox", wait=None)
    # Held for 5 s; carol's message is refused once for a second: it goes after that.
    await alice.send(carol.username, "goes after a second", wait="accepted", timeout=4)
    got = await carol.next_event(Message)
    assert isinstance(got, Message) and got.text == "goes after a second"


async def test_a_room_key_send_to_a_full_inbox_fails_at_once_with_the_reason(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review finding: a key send refused with inbox_full was kept and sent again, so a
    room send waited 30 s and then said the keys "could not be handed out" (and left
    another key message in the outbox each try). It fails at once with the reason."""
    from parley import ApiError, connection

    alice, bob = await make_client(), await make_client()
    assert bob.username
    await alice.connect()
    await bob.connect()
    rid = str((await alice.rooms.create("full inbox"))["room_id"])
    await alice.rooms.invite(rid, bob.username)
    await bob.rooms.accept(rid)
    send = connection.Connection.send

    async def full(self: connection.Connection, frame: f.ClientFrames) -> None:
        if isinstance(frame, f.Send) and frame.id in alice.messenger._copies:
            await self._handler(f.Error(id=frame.id, code="inbox_full", message="full"))
            return
        await send(self, frame)

    monkeypatch.setattr(connection.Connection, "send", full)
    with pytest.raises(ApiError) as err:
        await asyncio.wait_for(alice.rooms.send(rid, "hello"), 10)
    assert err.value.code == "inbox_full"
    assert alice.outbox() == []


def test_a_new_socket_starts_without_the_old_ones_debt_or_a_fresh_burst() -> None:
    """Review finding: sends booked on a socket that closed left the bucket in debt,
    and the next socket's first sends waited behind them."""
    from parley.messenger import _Pacer

    pacer = _Pacer(rate=10, burst=5)
    pacer.tokens = -200.0  # 200 sends booked at 10/s: 20 s of waiting
    pacer.configure(10, 5)
    assert 0.0 <= pacer.tokens < 1.0  # not in debt, and no burst granted
    pacer.tokens = 3.0
    pacer.configure(10, 2)
    assert pacer.tokens <= 2.0


async def test_closing_does_not_wait_for_a_message_held_for_a_full_inbox(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CLI command waits up to 10 s at close for its resends' answers, but not for a
    message the server refused for now (a full inbox can last minutes): else every
    command waited the whole 10 s while it was held."""
    from parley import connection

    alice, bob = await make_client(), await make_client()
    assert bob.username
    await alice.connect()
    send = connection.Connection.send

    async def full(self: connection.Connection, frame: f.ClientFrames) -> None:
        if isinstance(frame, f.Send):
            await self._handler(f.Error(id=frame.id, code="inbox_full", message="full"))
            return
        await send(self, frame)

    monkeypatch.setattr(connection.Connection, "send", full)
    await alice.send(bob.username, "held", wait=None)
    # Held 5 s, past this 3 s wait: not waited for (one due within it would be).
    assert await asyncio.wait_for(alice.messenger.wait_outbox(3), 1.5) == 1


async def test_a_send_booked_on_a_closed_socket_sends_nothing_on_the_next() -> None:
    """Review finding: with the debt cleared at a new socket, sends still asleep from
    the old one woke and went out on the new one beside its resend: twice the rate."""
    from parley.messenger import _Pacer

    pacer = _Pacer(rate=20, burst=1)
    assert await pacer.take()  # the burst
    late = asyncio.ensure_future(pacer.take())  # waits a twentieth of a second
    await asyncio.sleep(0)
    pacer.configure(20, 1)  # a new socket's ready
    assert await late is False
    assert await pacer.take()  # the new socket's own turn


async def _backlog_on_the_throttled_gateway(
    make_client: MakeClient, throttled_gateway: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[Client, Client]:
    """alice with BACKLOG messages to bob queued while offline, sent to the throttled
    gateway when she connects; bob connected through the load balancer."""
    alice, bob = await make_client(), await make_client()
    assert bob.username
    for i in range(BACKLOG):
        await alice.send(bob.username, f"m{i}", wait=None)
    await bob.connect()
    monkeypatch.setattr(Messenger, "ws_url", property(lambda _: throttled_gateway))
    return alice, bob


async def test_connect_returns_before_a_long_resend_and_new_sends_go_after_it(
    make_client: MakeClient, throttled_gateway: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: ``connect`` returned only once the whole outbox was resent, so a backlog
    past the burst (3.5 s here; minutes for thousands at the default limits) made it
    time out though the socket worked. Now the resend runs behind it, and a message
    sent meanwhile still reaches its peer after everything queued before it."""
    alice, bob = await _backlog_on_the_throttled_gateway(
        make_client, throttled_gateway, monkeypatch
    )
    await alice.connect(timeout=2)  # (BACKLOG - BURST) / RATE = 3.5 s of resending
    assert len(alice.outbox()) > 1  # returned while the resend still runs
    await alice.send(bob.username, "after the backlog", wait="accepted", timeout=30)

    got = [await bob.next_event(Message, timeout=60) for _ in range(BACKLOG + 1)]
    texts = [m.text for m in got if isinstance(m, Message)]
    assert texts[-1] == "after the backlog"
    assert sorted(texts[:-1]) == sorted(f"m{i}" for i in range(BACKLOG))


async def test_a_send_that_times_out_behind_the_resend_still_goes_in_its_turn(
    make_client: MakeClient, throttled_gateway: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wait behind the outbox's resend counts toward a send's timeout (``parley
    send --timeout``); the message, queued, still goes on this socket after the rest."""
    alice, bob = await _backlog_on_the_throttled_gateway(
        make_client, throttled_gateway, monkeypatch
    )
    await alice.connect(timeout=2)
    with pytest.raises(TimeoutError):
        await alice.send(bob.username, "late", wait="accepted", timeout=0.5)

    got = [await bob.next_event(Message, timeout=60) for _ in range(BACKLOG + 1)]
    assert [m.text for m in got if isinstance(m, Message)][-1] == "late"
    await _outbox_empties(alice)
    assert alice._conn is not None and alice._conn.connects == 1  # on the same socket


async def test_a_send_made_while_a_new_socket_syncs_goes_after_the_queued_ones(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review finding: the resend's task was made only after the socket's sync, so a
    send made during the sync saw no resend running and overtook the outbox."""
    alice, bob = await make_client(), await make_client()
    assert bob.username
    for i in range(3):
        await alice.send(bob.username, f"queued {i}", wait=None)
    await bob.connect()
    syncing, release = asyncio.Event(), asyncio.Event()
    sync = Messenger.sync

    async def held_sync(self: Messenger) -> int:
        syncing.set()
        await release.wait()
        return await sync(self)

    monkeypatch.setattr(Messenger, "sync", held_sync)
    connecting = asyncio.create_task(alice.connect())
    await syncing.wait()  # the socket is up; its sync (and then its resend) waits
    await alice.send(bob.username, "written during the sync", wait=None)
    release.set()
    await connecting
    got = [await bob.next_event(Message, timeout=30) for _ in range(4)]
    assert [m.text for m in got if isinstance(m, Message)] == [
        "queued 0", "queued 1", "queued 2", "written during the sync",
    ]  # fmt: skip
    await _outbox_empties(alice)
