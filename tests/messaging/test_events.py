"""Events from other services reach the right sockets: revocations, prekeys_low, key_changed."""

from __future__ import annotations

import uuid

import orjson

from services.common.auth import revocation_channel
from services.common.clients import Topics, kafka_producer
from services.common.state import REDIS
from services.gateway.protocol import CLOSE_AUTH_FAILED, CLOSE_REVOKED
from tests.support.wsclient import WsClient

from .conftest import Messaging


def uid() -> str:
    return uuid.uuid4().hex[:12]


async def publish_revocation(messaging: Messaging, event: dict[str, str]) -> None:
    redis = messaging.gateways[0].server.app[REDIS]
    await redis.publish(revocation_channel(messaging.settings.redis_prefix), orjson.dumps(event))


async def test_session_revocation_closes_that_sessions_sockets_on_every_pod(
    messaging: Messaging,
) -> None:
    user, sid = uid(), uid()
    s1_pod_a = await messaging.connect(user, pod=0, sid=sid)
    s1_pod_b = await messaging.connect(user, pod=1, sid=sid)
    other_session = await messaging.connect(user, pod=1)
    await publish_revocation(messaging, {"type": "session_revoked", "user_id": user, "sid": sid})
    for client in (s1_pod_a, s1_pod_b):
        assert (await client.expect("error"))["code"] == "token_revoked"
        assert await client.wait_closed() == CLOSE_REVOKED
    await other_session.send({"op": "ping", "id": "still"})
    await other_session.expect("pong", id="still")


async def test_blocked_user_is_disconnected_and_cannot_come_back(messaging: Messaging) -> None:
    user = uid()
    client = await messaging.connect(user, pod=1)
    redis = messaging.gateways[0].server.app[REDIS]
    await redis.set(f"{messaging.settings.redis_prefix}:blocked:{user}", "1", ex=60)
    await publish_revocation(messaging, {"type": "user_blocked", "user_id": user})
    assert (await client.expect("error"))["code"] == "account_blocked"
    assert await client.wait_closed() == CLOSE_REVOKED
    again = await WsClient.connect(messaging.ws_url(0))
    messaging.clients.append(again)
    await again.send({"op": "auth", "token": messaging.issuer.token(user)})
    assert (await again.expect("error"))["code"] == "account_blocked"
    assert await again.wait_closed() == CLOSE_AUTH_FAILED


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
    await alice.send({"op": "send", "id": "hi", "to": bob_id, "body": "aGk"})
    await alice.expect("stored", id="hi")
    await bob.expect("message")
    await bob.send({"op": "send", "id": "yo", "to": carol_id, "body": "eW8"})
    await bob.expect("stored", id="yo")

    identity = {"signing_key": "c2s", "dh_key": "ZGg", "dh_sig": "c2ln"}
    await produce_event(
        messaging, {"type": "key_changed", "user_id": bob_id, "device_id": 1, "identity": identity}
    )
    warned = await alice.expect("key_changed", timeout=20)
    assert warned["user_id"] == bob_id
    assert warned["identity"] == identity
    # Carol was offline: the warning waits in her inbox, after Bob's message.
    carol = await messaging.connect(carol_id)
    await carol.send({"op": "sync", "id": "s", "after": 0})
    frames = []
    while (frame := await carol.next())["op"] != "synced":
        frames.append(frame)
    assert [f["op"] for f in frames] == ["message", "key_changed"]
    assert frames[1]["user_id"] == bob_id
