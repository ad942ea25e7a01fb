"""The notifier when a digest cannot go as it is: a message the SMTP server refuses for
good, an SMTP server that refuses for now, a room name that would break a header line, a
digest that raises, and mentions written while a digest is being sent. On the real
embedded servers; the SMTP answers come from a tiny server of the test's own
(tests/notifier/smtp_stub.py) where the stack's sink would accept."""

from __future__ import annotations

import asyncio
import time
from email.message import EmailMessage
from typing import TypeVar

import pytest

from services.notifier.store import pending_id
from tests.notifier.conftest import Harness, notice
from tests.notifier.smtp_stub import SmtpStub
from tests.support.aio import eventually

# The anti-spam test string: a message that quotes it in its first 140 characters puts it
# in the digest, and a filtering relay refuses that e-mail at DATA for good.
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


T = TypeVar("T")


async def _value(x: T) -> T:
    return x


def _use(harness: Harness, stub: SmtpStub) -> None:
    harness.notifier.settings = harness.settings.model_copy(update=stub.settings_update())


def _spam_filter(msg: EmailMessage) -> int:
    return 554 if GTUBE in msg.get_content() else 250


async def test_a_digest_refused_at_data_while_others_get_through_is_dropped(
    harness: Harness,
) -> None:
    """Before: a 5xx at DATA (here: the digest quotes a spam test string) failed like an
    unreachable server, so the same refused e-mail was sent again every lease, for ever,
    and held every later mention. The server takes other mail (another user's digest got
    through after this one was refused): this one is what it refuses, and it is dropped."""
    notifier = harness.notifier
    notifier.lease_s = notifier.retry_s = notifier.retry_max_s = 0.3
    async with SmtpStub(data_code_of=_spam_filter) as stub:
        _use(harness, stub)
        bob, alice, carol = await harness.user(), await harness.user(), await harness.user()
        await harness.produce(notice(bob["_id"], 1, alice["_id"], excerpt=f"look: {GTUBE}"))
        # Refused once, nothing taken since: held back (the server may refuse everyone).
        await eventually(lambda: _value(harness.count("digests", "failed")), lambda n: n >= 1)
        assert harness.count("digests", "rejected") == 0
        await harness.produce(notice(carol["_id"], 1, alice["_id"], excerpt="hello"))
        await eventually(lambda: _value(stub.accepted), lambda ms: len(ms) == 1)
        await eventually(lambda: _value(harness.count("digests", "rejected")), lambda n: n == 1)
        store = notifier.store
        await eventually(lambda: store.digests.find_one({"_id": bob["_id"]}), lambda d: d is None)
        assert await store.pending.count_documents({"user": bob["_id"]}) == 0
        refused = len(stub.messages) - len(stub.accepted)
        await asyncio.sleep(1)  # three retry delays: nothing is left to retry
        assert len(stub.messages) - len(stub.accepted) == refused

        # The user's next mention is mailed as usual.
        await harness.produce(notice(bob["_id"], 2, alice["_id"], excerpt="a clean one"))
        await eventually(lambda: _value(stub.accepted), lambda ms: len(ms) == 2)
        assert "a clean one" in stub.accepted[1].get_content()
        assert GTUBE not in stub.accepted[1].get_content()


@pytest.mark.parametrize("stage", ["RCPT", "DATA"])
async def test_a_relay_refusing_everyone_after_a_success_drops_no_digest(
    harness: Harness, stage: str
) -> None:
    """Audit finding: one digest got through, then the relay refused every message at
    DATA (an account paused, a quota) or every recipient at RCPT ("554 5.7.1 Relay
    access denied": the notifier's address changed). Before, for the next hour every
    due digest was dropped at its first refusal (`rejected`: a digest had got through
    in the last hour) or at once (`refused`: no check on that path), with its mentions.
    A run of refusals with nothing taken in between is the server's: every digest is
    kept, tried again, and mailed once the relay takes mail again."""
    notifier = harness.notifier
    notifier.lease_s = notifier.retry_s = notifier.retry_max_s = 0.3
    async with SmtpStub() as stub:
        _use(harness, stub)
        alice, carol = await harness.user(), await harness.user()
        await harness.produce(notice(carol["_id"], 1, alice["_id"], excerpt="hello"))
        await eventually(lambda: _value(stub.accepted), lambda ms: len(ms) == 1)
        if stage == "RCPT":
            stub.rcpt_code = 554
        else:
            stub.data_code = 554
        users = [await harness.user() for _ in range(3)]
        await harness.produce(*(notice(u["_id"], 1, alice["_id"]) for u in users))
        # Each digest refused at least twice (nothing taken in between): none dropped.
        await eventually(lambda: _value(harness.count("digests", "failed")), lambda n: n >= 6)
        assert harness.count("digests", "rejected") == harness.count("digests", "refused") == 0
        store = notifier.store
        for u in users:
            doc = await store.digests.find_one({"_id": u["_id"]})
            assert doc is not None and doc.get("refused_at") and doc["attempts"] >= 1
            assert await store.pending.count_documents({"user": u["_id"]}) == 1

        stub.rcpt_code = stub.data_code = 250  # the relay takes mail again
        await eventually(lambda: _value(stub.accepted), lambda ms: len(ms) == 4)
        assert sorted(str(m["To"]) for m in stub.accepted[1:]) == sorted(u["email"] for u in users)
        ids = [u["_id"] for u in users]
        await eventually(
            lambda: store.digests.count_documents({"_id": {"$in": ids}}), lambda n: n == 0
        )
        assert await store.pending.count_documents({"user": {"$in": ids}}) == 0
        assert harness.count("digests", "rejected") == harness.count("digests", "refused") == 0
        assert harness.count("digests", "abandoned") == 0


