"""parley.Client end to end against the real system."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from parley import Client, ParleyError, SafetyNumberChanged
from parley.client import KeyChanged, Message, Receipt
from parley.crypto import AccountKey, Device, DeviceEntry, DeviceList, SignedDeviceList
from parley.crypto.encoding import b64encode
from parley.messenger import UntrustedKeys
from parley_contract import frames as f

from tests.client.conftest import PASSWORD, MakeClient
from tests.support.aio import eventually
from tests.support.stack import System


async def test_two_clients_exchange_messages_in_real_time(make_client: MakeClient) -> None:
    alice, bob = await make_client(), await make_client()
    await alice.connect()
    await bob.connect()
    assert bob.username is not None and alice.username is not None
    await alice.send(bob.username, "hello bob")
    got = await bob.next_event(Message)
    assert isinstance(got, Message) and got.text == "hello bob"
    assert got.username == alice.username
    await bob.send(alice.username, "hello alice")
    back = await alice.next_event(Message)
    assert isinstance(back, Message) and back.text == "hello alice"
    # Receipts come back to the sender: delivered once bob acknowledged.
    while True:
        receipt = await alice.next_event(Receipt)
        assert isinstance(receipt, Receipt)
        if receipt.status == "delivered":
            break
    history = alice.history(bob.user_id or "")
    assert [e["text"] for e in history] == ["hello bob", "hello alice"]
    assert history[0]["status"] == "delivered"


async def test_offline_recipient_gets_messages_on_connect_in_order(make_client: MakeClient) -> None:
    alice, bob = await make_client(), await make_client()
    assert bob.username and alice.username and bob.user_id
    await alice.connect()
    texts = [f"offline {i}" for i in range(5)]
    for text in texts:
        await alice.send(bob.username, text, wait="stored")
    await bob.connect()  # syncs the inbox before returning
    got = [e["text"] for e in bob.history(alice.user_id or "")]
    assert got == texts
    # Acknowledged: a second device state sync finds nothing new.
    assert await bob.sync() >= 1
    assert [e["text"] for e in bob.history(alice.user_id or "")] == texts
    conv = bob.conversations()
    assert conv[0]["username"] == alice.username and len(conv[0]["unread"]) == 5
    await bob.mark_read(alice.user_id or "")
    assert bob.conversations()[0]["unread"] == []


async def test_messages_sent_while_disconnected_go_out_on_connect(make_client: MakeClient) -> None:
    alice, bob = await make_client(), await make_client()
    assert bob.username and alice.user_id
    client_id = await alice.send(bob.username, "queued while offline", wait=None)
    assert [f["client_id"] for f in alice.outbox()] == [client_id]
    await bob.connect()
    await alice.connect()  # resends the outbox with the same id
    got = await bob.next_event(Message)
    assert isinstance(got, Message) and got.text == "queued while offline"
    assert alice.outbox() == []


async def test_both_start_a_session_at_once_and_converge(make_client: MakeClient) -> None:
    alice, bob = await make_client(), await make_client()
    assert alice.username and bob.username
    # Both claim the other's bundle before either message arrives.
    await alice.send(bob.username, "from alice", wait=None)
    await bob.send(alice.username, "from bob", wait=None)
    await alice.connect()
    await bob.connect()
    for i in range(4):
        await alice.send(bob.username, f"a{i}")
        got = await bob.next_event(Message)
        assert isinstance(got, Message) and got.text in ("from alice", f"a{i}")
        if got.text == "from alice":
            got = await bob.next_event(Message)
            assert isinstance(got, Message) and got.text == f"a{i}"
        await bob.send(alice.username, f"b{i}")
        got = await alice.next_event(Message)
        assert isinstance(got, Message) and got.text in ("from bob", f"b{i}")
        if got.text == "from bob":
            got = await alice.next_event(Message)
            assert isinstance(got, Message) and got.text == f"b{i}"
    texts_a = {e["text"] for e in alice.history(bob.user_id or "")}
    texts_b = {e["text"] for e in bob.history(alice.user_id or "")}
    assert {"from bob", "b3"} <= texts_a and {"from alice", "a3"} <= texts_b
    assert not [e for e in alice.history(bob.user_id or "") if e.get("kind") == "error"]
    assert not [e for e in bob.history(alice.user_id or "") if e.get("kind") == "error"]


async def test_reinstall_warns_the_contact_with_the_new_safety_number(
    make_client: MakeClient,
) -> None:
    alice, bob = await make_client(), await make_client()
    assert alice.username and bob.username and bob.user_id
    await alice.connect()
    await bob.connect()
    await alice.send(bob.username, "before")
    await bob.next_event(Message)
    await bob.send(alice.username, "reply")
    await alice.next_event(Message)
    _, old_number = await alice.safety_number(bob.username)
    await bob.close()
    # Bob wipes his device and logs in again: a new identity for device 1.
    bob2 = await make_client(bob.username, signup=False)
    await bob2.login(bob.username, "correct horse battery staple", new_identity=True)
    warning = await alice.next_event(KeyChanged)
    assert isinstance(warning, KeyChanged)
    assert warning.username == bob.username
    assert warning.old_safety_number == old_number
    _, new_number = await alice.safety_number(bob.username)
    assert warning.safety_number == new_number != old_number
    _, bobs_view = await bob2.safety_number(alice.username)
    assert bobs_view == new_number  # both sides show the same number
    # Sending now needs an explicit acceptance (identity policy, #20).
    with pytest.raises(SafetyNumberChanged) as refused:
        await alice.send(bob.username, "not yet")
    assert refused.value.old_safety_number == old_number
    assert refused.value.new_safety_number == new_number and not refused.value.verified
    assert alice.outbox() == []
    assert not [e for e in alice.history(bob.user_id) if e.get("text") == "not yet"]
    # Alice goes on with a new session to the new identity, once she accepts it.
    await bob2.connect()
    await alice.send(bob.username, "after", accept_new_identity=True)
    got = await bob2.next_event(Message)
    assert isinstance(got, Message) and got.text == "after"
    system = [e for e in alice.history(bob.user_id) if e["dir"] == "system"]
    assert len(system) == 1 and new_number in system[0]["text"]


async def test_reconnects_after_its_gateway_dies_and_syncs(
    make_client: MakeClient, system: System
) -> None:
    alice, bob = await make_client(), await make_client()
    assert bob.username
    await alice.connect()
    await bob.connect()
    assert bob._conn is not None and bob._conn.ready_frame is not None
    victim = str(bob._conn.ready_frame.gateway)
    system.procs.kill(victim)
    try:
        await alice.send(bob.username, "while bob reconnects", wait=None)
        got = await bob.next_event(Message, timeout=60)
        assert isinstance(got, Message) and got.text == "while bob reconnects"
        assert bob._conn.connects >= 2
    finally:
        system.restart(victim)
        system.wait_ready()


async def test_the_socket_reauthenticates_with_a_fresh_token(make_client: MakeClient) -> None:
    alice = await make_client(reauth_every=0.3)
    bob = await make_client()
    assert alice.username
    await alice.connect()
    await bob.connect()
    conn = alice._conn
    assert conn is not None
    from tests.support.aio import eventually

    await eventually(lambda: asyncio.sleep(0, conn.reauths), lambda n: n >= 2, timeout=10)
    assert conn.connects == 1  # the same socket all along
    await bob.send(alice.username, "still there")
    got = await alice.next_event(Message)
    assert isinstance(got, Message) and got.text == "still there"


async def test_a_renewal_refreshes_a_token_that_would_run_out_before_the_next_one(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A renewal sends the token again while it outlives the next renewal (each refresh
    rotates the refresh token), and refreshes one that would run out before it: until
    2026-12-08 a token with 2-4 minutes left was sent as it was, ran out before the next
    renewal, and the gateway closed the socket (every ~15 minutes)."""
    alice = await make_client(reauth_every=0.3)
    assert alice.username
    await alice.connect()
    conn = alice._conn
    assert conn is not None
    first = alice.account.api.token
    await eventually(lambda: asyncio.sleep(0, conn.reauths), lambda n: n >= 2, timeout=10)
    assert alice.account.api.token == first  # 15 minutes left: sent again, not refreshed
    import parley.connection

    # Now every token "would run out before the next renewal": each renewal refreshes.
    monkeypatch.setattr(parley.connection, "TOKEN_MARGIN_S", 900, raising=False)
    seen = {first}

    async def tokens() -> int:
        seen.add(alice.account.api.token)
        return len(seen)

    await eventually(tokens, lambda n: n >= 3, timeout=10)
    assert conn.connects == 1  # the same socket all along


