"""Events reach Kafka at least once: the outbox keeps what the broker did not confirm."""

from __future__ import annotations

import orjson
import pytest
from parley_contract import envelopes as e

from services.keys import events as ev
from tests.keys.conftest import EventLog, KeysApi
from tests.keys.keygen import AccountKeys


async def test_an_unconfirmed_event_is_sent_by_the_drain(
    api: KeysApi, events: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = api.keys.store
    await api.device("bob")

    async def broker_away(*_: object) -> bool:
        return False

    with monkeypatch.context() as m:
        m.setattr(store, "send_event", broker_away)
        new = AccountKeys()  # a reset: the owner lost every device
        status, body = await api.put_account("bob", new.registration("bob", []))
        assert (status, body) == (200, {"version": 1, "created": False, "changed": True})
    # key_changed, and device 1's removal.
    assert await store.outbox.size() == 2
    assert await events.settle("bob") == []
    # Leased to the request that tried first; once the lease is over, the drain sends them.
    await store.outbox.coll.update_many({}, {"$set": {"due": 0.0}})
    assert await api.keys.events.drain_once() == 2
    assert await store.outbox.size() == 0
    assert await events.settle("bob") == [
        {"type": "key_changed", "user_id": "bob", "account_key": new.public},
        {"type": "device_removed", "user_id": "bob", "device_id": 1},
    ]
    [record] = [r for r in events.records if r[1]["type"] == "key_changed"]
    assert len(record[1]["event_id"]) == 24


async def test_a_redelivered_event_keeps_its_event_id(
    api: KeysApi, events: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = api.keys.store
    sent = store.send_event

    async def acked_but_not_recorded(*args: object) -> bool:
        await sent(*args)  # type: ignore[arg-type]
        return False  # as if the ack was lost on the way back

    monkeypatch.setattr(store, "send_event", acked_but_not_recorded)
    await api.keys.events.publish(ev.prekeys_low("bob", 1, 0, 0, 10))
    monkeypatch.undo()
    await store.outbox.coll.update_many({}, {"$set": {"due": 0.0}})
    assert await api.keys.events.drain_once() == 1
    await events.settle("bob")
    ids = [r[1]["event_id"] for r in events.records if r[1]["type"] == "prekeys_low"]
    assert len(ids) == 2 and ids[0] == ids[1]


async def test_the_drain_leaves_entries_while_the_broker_is_away(
    api: KeysApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = api.keys.store
    await store.outbox.add("bob", b'{"type":"x","user_id":"bob"}', [], due=0.0)

    async def broker_away(*_: object) -> bool:
        return False

    monkeypatch.setattr(store, "send_event", broker_away)
    assert await api.keys.events.drain_once() == 0
    entry = await store.outbox.coll.find_one({})
    assert entry is not None and entry["attempts"] == 1 and entry["due"] > 0


async def test_sent_events_leave_no_outbox_entry(api: KeysApi, events: EventLog) -> None:
    await api.device("bob")
    await api.put_account("bob", AccountKeys().registration("bob", []), request_id="rid-reset")
    assert [e["type"] for e in await events.settle("bob")] == ["key_changed", "device_removed"]
    assert await api.keys.store.outbox.size() == 0
    for key, value, headers in events.records[-3:-1]:
        assert key == b"bob" and ("request_id", b"rid-reset") in headers, value


async def test_events_are_the_contracts_models(api: KeysApi, events: EventLog) -> None:
    """What delivery decodes (parley_contract.envelopes.Event), record for record."""
    await api.device("bob")
    await api.unlist("bob", 1)
    await api.put_account("bob", AccountKeys().registration("bob", []))
    await api.keys.events.publish(ev.prekeys_low("bob", 2, 1, 2, 10))
    await events.settle("bob")
    decoded = [
        e.decode_event(orjson.dumps(v)) for _, v, _ in events.records if v["type"] != "test_marker"
    ]
    assert [type(d) for d in decoded] == [
        e.DeviceRemovedEvent,
        e.KeyChangedEvent,
        e.PrekeysLowEvent,
    ]


async def test_a_reset_whose_process_dies_after_the_change_still_announces_it(
    api: KeysApi, events: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: ``key_changed`` was written to the outbox only after the new key was,
    so a process that died in between lost it for good (a retry finds the key
    registered and changes nothing) and contacts were never warned. Now it is held
    before the change and the drain sends it once the change is there."""
    store = api.keys.store
    await api.device("bob")

    async def dies(*_: object) -> None:
        raise RuntimeError("killed")

    new = AccountKeys()
    with monkeypatch.context() as m:
        m.setattr(api.keys.events, "release", dies)
        status, _ = await api.put_account("bob", new.registration("bob", []))
        assert status == 500
    status, body = await api.put_account("bob", new.registration("bob", []))
    assert (status, body["changed"]) == (200, False)  # the retry changes nothing
    await store.outbox.coll.update_many({}, {"$set": {"due": 0.0}})
    assert await api.keys.events.drain_once() == 1
    assert {"type": "key_changed", "user_id": "bob", "account_key": new.public} in (
        await events.settle("bob")
    )


async def test_an_event_held_for_a_change_that_never_committed_is_dropped(
    api: KeysApi, events: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = api.keys.store
    await api.device("bob")

    async def dies(*_: object, **__: object) -> bool:
        raise RuntimeError("killed before the write")

    with monkeypatch.context() as m:
        m.setattr(store, "replace_account", dies)
        status, _ = await api.put_account("bob", AccountKeys().registration("bob", []))
        assert status == 500
    assert await store.outbox.size() == 1  # held, leased
    await store.outbox.coll.update_many({}, {"$set": {"due": 0.0}})
    assert await api.keys.events.drain_once() == 0
    assert await store.outbox.size() == 0
    assert "key_changed" not in [e["type"] for e in await events.settle("bob")]
