"""The notifier: mentions of users with no connected device become one e-mail digest per
user per interval, sent over SMTP to the real sink; connected, unsubscribed and blocked
users get none; a redelivered or malformed notice changes nothing."""

from __future__ import annotations

import time
from typing import Any

from services.notifier.store import pending_id
from tests.notifier.conftest import INTERVAL_S, Harness, notice
from tests.support.aio import eventually
from tests.support.messaging import Messaging


async def test_several_mentions_in_one_interval_make_one_digest(harness: Harness) -> None:
    bob = await harness.user()
    alice = await harness.user()
    carol = await harness.user()
    first = [
        notice(bob["_id"], 1, alice["_id"]),
        notice(bob["_id"], 2, carol["_id"], kind="private", room_name="plans",
               excerpt="mentioned you", message_seq=None, server_id="s" * 32),
        notice(bob["_id"], 3, alice["_id"]),
    ]  # fmt: skip
    # Notice 2 twice (a redelivery) and a record that is not a notice at all.
    await harness.produce(first[0], first[1], b"{not a notice", first[1], first[2])

    [mail] = await harness.until_mails(bob["email"], 1)
    assert mail["Subject"] == "Parley: 3 new mentions"
    body = mail.get_content().replace("\r\n", "\n")
    assert body.startswith(f"Hello {bob['username']},")
    assert f"- @{alice['username']} mentioned you in general: message 1 for you" in body
    # A private room's mention carries no text: the server cannot read it.
    assert f"- @{carol['username']} mentioned you in plans (private)\n" in body
    assert f"- @{alice['username']} mentioned you in general: message 3 for you" in body
    assert body.count("mentioned you in") == 3
    assert '"mention_emails": false' in body  # how to unsubscribe
    assert harness.count("notices", "duplicate") == 1
    assert harness.count("notices", "malformed") == 1
    await eventually(lambda: _value(harness.count("digests", "sent")), lambda n: n == 1)

    # The next mention starts the next interval: its digest is a second e-mail with it
    # alone, due one interval after it arrived (never sooner).
    before = time.time()
    await harness.produce(notice(bob["_id"], 4, carol["_id"], excerpt="later"))
    digests = harness.notifier.store.digests
    doc = await eventually(lambda: digests.find_one({"_id": bob["_id"]}), bool, timeout=20)
    assert doc is not None and doc["due"] >= before + INTERVAL_S
    mails = await harness.until_mails(bob["email"], 2)
    second = mails[1]
    assert second["Subject"] == f"Parley: @{carol['username']} mentioned you in general"
    assert second.get_content().count("mentioned you in") == 1
    assert "later" in second.get_content()
    # Everything sent is forgotten (once SMTP's answer is back: the sink has the mail
    # as soon as it says 250, a moment before the notifier hears it).
    pending = harness.notifier.store.pending
    await eventually(lambda: pending.count_documents({"user": bob["_id"]}), lambda n: n == 0)
    await eventually(lambda: digests.find_one({"_id": bob["_id"]}), lambda d: d is None)


async def test_unsubscribed_and_blocked_users_get_no_mail(harness: Harness) -> None:
    alice = await harness.user()
    quiet = await harness.user(mention_emails=False)
    blocked = await harness.user(blocked=True)
    await harness.produce(notice(quiet["_id"], 1, alice["_id"]),
                          notice(blocked["_id"], 1, alice["_id"]))  # fmt: skip
    await eventually(
        lambda: _value(harness.count("digests", "unsubscribed") + harness.count("digests", "gone")),
        lambda n: n == 2,
    )
    assert harness.mails(quiet["email"]) == [] and harness.mails(blocked["email"]) == []
    store = harness.notifier.store
    assert await store.pending.find_one({"_id": pending_id(quiet["_id"], 1)}) is None
    assert harness.count("digests", "sent") == 0


async def test_a_connected_user_gets_no_mail(harness: Harness, messaging: Messaging) -> None:
    """Presence is the gateways' (real pods here, sharing the notifier's Redis prefix)."""
    alice = await harness.user()
    online = await harness.user()
    offline = await harness.user()
    await messaging.connect(online["_id"], pod=1)
    await harness.produce(notice(online["_id"], 1, alice["_id"]),
                          notice(offline["_id"], 1, alice["_id"]))  # fmt: skip
    await harness.until_mails(offline["email"], 1)
    await eventually(lambda: _value(harness.count("notices", "online")), lambda n: n == 1)
    assert harness.mails(online["email"]) == []
    assert await harness.notifier.store.digests.find_one({"_id": online["_id"]}) is None


async def _value(x: float) -> float:
    return x


async def test_a_digest_the_smtp_server_refuses_is_sent_when_it_answers(
    harness: Harness,
) -> None:
    """Nothing is lost while SMTP is away: the digest keeps its mentions and is tried
    again after the retry delay."""
    notifier = harness.notifier
    good = notifier.settings
    notifier.retry_s = 0.5
    notifier.settings = good.model_copy(update={"smtp_port": 1})  # nothing listens there
    bob, alice = await harness.user(), await harness.user()
    await harness.produce(notice(bob["_id"], 1, alice["_id"]), notice(bob["_id"], 2, alice["_id"]))
    await eventually(lambda: _value(harness.count("digests", "failed")), lambda n: n >= 1)
    assert harness.mails(bob["email"]) == []
    assert await notifier.store.pending.count_documents({"user": bob["_id"]}) == 2
    notifier.settings = good
    [mail] = await harness.until_mails(bob["email"], 1)
    assert mail["Subject"] == "Parley: 2 new mentions"
    # The sink has the mail as soon as SMTP says 250; the count follows that answer.
    await eventually(lambda: _value(harness.count("digests", "sent")), lambda n: n == 1)


