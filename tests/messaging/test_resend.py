"""Resending a message id is idempotent: the original server id, the original copy (#20)."""

from __future__ import annotations

from parley_contract.envelopes import message_server_id

from tests.support.users import uid
from tests.support.wsclient import send_frame

from .conftest import Messaging


async def test_a_resend_is_answered_with_the_original_server_id_and_stored_once(
    messaging: Messaging,
) -> None:
    alice_id, bob_id = uid(), uid()
    messaging.issuer.users.add(bob_id)
    alice = await messaging.connect(alice_id, pod=0)
    await alice.send(send_frame("r1", bob_id, "b3JpZ2luYWw"))
    first = await alice.expect("accepted", id="r1")
    stored = await alice.expect("stored", id="r1")
    assert stored["server_id"] == first["server_id"]
    # The same id again (a client that missed `accepted`), even with another
    # ciphertext and from another socket of the same device: the same server
    # id, and the original copy stays the one stored.
    again = await messaging.connect(alice_id, pod=1)
    await again.send(send_frame("r1", bob_id, "c2Vjb25k"))
    second = await again.expect("accepted", id="r1")
    assert second["server_id"] == first["server_id"] == message_server_id(alice_id, "r1")
    assert (await again.expect("stored", id="r1"))["server_id"] == first["server_id"]

    bob = await messaging.connect(bob_id, pod=1)
    await bob.send({"op": "sync", "id": "s", "after": 0})
    await bob.expect("synced", id="s")
    messages = [f for f in bob.drain() if f["op"] == "message"]
    assert [(m["server_id"], m["body"]) for m in messages] == [(first["server_id"], "b3JpZ2luYWw")]
    # Acknowledged, then resent: still the same server id, and nothing new waits.
    await bob.send({"op": "ack", "seq": messages[0]["seq"]})
    await alice.expect("delivered", id="r1")
    await alice.send(send_frame("r1", bob_id, "dGhpcmQ"))
    third = await alice.expect("accepted", id="r1")
    assert third["server_id"] == first["server_id"]
    await alice.expect("stored", id="r1")
    await bob.send({"op": "sync", "id": "s2", "after": 0})
    await bob.expect("synced", id="s2")
    assert [f for f in bob.drain() if f["op"] == "message"] == []