@pytest.mark.parametrize("stage", ["MAIL", "DATA"])
async def test_a_server_refusing_every_message_drops_no_digest(
    harness: Harness, stage: str
) -> None:
    """Review finding: any 5xx at MAIL or DATA dropped the digest, so a From address
    not verified or a paused account (a 5xx for every message) dropped every user's
    digest in one round. A refusal at MAIL, or at DATA with no digest through lately,
    is tried again later."""
    notifier = harness.notifier
    notifier.retry_s = 30.0
    mail_code, data_code = (550, 250) if stage == "MAIL" else (250, 554)
    async with SmtpStub(mail_code=mail_code, data_code=data_code) as stub:
        _use(harness, stub)
        bob, alice = await harness.user(), await harness.user()
        await harness.produce(notice(bob["_id"], 1, alice["_id"]))
        await eventually(lambda: _value(harness.count("digests", "failed")), lambda n: n == 1)
        store = notifier.store
        digest = await store.digests.find_one({"_id": bob["_id"]})
        assert digest is not None and digest.get("attempts") == 1
        assert await store.pending.count_documents({"user": bob["_id"]}) == 1
        assert harness.count("digests", "rejected") == 0


async def test_a_digest_refused_for_now_is_tried_again_later_and_later_then_dropped(
    harness: Harness,
) -> None:
    """A 4xx at DATA (or an unreachable server) is for now: tried again after a delay
    that doubles up to a ceiling, and after the last attempt dropped, counted. Before:
    tried again at every lease's end, for ever."""
    notifier = harness.notifier
    notifier.retry_s, notifier.retry_max_s, notifier.attempts_max = 0.3, 0.6, 4
    async with SmtpStub(data_code=451) as stub:
        _use(harness, stub)
        bob, alice = await harness.user(), await harness.user()
        await harness.keep([notice(bob["_id"], 1, alice["_id"])], 0)
        await eventually(lambda: _value(harness.count("digests", "abandoned")), lambda n: n == 1)
        assert harness.count("digests", "failed") == 4
        assert len(stub.messages) == 4
        gaps = [b - a for a, b in zip(stub.data_at, stub.data_at[1:], strict=False)]
        assert gaps[0] >= 0.3 and gaps[1] >= 0.6 and gaps[2] >= 0.6, gaps  # 0.3, 0.6, 0.6
        store = notifier.store  # dropped (just after it is counted)
        await eventually(lambda: store.digests.find_one({"_id": bob["_id"]}), lambda d: d is None)
        assert await store.pending.count_documents({"user": bob["_id"]}) == 0
        assert len(stub.messages) == 4  # and nothing is left to send again


async def test_an_attempt_that_fails_is_counted_and_the_next_is_later(harness: Harness) -> None:
    """The first failure of a digest keeps it and its mentions, due one retry delay
    later, its attempts counted (the existing retry test shows it is then sent)."""
    notifier = harness.notifier
    notifier.retry_s = 30.0
    async with SmtpStub(data_code=421) as stub:
        _use(harness, stub)
        bob, alice = await harness.user(), await harness.user()
        store = notifier.store
        await harness.keep([notice(bob["_id"], 1, alice["_id"])], 0)
        before = time.time()
        await eventually(lambda: _value(harness.count("digests", "failed")), lambda n: n == 1)
        doc = await eventually(
            lambda: store.digests.find_one({"_id": bob["_id"]}),
            lambda d: d is not None and d.get("attempts") == 1,
        )
        assert doc is not None
        assert before + 29 <= doc["due"] <= time.time() + 30
        assert await store.pending.count_documents({"user": bob["_id"]}) == 1