async def test_a_notice_kept_without_its_digest_is_mailed_when_it_comes_again(
    harness: Harness,
) -> None:
    """The worker died (or the write failed) between keeping a mention and opening its
    digest, and Kafka gives the notice again. Before: the redelivery counted as a
    duplicate and opened no digest, so that mention was never mailed."""
    bob, alice = await harness.user(), await harness.user()
    late = notice(bob["_id"], 1, alice["_id"], excerpt="kept, then the worker died")
    store = harness.notifier.store
    assert await harness.keep([late], INTERVAL_S) == [True]
    await store.digests.delete_one({"_id": bob["_id"]})  # the second write never happened
    await harness.produce(late)
    [mail] = await harness.until_mails(bob["email"], 1)
    assert "kept, then the worker died" in mail.get_content()
    assert harness.count("notices", "duplicate") == 1


async def test_a_digest_to_an_address_refused_for_good_is_dropped(harness: Harness) -> None:
    """An address the SMTP server refuses for good (550: no such mailbox) used to fail
    like an unreachable server: the digest was tried again every lease, for ever,
    reading every mention since its first each time. It is dropped now, counted, once
    the server has taken another digest since it refused this one (the first refusal
    alone could be the server refusing everyone: test_failures.py)."""
    notifier = harness.notifier
    notifier.lease_s = notifier.retry_s = notifier.retry_max_s = 0.5
    gone, alice = await harness.user(email="nobody@nowhere.invalid"), await harness.user()
    carol = await harness.user()
    await harness.produce(notice(gone["_id"], 1, alice["_id"]))
    await eventually(lambda: _value(harness.count("digests", "failed")), lambda n: n >= 1)
    store = notifier.store
    held = await store.digests.find_one({"_id": gone["_id"]})
    assert held is not None and held.get("refused_at") and harness.count("digests", "refused") == 0
    assert await store.pending.count_documents({"user": gone["_id"]}) == 1

    await harness.produce(notice(carol["_id"], 1, alice["_id"]))  # another address: taken
    await harness.until_mails(carol["email"], 1)
    await eventually(lambda: _value(harness.count("digests", "refused")), lambda n: n == 1)
    await eventually(lambda: store.digests.find_one({"_id": gone["_id"]}), lambda d: d is None)
    assert await store.pending.count_documents({"user": gone["_id"]}) == 0


def test_the_digest_links_to_the_web_client_where_it_has_an_origin_of_its_own() -> None:
    """On AWS the web client is on CloudFront's domain, the API on the ALB's: the link
    to open Parley goes to the first, the route that turns the e-mails off to the
    second (PARLEY_WEB_URL; unset, both on the API's origin, as HAProxy serves)."""
    from services.notifier import mail as notifier_mail

    item = {"sender": "u1", "kind": "public", "room_name": "general", "excerpt": "hi"}
    api, web = "https://api.example.org", "https://chat.example.org"
    _, text = notifier_mail.digest("bob", [item], {"u1": "alice"}, api, web)
    assert f"Open Parley to read them: {web}/\n" in text
    assert f"PATCH {api}/auth/v1/me/preferences" in text
    _, alone = notifier_mail.digest("bob", [item], {"u1": "alice"}, api)
    assert f"Open Parley to read them: {api}/\n" in alone


async def test_a_batch_of_notices_is_kept_in_two_round_trips(harness: Harness) -> None:
    """Before: two sequential round trips a notice (an insert and an upsert), so a
    burst of 500 mentions was a thousand round trips and the consumer fell behind."""
    users = [await harness.user() for _ in range(5)]
    alice = await harness.user()
    store = harness.notifier.store
    batch = [notice(u["_id"], n, alice["_id"]) for n in range(1, 101) for u in users]
    assert await store.add_many([batch[0]], INTERVAL_S) == [True]  # kept before: a redelivery
    calls = {"insert_many": 0, "bulk_write": 0}
    for coll, name in ((store.pending, "insert_many"), (store.digests, "bulk_write")):
        real = getattr(coll, name)

        async def counted(*a: Any, _real: Any = real, _name: str = name, **k: Any) -> Any:
            calls[_name] += 1
            return await _real(*a, **k)

        setattr(coll, name, counted)
    try:
        new = await store.add_many([*batch, batch[1]], INTERVAL_S)
    finally:
        for coll, name in ((store.pending, "insert_many"), (store.digests, "bulk_write")):
            delattr(coll, name)
    assert calls == {"insert_many": 1, "bulk_write": 1}
    assert new == [False] + [True] * 499 + [False]
    for u in users:
        digest = await store.digests.find_one({"_id": u["_id"]})
        assert digest is not None and (digest["lo"], digest["hi"]) == (1, 100)
    kept = await store.pending.find({"user": {"$in": [u["_id"] for u in users]}}).to_list()
    assert len(kept) == 500
