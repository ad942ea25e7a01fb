"""The notifier while a digest is being sent: a relay slow to answer the end of DATA, a
stop in the middle of a send, and a user who connects before the digest is due. On the
real embedded servers; the relay is the tests' own (tests/notifier/smtp_stub.py)."""

from __future__ import annotations

import asyncio
import time
from email.message import EmailMessage
from typing import TypeVar

from services.common.routing import presence_key, presence_value
from services.common.state import REDIS
from tests.notifier.conftest import Harness, notice
from tests.notifier.smtp_stub import SmtpStub
from tests.support.aio import eventually

T = TypeVar("T")


async def _value(x: T) -> T:
    return x


def _use(harness: Harness, stub: SmtpStub) -> None:
    harness.notifier.settings = harness.settings.model_copy(update=stub.settings_update())


async def test_a_relay_slow_to_answer_data_gets_one_copy(harness: Harness) -> None:
    """Audit finding: the SMTP timeout (5 s) covered the wait for the relay's answer to
    the end of DATA. A relay scanning the message for 6 s took it, the notifier counted
    it failed and sent it again after each retry delay: up to 12 copies. RFC 5321
    4.5.3.2.6: wait 10 minutes for that answer. And the digest stays leased for as long
    as the send may take (no other replica takes it meanwhile)."""
    notifier = harness.notifier
    notifier.retry_s = notifier.retry_max_s = 0.5  # the 60 s..1 h back-off, shortened
    leased_for: list[float] = []
    bob, alice = await harness.user(), await harness.user()

    async def scanning(_: EmailMessage) -> None:
        digest = await notifier.store.digests.find_one({"_id": bob["_id"]})
        assert digest is not None
        leased_for.append(float(digest["due"]) - time.time())
        await asyncio.sleep(6)

    async with SmtpStub(on_data=scanning) as stub:
        _use(harness, stub)
        await harness.produce(notice(bob["_id"], 1, alice["_id"], excerpt="hi bob"))
        await eventually(lambda: _value(harness.count("digests", "sent")), bool, timeout=30)
        await asyncio.sleep(2)  # four retry delays: no copy is on its way
        assert len(stub.messages) == len(stub.accepted) == 1
        assert harness.count("digests", "failed") == 0
        assert await notifier.store.digests.find_one({"_id": bob["_id"]}) is None
        assert leased_for and leased_for[0] > 600  # the whole wait for the answer


async def test_a_stop_during_a_send_lets_it_finish(harness: Harness) -> None:
    """Audit finding: a graceful stop (SIGTERM) cancelled a digest waiting for the relay's
    answer to DATA: the relay kept the message, the digest was never finished, and the
    next process sent it again when the lease ended. Now the digest in flight is sent
    and finished, and the stop starts no other."""
    notifier = harness.notifier
    stopping: list[asyncio.Task[None]] = []
    bob, alice, carol = await harness.user(), await harness.user(), await harness.user()

    async def on_data(_: EmailMessage) -> None:
        if not stopping:  # a deploy stops the process while the first copy is out
            stopping.append(asyncio.create_task(notifier.stop()))
            # Due meanwhile: not started by a stopping notifier.
            await harness.keep([notice(carol["_id"], 1, alice["_id"])], 0)
            await asyncio.sleep(0.5)  # the relay answers half a second later

    async with SmtpStub(on_data=on_data) as stub:
        _use(harness, stub)
        await harness.produce(notice(bob["_id"], 1, alice["_id"], excerpt="hi bob"))
        await eventually(lambda: _value(stopping), bool, timeout=30)
        await stopping[0]
        assert len(stub.accepted) == 1
        assert harness.count("digests", "sent") == 1
        assert await notifier.store.digests.find_one({"_id": bob["_id"]}) is None
        assert await notifier.store.pending.count_documents({"user": bob["_id"]}) == 0
        # The next process (the same database) sends carol's, and bob's no more.
        await notifier.start()
        await eventually(lambda: _value(stub.accepted), lambda ms: len(ms) == 2)
        await asyncio.sleep(1)
        assert [m["To"] for m in stub.accepted] == [bob["email"], carol["email"]]