async def test_a_room_name_that_would_break_a_header_line_is_mailed_on_one_line(
    harness: Harness,
) -> None:
    """The rooms service refuses C0 and C1 controls in a room's name, not U+2028 or
    U+2029, where str.splitlines() splits too. Before: Python's header policy raised
    ValueError for the one-mention subject, which ended the round and left the digest
    unsent for ever."""
    bob, alice = await harness.user(), await harness.user()
    name = "gen\u2028eral\u2029 \u202eplans\u00a0"
    await harness.produce(notice(bob["_id"], 1, alice["_id"], room_name=name))
    [mail] = await harness.until_mails(bob["email"], 1)
    assert mail["Subject"] == f"Parley: @{alice['username']} mentioned you in gen eral plans"
    body = mail.get_content().replace("\r\n", "\n")
    assert f"- @{alice['username']} mentioned you in gen eral plans: message 1 for you\n" in body


def test_one_line_keeps_joiners_and_drops_what_breaks_or_reorders_a_line() -> None:
    from services.notifier.mail import one_line

    assert (
        one_line("\U0001f469\u200d\U0001f4bb team\u2028x\u2029y")
        == "\U0001f469\u200d\U0001f4bb team x y"
    )
    assert one_line("a\r\nb\x0bc\x0cd\x1ce\x85f") == "a b c d e f"
    assert one_line("\u202eevil\u2066 \ufeffname\x00") == "evil name"
    for text in ("a\u2028b", "x\x1d\u202ey\n"):
        assert len(one_line(text).splitlines()) == 1


async def test_a_digest_that_raises_does_not_end_the_round(harness: Harness) -> None:
    """Any digest that raises while it is sent (here: a kept mention without its kind)
    is counted and tried again later, and the round goes on to the other digests.
    Before: the exception ended the round (send_due raised)."""
    notifier = harness.notifier
    await notifier.stop()  # this test runs the round itself
    store = notifier.store
    broken, bob, alice = await harness.user(), await harness.user(), await harness.user()
    await harness.keep(
        [notice(broken["_id"], 1, alice["_id"]), notice(bob["_id"], 1, alice["_id"])], 0
    )
    await store.pending.update_one({"_id": pending_id(broken["_id"], 1)}, {"$unset": {"kind": ""}})
    assert await notifier.send_due() == 1
    [mail] = await harness.until_mails(bob["email"], 1)
    assert "message 1 for you" in mail.get_content()
    assert harness.count("digests", "error") == 1
    assert harness.count("digests", "sent") == 1
    doc = await store.digests.find_one({"_id": broken["_id"]})
    assert doc is not None and doc["attempts"] == 1 and doc["due"] > time.time()
    assert await store.pending.count_documents({"user": broken["_id"]}) == 1


@pytest.mark.parametrize(
    "late",
    [[3], [6], [8], [3, 6, 9]],
    ids=["below-lo", "between", "above-hi", "all-three"],
)
async def test_mentions_written_while_a_digest_is_sent_are_in_the_next_one(
    harness: Harness, late: list[int]
) -> None:
    """The digest of mentions 5 and 7 is being sent when others are written (a notice
    late from another rooms replica can have a lower number). Before: finish compared
    only `hi`; it deleted the digest when hi had not moved, so a mention below lo or in
    the gap was never mailed and never removed; when hi had moved it kept the old lo,
    so a constantly mentioned user's range grew with every digest."""
    notifier = harness.notifier
    notifier.interval_s = 3.0
    store = notifier.store
    bob, alice = await harness.user(), await harness.user()

    async def write_late(_: object) -> None:
        if len(stub.messages) == 1:  # during the first digest only
            await harness.keep([notice(bob["_id"], n, alice["_id"]) for n in late], 0)

    async with SmtpStub(on_data=write_late) as stub:
        _use(harness, stub)
        await harness.keep([notice(bob["_id"], n, alice["_id"]) for n in (5, 7)], 0)
        await eventually(lambda: _value(stub.accepted), lambda ms: len(ms) == 1)
        first = stub.accepted[0].get_content()
        assert "message 5 for you" in first and "message 7 for you" in first
        sent = [pending_id(bob["_id"], n) for n in (5, 7)]
        await eventually(
            lambda: store.pending.count_documents({"_id": {"$in": sent}}), lambda n: n == 0
        )
        # The digest stays for the late mentions alone: from the lowest of them.
        doc = await eventually(
            lambda: store.digests.find_one({"_id": bob["_id"]}),
            lambda d: d is None or "fresh" not in d,
        )
        assert doc is not None
        assert (doc["lo"], doc["hi"]) == (min(late), max([7, *late]))
        assert doc["due"] > time.time() + 1
        kept = await store.pending.find({"user": bob["_id"]}).to_list()
        assert sorted(d["n"] for d in kept) == late

        await eventually(lambda: _value(stub.accepted), lambda ms: len(ms) == 2, timeout=10)
        second = stub.accepted[1].get_content()
        assert second.count("mentioned you in") == len(late)
        for n in late:
            assert f"message {n} for you" in second
        await eventually(lambda: store.digests.find_one({"_id": bob["_id"]}), lambda d: d is None)
        assert await store.pending.count_documents({"user": bob["_id"]}) == 0
