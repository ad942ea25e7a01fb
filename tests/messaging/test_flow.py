"""The core path: send, accepted, stored, real-time push across pods, sync, ack, delivered."""

from __future__ import annotations

from tests.support.users import uid
from tests.support.wsclient import send_frame

from .conftest import Messaging


async def test_message_crosses_pods_in_real_time_with_receipts(messaging: Messaging) -> None:
    alice_id, bob_id = uid(), uid()
    alice = await messaging.connect(alice_id, pod=0)
    bob = await messaging.connect(bob_id, pod=1)
    assert alice.ready["gateway"] != bob.ready["gateway"]

    await alice.send(send_frame("m1", bob_id, "Y2lwaGVydGV4dA"))
    accepted = await alice.expect("accepted", id="m1")
    msg = await bob.expect("message")
    assert msg["from"] == alice_id
    assert msg["body"] == "Y2lwaGVydGV4dA"
    assert msg["server_id"] == accepted["server_id"]
    assert msg["seq"] >= 1
    stored = await alice.expect("stored", id="m1")
    assert stored["server_id"] == accepted["server_id"]

    await bob.send({"op": "ack", "seq": msg["seq"]})
    delivered = await alice.expect("delivered", id="m1")
    assert delivered["server_id"] == accepted["server_id"]
    # Acknowledged: nothing waits any more.
    await bob.send({"op": "sync", "id": "s1", "after": 0})
    synced = await bob.expect("synced", id="s1")
    assert synced["more"] is False
    assert [f for f in bob.drain() if f["op"] == "message"] == []


async def test_offline_recipient_gets_everything_in_order_exactly_once(
    messaging: Messaging,
) -> None:
    alice_id, bob_id = uid(), uid()
    alice = await messaging.connect(alice_id)
    messaging.issuer.users.add(bob_id)
    n = 30
    await alice.send_stored(bob_id, [(f"c{i}", f"bXNn{i:03d}") for i in range(n)])

    bob = await messaging.connect(bob_id, pod=1)
    got: list[dict[str, object]] = []
    after = 0
    while True:
        await bob.send({"op": "sync", "id": f"p{after}", "after": after, "limit": 7})
        while True:
            frame = await bob.next()
            if frame["op"] == "synced":
                break
            assert frame["op"] == "message"
            got.append(frame)
        after = int(frame["last"])
        if not frame["more"]:
            break
    assert [g["body"] for g in got] == [f"bXNn{i:03d}" for i in range(n)]
    seqs = [int(str(g["seq"])) for g in got]
    assert seqs == sorted(set(seqs))


async def test_sender_cannot_read_or_ack_anothers_inbox(messaging: Messaging) -> None:
    alice_id, bob_id, eve_id = uid(), uid(), uid()
    alice = await messaging.connect(alice_id)
    messaging.issuer.users.add(bob_id)
    await alice.send(send_frame("x1", bob_id, "c2VjcmV0"))
    await alice.expect("stored", id="x1")
    eve = await messaging.connect(eve_id, pod=1)
    # Eve acks a huge sequence number and syncs: she sees and removes only her own inbox.
    await eve.send({"op": "ack", "seq": 10**9})
    await eve.send({"op": "sync", "id": "e", "after": 0})
    await eve.expect("synced", id="e")
    assert [f for f in eve.drain() if f["op"] == "message"] == []
    bob = await messaging.connect(bob_id)
    await bob.send({"op": "sync", "id": "b", "after": 0})
    msg = await bob.expect("message")
    assert msg["body"] == "c2VjcmV0"


async def test_redelivered_record_is_stored_once(messaging: Messaging) -> None:
    """The same envelope produced twice (a retried send, a replayed partition) is stored once."""
    alice_id, bob_id = uid(), uid()
    alice = await messaging.connect(alice_id)
    messaging.issuer.users.add(bob_id)
    await alice.send(send_frame("dup", bob_id, "b25jZQ"))
    await alice.send(send_frame("dup", bob_id, "b25jZQ"))
    first = await alice.expect("stored", id="dup")
    second = await alice.expect("stored", id="dup")
    assert first["server_id"] == second["server_id"]
    bob = await messaging.connect(bob_id, pod=1)
    await bob.send({"op": "sync", "id": "s", "after": 0})
    await bob.expect("synced", id="s")
    assert len([f for f in bob.drain() if f["op"] == "message"]) == 1