async def test_a_draining_gateway_sends_the_client_elsewhere(
    make_client: MakeClient, system: System
) -> None:
    import signal

    alice, bob = await make_client(), await make_client()
    assert bob.username
    await alice.connect()
    await bob.connect()
    assert bob._conn is not None and bob._conn.ready_frame is not None
    victim = str(bob._conn.ready_frame.gateway)
    system.procs.kill(victim, sig=signal.SIGTERM)  # the pod drains: `reconnect`, close 1001
    try:
        await alice.send(bob.username, "after the drain", wait=None)
        got = await bob.next_event(Message, timeout=60)
        assert isinstance(got, Message) and got.text == "after the drain"
        assert bob._conn.connects >= 2
        assert bob._conn.ready_frame.gateway != victim
    finally:
        system.restart(victim)
        system.wait_ready()


async def _change_identity(make_client: MakeClient, username: str) -> Client:
    """The directory now serves a new identity for ``username`` (an attacker's, as far
    as the contact can tell): a new install registers it through the real API."""
    other = await make_client(username, signup=False)
    await other.login(username, PASSWORD, new_identity=True)
    return other


async def test_a_verified_contacts_new_key_blocks_sending_until_verified_again(
    make_client: MakeClient,
) -> None:
    alice, bob = await make_client(), await make_client()
    assert alice.username and bob.username and bob.user_id
    await alice.connect()
    await alice.send(bob.username, "hello")
    _, number = await alice.safety_number(bob.username)
    assert number is not None
    await alice.verify(bob.username, number)
    assert alice.identity_status(bob.user_id)["verified"]
    await bob.close()
    await _change_identity(make_client, bob.username)
    warning = await alice.next_event(KeyChanged)
    assert isinstance(warning, KeyChanged)
    status = alice.identity_status(bob.user_id)
    assert status == {"verified": False, "pending_change": True, "was_verified": True}
    # A verified contact: the send-time flag is not enough.
    for accept in (False, True):
        with pytest.raises(SafetyNumberChanged) as refused:
            await alice.send(bob.username, "to mallory?", accept_new_identity=accept)
        assert refused.value.verified and refused.value.old_safety_number == number
        assert "You had verified" in str(refused.value)
    assert alice.outbox() == []
    # Verifying with the old number does nothing; with the new one it resumes.
    with pytest.raises(ParleyError, match="changed while you were comparing"):
        await alice.verify(bob.username, number)
    _, new_number = await alice.safety_number(bob.username)
    assert new_number is not None and new_number != number
    await alice.verify(bob.username, new_number)
    assert alice.identity_status(bob.user_id)["verified"]
    await alice.send(bob.username, "verified again")


