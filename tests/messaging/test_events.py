"""Events from the key directory reach the right sockets through delivery: prekeys_low,
key_changed (revocations: tests/gateway/test_hub.py)."""

from __future__ import annotations

import orjson

from services.common.clients import Topics, kafka_producer
from tests.support.users import uid
from tests.support.wsclient import send_frame

from .conftest import Messaging


async def produce_event(messaging: Messaging, event: dict[str, object]) -> None:
    producer = kafka_producer(messaging.settings)
    await producer.start()
    try:
        await producer.send_and_wait(
            Topics(messaging.settings).events,
            orjson.dumps(event),
            key=str(event["user_id"]).encode(),
        )
    finally:
        await producer.stop()


async def test_prekeys_low_reaches_the_devices_user(messaging: Messaging) -> None:
    user = uid()
    client = await messaging.connect(user, pod=1)
    await produce_event(
        messaging,
        {"type": "prekeys_low", "user_id": user, "device_id": 1, "one_time": 3,
         "kem_one_time": 9, "threshold": 10},
    )  # fmt: skip
    frame = await client.expect("prekeys_low", timeout=20)
    assert frame["one_time"] == 3
    assert frame["device_id"] == 1


async def test_key_changed_warns_contacts_online_and_offline(messaging: Messaging) -> None:
    alice_id, bob_id, carol_id = uid(), uid(), uid()
    alice = await messaging.connect(alice_id, pod=0)
    bob = await messaging.connect(bob_id, pod=1)
    messaging.issuer.users.add(carol_id)
    await alice.send(send_frame("hi", bob_id, "aGk"))
    await alice.expect("stored", id="hi")
    await bob.expect("message")
    await bob.send(send_frame("yo", carol_id, "eW8"))
    await bob.expect("stored", id="yo")

    account_key = "bmV3IGFjY291bnQga2V5"
    await produce_event(
        messaging, {"type": "key_changed", "user_id": bob_id, "account_key": account_key}
    )
    warned = await alice.expect("key_changed", timeout=20)
    assert warned["user_id"] == bob_id
    assert warned["account_key"] == account_key
    # Carol was offline: the warning waits in her inbox, after Bob's message.
    carol = await messaging.connect(carol_id)
    await carol.send({"op": "sync", "id": "s", "after": 0})
    frames = []
    while (frame := await carol.next())["op"] != "synced":
        frames.append(frame)
    assert [f["op"] for f in frames] == ["message", "key_changed"]
    assert frames[1]["user_id"] == bob_id
