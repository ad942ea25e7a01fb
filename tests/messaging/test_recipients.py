"""A recipient is routed by the id the directory returns, whatever spelling the client used.

The look-up answers to a username and to an upper-case id; the inbox key is
always the canonical id it returns, so no spelling can make a message land in
an inbox nobody reads (#20).
"""

from __future__ import annotations

from tests.support.users import uid
from tests.support.wsclient import send_frame

from .conftest import Messaging


async def _synced_bodies(messaging: Messaging, user: str, device: int = 1) -> list[str]:
    client = await messaging.connect(user, pod=1, did=device)
    await client.send({"op": "sync", "id": "all", "after": 0})
    await client.expect("synced", id="all")
    bodies = [f["body"] for f in client.drain() if f["op"] == "message"]
    await client.close()
    return bodies


async def test_a_username_or_an_upper_case_id_reaches_the_canonical_inbox(
    messaging: Messaging,
) -> None:
    alice_id, bob_id = uid(), uid()
    messaging.issuer.users.add(bob_id)
    messaging.issuer.usernames[f"bob-{bob_id[:6]}"] = bob_id
    messaging.issuer.devices[alice_id] = [1, 2]
    alice = await messaging.connect(alice_id, pod=0)
    cases = [
        # `to` a username, copies for the id the client resolved
        ("u1", f"Bob-{bob_id[:6]}", bob_id, "dXNlcm5hbWU"),
        # `to` a username, copies carry the same spelling as `to`
        ("u2", f"bob-{bob_id[:6]}", f"bob-{bob_id[:6]}", "c2FtZQ"),
        # an upper-case id everywhere
        ("u3", bob_id.upper(), bob_id.upper(), "dXBwZXI"),
        # an upper-case `to`, copies for the canonical id
        ("u4", bob_id.upper(), bob_id, "bWl4ZWQ"),
    ]
    for client_id, to, user, body in cases:
        frame = send_frame(client_id, to, body, own=((alice_id, 2),))
        for copy in frame["copies"][:1]:
            copy["user"] = user
        await alice.send(frame)
        accepted = await alice.expect("accepted", id=client_id)
        assert accepted["conversation"] == "dm:" + ":".join(sorted((alice_id, bob_id)))
        # Both copies are stored, each in its canonical inbox.
        receipts = [await alice.expect("stored", id=client_id) for _ in range(2)]
        assert sorted((r["to"], r["device"]) for r in receipts) == sorted(
            [(bob_id, 1), (alice_id, 2)]
        )
    assert await _synced_bodies(messaging, bob_id) == [c[3] for c in cases]
    assert await _synced_bodies(messaging, alice_id, device=2) == [c[3] for c in cases]


async def test_a_copy_for_a_third_user_is_refused_and_nothing_is_stored(
    messaging: Messaging,
) -> None:
    alice_id, bob_id, carol_id = uid(), uid(), uid()
    messaging.issuer.users.update({bob_id, carol_id})
    alice = await messaging.connect(alice_id, pod=0)
    frame = send_frame("x", bob_id, "Ym9keQ")
    frame["copies"][0]["user"] = carol_id
    await alice.send(frame)
    err = await alice.expect("error", id="x")
    assert err["code"] == "validation_failed"
    assert await _synced_bodies(messaging, bob_id) == []
    assert await _synced_bodies(messaging, carol_id) == []