async def test_a_withheld_key_change_announcement_still_blocks_the_send(
    make_client: MakeClient,
) -> None:
    """The server does not announce the change (no ``key_changed``): the send goes out
    on the old sessions, the gateway answers ``devices_changed``, and the resend for
    the new identity is refused instead of encrypted to it."""
    alice, bob = await make_client(), await make_client()
    assert alice.username and bob.username and bob.user_id

    async def withheld(frame: object) -> None:
        return None

    alice.messenger._on_key_changed = withheld  # type: ignore[assignment,method-assign]
    await alice.connect()
    await alice.send(bob.username, "hello")
    await bob.close()
    await _change_identity(make_client, bob.username)
    with pytest.raises(SafetyNumberChanged):
        await alice.send(bob.username, "to mallory?", timeout=20)
    assert alice.outbox() == []
    failed = [e for e in alice.history(bob.user_id) if e.get("text") == "to mallory?"]
    assert [e["status"] for e in failed] == ["failed"]
    await alice.accept_identity(bob.username)
    await alice.send(bob.username, "accepted")


async def test_a_push_during_a_long_sync_skips_nothing(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the sync's next page started after the highest seq seen, so a message
    pushed while the first page was read (a later seq) made it skip the rest of
    the inbox, and the cumulative ack then deleted what it skipped: 250 of 451
    messages were lost. The pages now follow their own cursor."""
    from parley import connection
    from parley_contract import frames as f

    alice, bob = await make_client(), await make_client()
    assert bob.username and alice.username and alice.user_id
    await alice.connect()
    texts = [f"waiting {i}" for i in range(450)]
    for i in range(0, len(texts), 50):
        await asyncio.gather(*(alice.send(bob.username, t, wait="stored")
                               for t in texts[i : i + 50]))  # fmt: skip
    request = connection.Connection.request
    pushed: list[bool] = []

    async def first_page_then_a_push(self: connection.Connection, frame: object,
                                     timeout: float = 20.0) -> object:  # fmt: skip
        answer = await request(self, frame, timeout)  # type: ignore[arg-type]
        if isinstance(frame, f.Sync) and not pushed and self is bob.messenger.conn:
            pushed.append(True)
            await alice.send(bob.username or "", "pushed mid-sync", wait="stored")
            # The push reaches bob's socket (and its handler) before the next page.
            await bob.next_event(Message)
        return answer

    monkeypatch.setattr(connection.Connection, "request", first_page_then_a_push)
    await bob.connect()
    assert pushed
    got = [e["text"] for e in bob.history(alice.user_id)]
    assert sorted(got) == sorted([*texts, "pushed mid-sync"])
    # Nothing is left on the server, and nothing was lost by the acks.
    await bob.sync()
    assert len(bob.history(alice.user_id)) == 451


async def test_concurrent_first_sends_to_a_new_contact_claim_its_keys_once(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fifty sends at once to someone never written to: one bundle claim (one
    one-time prekey), not one per send (which drained the prekeys and ran into the
    key directory's claim limit); every message arrives."""
    alice, bob = await make_client(), await make_client()
    assert bob.username and bob.user_id and alice.user_id
    await alice.connect()
    claims: list[str] = []
    claim = alice.messenger.keys.claim

    async def counted(user_id: str, device_ids: list[int]) -> dict[str, object]:
        claims.append(user_id)
        return await claim(user_id, device_ids)

    monkeypatch.setattr(alice.messenger.keys, "claim", counted)
    texts = [f"hello {i}" for i in range(50)]
    await asyncio.gather(*(alice.send(bob.username, t, wait="stored") for t in texts))
    assert claims.count(bob.user_id) == 1
    await bob.connect()
    await bob.sync()
    assert sorted(e["text"] for e in bob.history(alice.user_id)) == sorted(texts)


def _first_message_fails(
    client: Client, monkeypatch: pytest.MonkeyPatch, error: Exception, *, once: bool = False
) -> list[int]:
    """Make the first message ``client`` handles raise ``error`` (only the first time it
    comes, or every time); returns the seqs it failed for."""
    handle = client.messenger._on_message
    failed: list[int] = []

    async def failing(frame: f.Message) -> None:
        if not failed or (not once and frame.seq == failed[0]):
            failed.append(frame.seq)
            raise error
        await handle(frame)

    monkeypatch.setattr(client.messenger, "_on_message", failing)
    return failed


async def test_a_message_that_fails_to_process_is_not_acknowledged_past(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: a frame whose handler raised was logged and skipped, and the next
    push's cumulative ack deleted it on the server: the message was lost. Now the
    socket drops before another frame is handled, and the next sync brings it again."""
    alice, bob = await make_client(), await make_client()
    assert bob.username and alice.user_id
    await alice.connect()
    await bob.connect()
    failures = _first_message_fails(bob, monkeypatch, OSError("the disk was full"), once=True)
    connects = bob._conn.connects if bob._conn else 0
    await alice.send(bob.username, "first", wait="stored")
    await alice.send(bob.username, "second", wait="stored")
    got = [await bob.next_event(Message, timeout=30) for _ in range(2)]
    assert [m.text for m in got if isinstance(m, Message)] == ["first", "second"]
    assert failures and bob._conn is not None and bob._conn.connects == connects + 1
    await bob.sync()  # nothing left behind, nothing shown twice
    assert [e["text"] for e in bob.history(alice.user_id)] == ["first", "second"]


async def test_a_failed_sync_after_a_reconnect_is_tried_again_and_loses_nothing(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: a sync refused after a reconnect (delivery unavailable) was only
    logged; the client still counted itself synced from the socket before, so the
    next push moved its cursor and acknowledged past the backlog the sync never
    read, which the server then deleted. Now the failed sync drops the socket and
    the next one syncs again; pushes move nothing until a sync is done."""
    from parley import connection

    alice, bob = await make_client(), await make_client()
    assert bob.username and alice.user_id
    await alice.connect()
    await bob.connect()
    conn = bob._conn
    assert conn is not None
    session, request = connection.Connection._session, connection.Connection.request
    offline, release, refused = asyncio.Event(), asyncio.Event(), asyncio.Event()
    state = {"refuse": True}

    async def held(self: connection.Connection, refresh: bool) -> str:
        if self is conn and not release.is_set():
            offline.set()
            await release.wait()  # until the backlog is written
        return await session(self, refresh)

    async def refuse_once(self: connection.Connection, frame: object,
                          timeout: float = 20.0) -> object:  # fmt: skip
        if self is conn and isinstance(frame, f.Sync) and state["refuse"]:
            state["refuse"] = False
            refused.set()
            return f.Error(id=frame.id, code="service_unavailable", message="try again")
        return await request(self, frame, timeout)  # type: ignore[arg-type]

    monkeypatch.setattr(connection.Connection, "_session", held)
    monkeypatch.setattr(connection.Connection, "request", refuse_once)
    assert conn._ws is not None
    await conn._ws.close()  # the socket drops; the next connection waits for us
    await asyncio.wait_for(offline.wait(), 10)
    backlog = [f"while away {i}" for i in range(5)]
    for text in backlog:
        await alice.send(bob.username, text, wait="stored")
    release.set()
    await asyncio.wait_for(refused.wait(), 10)
    await alice.send(bob.username, "live", wait="stored")  # pushed after the failed sync
    texts: set[str] = set()
    while len(texts) < 6:
        got = await bob.next_event(Message, timeout=30)
        assert isinstance(got, Message)
        texts.add(got.text)
    assert texts == {*backlog, "live"}
    await bob.sync()
    assert sorted(e["text"] for e in bob.history(alice.user_id)) == sorted([*backlog, "live"])


async def test_a_long_running_client_keeps_nothing_per_message_once_answered(
    make_client: MakeClient,
) -> None:
    """Each send kept two futures until its ``delivered``: a message to a device that
    stays offline never gets one (nor does a room message), so a bot kept them all for
    the life of its process. They go once nothing waits for them any more."""
    alice, bob = await make_client(), await make_client()
    assert bob.username
    await alice.connect()
    for i in range(5):
        await alice.send(bob.username, f"to an offline device {i}")  # waits for accepted
    await alice.send(bob.username, "and one more", wait="stored")
    assert alice.messenger._outgoing == {}


async def test_a_message_that_fails_for_what_it_holds_does_not_block_the_inbox(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A frame that fails for its content (a sender's malformed payload) fails at every
    connect: dropping the socket for it would block everything after it, for good, at
    a sender's will. It is logged and passed; only this side's failures drop it."""
    alice, bob = await make_client(), await make_client()
    assert bob.username
    await alice.connect()
    await bob.connect()
    _first_message_fails(bob, monkeypatch, ValueError("group_id must be a non-empty string"))
    connects = bob._conn.connects if bob._conn else 0
    await alice.send(bob.username, "poison", wait="stored")
    await alice.send(bob.username, "after it", wait="stored")
    got = await bob.next_event(Message, timeout=30)
    assert isinstance(got, Message) and got.text == "after it"
    assert bob._conn is not None and bob._conn.connects == connects  # never dropped


class _Directory:
    """Bob's reads of device lists fail while ``down`` (the key directory is away)."""

    def __init__(self, client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
        from parley.errors import ServerUnavailable

        self.down = True
        self.failed = 0
        keys = client.messenger.keys
        real = keys.directory_list

        async def directory_list(user_id: str) -> object:
            if self.down:
                self.failed += 1
                raise ServerUnavailable("the key directory is unavailable")
            return await real(user_id)

        monkeypatch.setattr(keys, "directory_list", directory_list)


def _texts(client: Client, peer: str) -> list[tuple[str, str]]:
    return [(e["kind"], e["text"]) for e in client.history(peer)]


async def wait_for(condition: Callable[[], bool]) -> None:
    async def probe() -> bool:
        return condition()

    await eventually(probe, bool)


async def test_a_message_from_a_new_device_is_kept_aside_while_the_directory_is_away(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first message from a device not seen yet needs its device list. While the key
    directory cannot answer, it was not processed and held the whole inbox (the socket
    dropped and every sync stopped on it again): now it is kept aside in the local store
    and acknowledged, the inbox reads on, and it is read once the directory answers,
    in order with the device's later messages."""
    from parley import messenger

    monkeypatch.setattr(messenger, "ASIDE_RETRY", (0.05, 0.2))
    alice, bob, carol = await make_client(), await make_client(), await make_client()
    assert bob.username and alice.user_id and carol.user_id
    for client in (alice, bob, carol):
        await client.connect()
    await carol.send(bob.username, "before", wait="stored")
    assert (await bob.next_event(Message, timeout=30)).text == "before"  # type: ignore[attr-defined]
    directory = _Directory(bob, monkeypatch)
    connects = bob._conn.connects if bob._conn else 0

    await alice.send(bob.username, "hello", wait="stored")
    await alice.send(bob.username, "again", wait="stored")
    await carol.send(bob.username, "meanwhile", wait="stored")
    got = await bob.next_event(Message, timeout=30)
    assert isinstance(got, Message) and (got.peer_id, got.text) == (carol.user_id, "meanwhile")
    store = bob.store.read()
    assert [k["body"] != "" for k in store.aside()] == [True, True]  # kept, in order
    assert directory.failed >= 1 and _texts(bob, alice.user_id) == []
    # Acknowledged: the server's inbox moved past them (a new socket's sync reads none).
    assert int(store.get("last_seq") or 0) >= max(k["seq"] for k in store.aside())
    kept = msgspec_message(store.aside()[0])
    await bob.messenger._on_message(kept)  # the same frame again (a lost ack): kept once
    assert bob.store.read().aside_count() == 2

    directory.down = False
    first = await bob.next_event(Message, timeout=30)
    second = await bob.next_event(Message, timeout=30)
    assert [(e.peer_id, e.text) for e in (first, second)] == [  # type: ignore[attr-defined]
        (alice.user_id, "hello"),
        (alice.user_id, "again"),
    ]
    assert _texts(bob, alice.user_id) == [("message", "hello"), ("message", "again")]
    assert bob.store.read().aside_count() == 0
    assert bob._conn is not None and bob._conn.connects == connects  # never dropped


def msgspec_message(raw: dict[str, object]) -> f.Message:
    import msgspec

    return msgspec.convert(raw, f.Message)


async def test_a_device_s_next_message_reads_what_it_kept_aside_first(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kept aside, then the directory answers and the device's next message comes before
    any retry: the kept one (which starts the session) is read first, then the new one."""
    from parley import messenger

    monkeypatch.setattr(messenger, "ASIDE_RETRY", (3600.0, 3600.0))  # no retry in the test
    monkeypatch.setattr(messenger, "ASIDE_ASK_EVERY", 0.0)  # the list asked again at once
    alice, bob = await make_client(), await make_client()
    assert bob.username and alice.user_id
    await alice.connect()
    await bob.connect()
    directory = _Directory(bob, monkeypatch)
    await alice.send(bob.username, "one", wait="stored")
    await wait_for(lambda: bob.store.read().aside_count() == 1)
    directory.down = False
    await alice.send(bob.username, "two", wait="stored")
    got = [await bob.next_event(Message, timeout=30) for _ in range(2)]
    assert [e.text for e in got] == ["one", "two"]  # type: ignore[attr-defined]
    assert _texts(bob, alice.user_id) == [("message", "one"), ("message", "two")]
    assert bob.store.read().aside_count() == 0


async def test_what_is_kept_aside_is_read_after_a_restart(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kept aside is kept on disk: a client closed meanwhile reads it after its next sync
    (the server no longer has it: it was acknowledged)."""
    from parley import messenger

    monkeypatch.setattr(messenger, "ASIDE_RETRY", (3600.0, 3600.0))  # only the sync reads it
    alice, bob = await make_client(), await make_client()
    assert bob.username and bob.user_id and alice.user_id
    await alice.connect()
    await bob.connect()
    _Directory(bob, monkeypatch)
    await alice.send(bob.username, "kept", wait="stored")
    await wait_for(lambda: bob.store.read().aside_count() == 1)
    await wait_for(lambda: bob.messenger._ack_task is not None and bob.messenger._ack_task.done())
    data_dir = bob.data_dir
    await bob.close()

    again = await make_client(bob.username, signup=False, data_dir=data_dir)
    await again.connect()
    got = await again.next_event(Message, timeout=30)
    assert isinstance(got, Message) and got.text == "kept"
    assert _texts(again, alice.user_id) == [("message", "kept")]
    assert again.store.read().aside_count() == 0


async def test_a_resend_for_new_devices_waits_out_a_key_directory_blip(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Audit finding: the contact linked a device, the gateway answered
    ``devices_changed``, and the resend's read of the new device list met a 503: the
    message left the outbox as failed, never accepted. Now it is held and tried again."""
    from parley import messenger

    monkeypatch.setitem(messenger._SEND_AGAIN, "service_unavailable", (0.2, 0.5))
    alice, bob = await make_client(), await make_client()
    assert bob.username and bob.user_id
    await alice.connect()
    await alice.send(bob.username, "first")
    phone = await _link_phone(make_client, bob)
    await phone.connect()
    directory = _Directory(alice, monkeypatch)  # down for alice's next reads

    async def back_soon() -> None:
        await eventually(_probe(lambda: directory.failed), lambda n: n >= 1)
        directory.down = False

    coming_back = asyncio.create_task(back_soon())
    await alice.send(bob.username, "to both devices", timeout=30)
    await coming_back
    got = await phone.next_event(Message, timeout=30)
    assert isinstance(got, Message) and got.text == "to both devices"
    sent = [e for e in alice.history(bob.user_id) if e.get("text") == "to both devices"]
    assert [e["status"] != "failed" for e in sent] == [True] and alice.outbox() == []


async def _link_phone(make_client: MakeClient, owner: Client) -> Client:
    """A second device of ``owner``'s account, linked and approved."""
    assert owner.username
    phone = await make_client(owner.username, signup=False)
    code = await phone.link_device(owner.username, PASSWORD)
    linked = asyncio.create_task(phone.wait_linked(60))
    await owner.approve_device(code)
    await linked
    return phone


def _probe(value: Callable[[], object]) -> Callable[[], Awaitable[object]]:
    async def probe() -> object:
        return value()

    return probe


async def test_a_message_dropped_while_its_resend_reads_keys_stays_dropped(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review finding: a ``devices_changed`` resend read the new device lists, the user
    dropped the message from the outbox meanwhile (it was stuck), and the resend queued
    it again and sent it: "dropped" became accepted. It stays dropped now."""
    alice, bob = await make_client(), await make_client()
    assert bob.username and bob.user_id
    await alice.connect()
    await alice.send(bob.username, "first")
    await _link_phone(make_client, bob)
    keys = alice.messenger.keys
    real = keys.directory_list
    dropped: list[str] = []
    mark: list[int] = []
    sent: list[str] = []

    async def directory_list(user_id: str) -> object:
        for queued in alice.outbox():  # the user drops it while the lists are read
            dropped.append(str(queued["client_id"]))
            mark.append(len(sent))
            await alice.drop_outbox(str(queued["client_id"]))
        return await real(user_id)

    redo = alice.messenger._redo
    redone = asyncio.Event()

    async def watched(client_id: str, lists: object = None) -> None:
        try:
            await redo(client_id, lists)  # type: ignore[arg-type]
        finally:
            redone.set()

    monkeypatch.setattr(alice.messenger, "_redo", watched)
    monkeypatch.setattr(keys, "directory_list", directory_list)
    send_paced = alice.messenger._send_paced

    async def counted(frame: f.Send | f.RoomSend) -> None:
        sent.append(frame.id)
        await send_paced(frame)

    monkeypatch.setattr(alice.messenger, "_send_paced", counted)
    client_id = await alice.send(bob.username, "stuck, then dropped", wait=None)
    await asyncio.wait_for(redone.wait(), 30)
    assert dropped == [client_id] and alice.outbox() == []
    assert client_id in sent[: mark[0]] and client_id not in sent[mark[0] :]  # not resent
    [entry] = [e for e in alice.history(bob.user_id) if e.get("text") == "stuck, then dropped"]
    assert entry["status"] == "failed"


async def test_a_hung_key_directory_holds_a_new_device_s_message_for_seconds_only(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review finding: a directory that takes the connection and never answers held the
    frame loop for the SDK's 20 s request timeout per new device (a sync page's reply
    timed out, the socket dropped, the page came again: stuck), and a copy sent again
    of a kept message asked again. Now a read waits ``ASIDE_ASK_TIMEOUT``, none is asked
    for ``ASIDE_ASK_EVERY`` after one failed, and a kept copy asks nothing."""
    from parley import messenger

    monkeypatch.setattr(messenger, "ASIDE_ASK_TIMEOUT", 0.3)
    monkeypatch.setattr(messenger, "ASIDE_ASK_EVERY", 3600.0)
    monkeypatch.setattr(messenger, "ASIDE_RETRY", (3600.0, 3600.0))
    alice, bob, carol = await make_client(), await make_client(), await make_client()
    assert bob.username and alice.user_id and carol.user_id
    for client in (alice, bob, carol):
        await client.connect()
    await carol.send(bob.username, "known", wait="stored")
    assert (await bob.next_event(Message, timeout=30)).text == "known"  # type: ignore[attr-defined]
    asked: list[str] = []
    hung = asyncio.Event()

    async def directory_list(user_id: str) -> object:
        asked.append(user_id)
        await hung.wait()  # never answers
        raise AssertionError("unreachable")

    monkeypatch.setattr(bob.messenger.keys, "directory_list", directory_list)
    await alice.send(bob.username, "new device", wait="stored")
    await carol.send(bob.username, "after it", wait="stored")
    got = await bob.next_event(Message, timeout=10)
    assert isinstance(got, Message) and got.text == "after it"
    assert asked == [alice.user_id] and bob.store.read().aside_count() == 1
    kept = msgspec_message(bob.store.read().aside()[0])
    await bob.messenger._on_message(kept)  # a copy sent again
    assert asked == [alice.user_id] and bob.store.read().aside_count() == 1


async def test_a_second_initiator_of_a_reused_prekey_sees_a_could_not_decrypt_not_silence(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory hands bob's same one-time prekeys to alice and to carol. Before:
    carol's messages were taken for replays (PrekeyReused made ReplayedMessage) and
    dropped, acknowledged, with no history entry and no event, every later one of
    her session too. Now each is a "could not decrypt" line and a DecryptFailed
    event, and the pair recovers when bob writes to carol (a new session, which
    carol then sends on). docs/crypto.md, "PQXDH"."""
    from parley.client import DecryptFailed

    alice, carol, bob = await make_client(), await make_client(), await make_client()
    assert bob.username and bob.user_id and alice.user_id and carol.user_id and carol.username
    claimed: list[dict[str, object]] = []
    alice_claim = alice.messenger.keys.claim

    async def recorded(user_id: str, device_ids: list[int]) -> dict[str, object]:
        answer = await alice_claim(user_id, device_ids)
        if user_id == bob.user_id:
            claimed.append(answer)
        return answer

    async def handed_out_again(user_id: str, device_ids: list[int]) -> dict[str, object]:
        assert user_id == bob.user_id and claimed
        return claimed[0]

    monkeypatch.setattr(alice.messenger.keys, "claim", recorded)
    monkeypatch.setattr(carol.messenger.keys, "claim", handed_out_again)
    await alice.connect()
    await carol.connect()
    await alice.send(bob.username, "from alice", wait="stored")
    await carol.send(bob.username, "carol 1", wait="stored")
    await carol.send(bob.username, "carol 2", wait="stored")
    await bob.connect()  # syncs: alice's message first, it consumes the prekeys
    assert [e["text"] for e in bob.history(alice.user_id)] == ["from alice"]
    got = await bob.next_event(Message)
    assert isinstance(got, Message) and got.text == "from alice"
    assert _texts(bob, carol.user_id) == [("error", "[could not decrypt: PrekeyReused]")] * 2
    for _ in range(2):
        failed = await bob.next_event(DecryptFailed, timeout=5)
        assert isinstance(failed, DecryptFailed)
        assert (failed.peer_id, failed.reason) == (carol.user_id, "PrekeyReused")
    # Bob writes back: he has no session with carol's device, so he starts one; carol
    # sends on it from then on, and bob reads her.
    await bob.send(carol.username, "say again?")
    got = await carol.next_event(Message)
    assert isinstance(got, Message) and got.text == "say again?"
    await carol.send(bob.username, "carol 3")
    got = await bob.next_event(Message)
    assert isinstance(got, Message) and got.text == "carol 3"


async def test_a_directory_naming_another_account_key_for_us_adds_no_device_of_ours(
    make_client: MakeClient,
) -> None:
    """Audit finding: our own device list was trusted on first sight under whatever
    account key the directory named, like a contact's, though this device holds the
    account key. A directory serving our list under its own key, naming a device 666 of
    its own, was trusted (only a pending change, shown nowhere), and every later message
    was also encrypted to that device as one of "our other devices"."""
    alice, bob = await make_client(), await make_client()
    assert alice.username and bob.username and alice.user_id
    me = alice.user_id
    await alice.connect()
    await alice.send(bob.username, "first")
    real = await alice.messenger.keys.directory_list(me)
    held = SignedDeviceList.from_json(real).device_list
    attacker, evil = AccountKey.generate(), Device.generate()
    forged = attacker.sign(
        DeviceList(me, held.version + 1, [*held.devices, DeviceEntry.of(666, "x", evil.identity)])
    )
    lying = {**real, **forged.to_json(), "account_key": b64encode(attacker.public)}
    before = alice.messenger._store().read().peer(me)
    with pytest.raises(UntrustedKeys):
        await alice.messenger._refresh_peer(me, lying)
    assert alice.messenger._store().read().peer(me) == before  # nothing trusted
    assert 666 not in alice.messenger._peer(alice.messenger._store().read(), me).devices

    # The lying directory answers every read of our list: nothing goes out at all.
    async def lie(user_id: str) -> dict[str, object]:
        return lying if user_id == me else await real_list(user_id)

    real_list = alice.messenger.keys.directory_list
    alice.messenger.keys.directory_list = lie  # type: ignore[method-assign]
    with pytest.raises(UntrustedKeys):
        await alice.messenger._refresh_peer(me)
    alice.messenger.keys.directory_list = real_list  # type: ignore[method-assign]
    # Our real list, under our key, is still trusted.
    state = await alice.messenger._refresh_peer(me)
    assert 666 not in state.devices
    await alice.send(bob.username, "still fine", wait="stored")