async def test_a_stale_device_list_is_refused_with_the_current_one_and_nothing_is_stored(
    messaging: Messaging,
) -> None:
    """Like Signal's 409: copies that do not match the recipient's (and the sender's
    own) devices are refused as a whole, with the lists the server holds."""
    alice_id, bob_id = uid(), uid()
    messaging.issuer.devices[bob_id] = [1, 2]
    messaging.issuer.devices[alice_id] = [1, 3]
    alice = await messaging.connect(alice_id, pod=0)
    bob1 = await messaging.connect(bob_id, pod=1)
    # Both lists come back: bob's devices and alice's *other* devices.
    both = {bob_id: [1, 2], alice_id: [3]}
    for frame, expect in [
        # bob's device 2 is missing
        (send_frame("s1", bob_id, "Ym9keQ", own=((alice_id, 3),)), both),
        # alice's other device 3 is missing
        (send_frame("s2", bob_id, "Ym9keQ", devices=(1, 2)), both),
        # a device bob does not have
        (send_frame("s3", bob_id, "Ym9keQ", devices=(1, 2, 7), own=((alice_id, 3),)),
         both),
    ]:  # fmt: skip
        await alice.send(frame)
        err = await alice.expect("error", id=frame["id"])
        assert err["code"] == "devices_changed"
        assert {d["user"]: sorted(d["devices"]) for d in err["devices"]} == expect
    # Nothing of the refused sends went anywhere; a send with the right copies does.
    good = send_frame("s4", bob_id, "Z29vZA", devices=(1, 2), own=((alice_id, 3),))
    await alice.send(good)
    await alice.expect("accepted", id="s4")
    msg = await bob1.expect("message")
    assert msg["body"] == "Z29vZA" and msg["from_device"] == 1
    await bob1.send({"op": "sync", "id": "all", "after": 0})
    synced = await bob1.expect("synced", id="all")
    assert synced["more"] is False
    bodies = [f["body"] for f in bob1.drain() if f["op"] == "message"]
    assert bodies in ([], ["Z29vZA"])  # the pushed copy may be re-sent by the sync


async def test_a_users_two_sockets_on_one_pod_get_each_receipt_once(messaging: Messaging) -> None:
    """Two sockets of one user on one pod: presence names that pod twice; the routing
    script publishes there once (a `delivered` receipt takes that path)."""
    alice_id, bob_id = uid(), uid()
    first = await messaging.connect(alice_id, pod=0)
    second = await messaging.connect(alice_id, pod=0)
    bob = await messaging.connect(bob_id, pod=1)
    await first.send(send_frame("twice", bob_id, "Y2lwaGVydGV4dA"))
    msg = await bob.expect("message")
    await bob.send({"op": "ack", "seq": msg["seq"]})
    for client in (first, second):
        await client.expect("delivered", id="twice")
    for client in (first, second):  # a round trip later, no second copy waits
        await client.send({"op": "ping", "id": "after"})
        await client.expect("pong", id="after")
        assert [f for f in client.drain() if f["op"] == "delivered"] == []


async def test_a_note_to_self_goes_to_the_senders_other_devices_only(
    messaging: Messaging,
) -> None:
    """``to`` is the sender: the copies cover exactly its other devices, which get it
    as recipients (their acks earn `stored`/`delivered`); with no other device, or a
    copy for the sending device, nothing is stored."""
    alice_id = uid()
    messaging.issuer.devices[alice_id] = [1, 2]
    a1 = await messaging.connect(alice_id, pod=0)
    a2 = await messaging.connect(alice_id, pod=1, did=2)
    for frame, code, lists in [
        # a copy for the sending device itself
        (send_frame("n0", alice_id, "bm90ZQ", devices=(1, 2)), "devices_changed", [2]),
        # a device alice does not have
        (send_frame("n1", alice_id, "bm90ZQ", devices=(2, 3)), "devices_changed", [2]),
    ]:
        await a1.send(frame)
        err = await a1.expect("error", id=frame["id"])
        assert err["code"] == code
        assert {d["user"]: sorted(d["devices"]) for d in err["devices"]} == {alice_id: lists}

    await a1.send(send_frame("n2", alice_id, "bm90ZQ", devices=(2,)))
    accepted = await a1.expect("accepted", id="n2")
    msg = await a2.expect("message")
    assert (msg["from"], msg["from_device"], msg["body"]) == (alice_id, 1, "bm90ZQ")
    assert msg["conversation"] == f"dm:{alice_id}:{alice_id}"
    assert msg["server_id"] == accepted["server_id"]
    stored = await a1.expect("stored", id="n2")
    assert (stored["to"], stored["device"]) == (alice_id, 2)
    await a2.send({"op": "ack", "seq": msg["seq"]})
    delivered = await a1.expect("delivered", id="n2")
    assert (delivered["to"], delivered["device"]) == (alice_id, 2)
    # Nothing reached the sending device's own inbox, and the refused notes went nowhere.
    await a1.send({"op": "sync", "id": "own", "after": 0})
    await a1.expect("synced", id="own")
    assert [f for f in a1.drain() if f["op"] == "message"] == []
    await a2.send({"op": "sync", "id": "other", "after": 0})
    await a2.expect("synced", id="other")
    assert [f for f in a2.drain() if f["op"] == "message"] == []

    # An account with one device has no one to write a note to.
    solo_id = uid()
    solo = await messaging.connect(solo_id)
    await solo.send(send_frame("n3", solo_id, "bm90ZQ", devices=(1,)))
    err = await solo.expect("error", id="n3")
    assert err["code"] == "recipient_not_found"
    assert "other devices" in err["message"]