async def test_a_stop_waits_for_a_send_no_longer_than_its_bound(harness: Harness) -> None:
    """A send that outlasts the stop's bound is cancelled; its digest stays leased for
    the whole send's bound (the relay may still take it), not taken again at once."""
    notifier = harness.notifier
    notifier.stop_grace_s = 0.5
    stopping: list[asyncio.Task[None]] = []
    bob, alice = await harness.user(), await harness.user()

    async def on_data(_: EmailMessage) -> None:
        stopping.append(asyncio.create_task(notifier.stop()))
        await asyncio.sleep(5)

    async with SmtpStub(on_data=on_data) as stub:
        _use(harness, stub)
        await harness.produce(notice(bob["_id"], 1, alice["_id"], excerpt="hi bob"))
        await eventually(lambda: _value(stopping), bool, timeout=30)
        await stopping[0]
        assert stub.accepted == []  # ended before the relay's answer: not waited for
        digest = await notifier.store.digests.find_one({"_id": bob["_id"]})
        assert digest is not None and float(digest["due"]) > time.time() + 600
        assert harness.count("digests", "sent") == 0


async def test_a_user_connected_when_the_digest_is_due_gets_none(harness: Harness) -> None:
    """Audit finding: offline at the mention, then connected (and staying connected)
    from well before the digest was due, the user still got it, though the e-mail says
    it comes "only while no device of yours is connected". Now it is dropped (the
    in-app list holds the mentions), counted ``online``."""
    redis = harness.app[REDIS]
    bob, alice = await harness.user(), await harness.user()
    key = presence_key(harness.settings.redis_prefix, bob["_id"])
    await harness.produce(notice(bob["_id"], 1, alice["_id"], excerpt="hi bob"))
    store = harness.notifier.store
    await eventually(lambda: store.digests.find_one({"_id": bob["_id"]}), bool)
    stop = asyncio.Event()

    async def connected() -> None:  # the gateway refreshes bob's entry
        while not stop.is_set():
            await redis.hset(key, "conn1", presence_value("gw-1"))
            await asyncio.sleep(0.2)

    task = asyncio.create_task(connected())
    try:
        await eventually(lambda: _value(harness.count("digests", "online")), bool, timeout=15)
    finally:
        stop.set()
        await task
    assert harness.mails(bob["email"]) == []
    assert harness.count("digests", "sent") == 0
    assert await store.digests.find_one({"_id": bob["_id"]}) is None
    assert await store.pending.count_documents({"user": bob["_id"]}) == 0
    # Offline again: the next mention is mailed as usual.
    await redis.delete(key)
    await harness.produce(notice(bob["_id"], 2, alice["_id"], excerpt="later"))
    mails = await harness.until_mails(bob["email"], 1)
    assert "later" in mails[0].get_content()


async def test_a_notice_of_a_mention_seen_live_is_not_mailed_however_late_it_is_read(
    harness: Harness,
) -> None:
    """Audit finding: the notifier read presence when it consumed a notice, so one read
    late (a restart, a backlog) after the user had disconnected was mailed, though the
    user had the ``notification`` frame live. The rooms service now says in the notice
    that the user was connected (``live``): never queued. The same notice made while the
    user was away is queued and mailed."""
    bob, alice = await harness.user(), await harness.user()
    await harness.produce(notice(bob["_id"], 1, alice["_id"], excerpt="seen live", live=True))
    await eventually(lambda: _value(harness.count("notices", "online")), bool, timeout=15)
    await harness.produce(notice(bob["_id"], 2, alice["_id"], excerpt="while away"))
    mails = await harness.until_mails(bob["email"], 1)
    assert "while away" in mails[0].get_content()
    assert "seen live" not in mails[0].get_content()
    assert len(harness.mails(bob["email"])) == 1
