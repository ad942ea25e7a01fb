"""The digest e-mail as it goes over SMTP (services/notifier/mail.py): no user's text (a
room's name, a username, an excerpt, an e-mail address) makes a header line, and the
message goes to the stored address, whatever its headers say. Through the stack's SMTP
sink (the bytes it stored) and the tests' own stub (the envelope it was given)."""

from __future__ import annotations

import email
import email.policy
import secrets
from typing import TypeVar

import pytest

from services.notifier import mail
from tests.notifier.conftest import Harness, notice
from tests.notifier.smtp_stub import SmtpStub
from tests.support.aio import eventually

# Every header the digest has, in this order, and no other.
HEADERS = [
    "From", "To", "Subject", "Message-ID", "Auto-Submitted",
    "Content-Type", "Content-Transfer-Encoding", "MIME-Version",
]  # fmt: skip

# An RFC 2047 encoded word whose decoded text holds CR LF and header lines: valid as a
# room's name for the rooms service (no control character, at most 100 characters).
INJECTION = "=?utf-8?q?hi=0D=0AReply-To:_evil@x.test=0D=0AX-Evil:_1?="


def _headers(raw: bytes) -> list[str]:
    """The names of the header lines of ``raw`` (a continuation line starts with white
    space), read from the bytes, not through Python's parser."""
    head = raw.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
    return [ln.split(b":", 1)[0].decode() for ln in head.split(b"\n") if ln[:1] not in b" \t"]


T = TypeVar("T")


async def _value(x: T) -> T:
    return x


async def test_an_encoded_word_in_a_room_name_or_username_makes_no_header(
    harness: Harness,
) -> None:
    """Audit finding: Python's header parser (3.11.7) decoded an encoded word in the
    Subject and wrote its CR LF back raw, so a room named INJECTION was a Reply-To and an
    X-Evil header in the mail the SMTP sink stored. Now no "=?" reaches a header."""
    bob = await harness.user()
    alice = await harness.user(username="=?utf-8?b?YQ0KQmNjOiBldmlsQHgudGVzdA==?=")
    await harness.produce(
        notice(bob["_id"], 1, alice["_id"], room_name=INJECTION, excerpt=f"see {INJECTION}")
    )
    [path] = await eventually(
        lambda: _value(sorted(harness.maildir.glob(f"*-{bob['email']}.eml"))),
        lambda ps: len(ps) == 1,
        timeout=20,
    )
    raw = path.read_bytes()
    assert _headers(raw) == HEADERS, raw[:600]
    assert b"\nReply-To" not in raw and b"\nX-Evil" not in raw and b"\nBcc" not in raw
    [got] = harness.mails(bob["email"])
    assert list(got.keys()) == HEADERS
    # The name is kept readable, its "=?" broken so that nothing decodes it.
    subject = str(got["Subject"])
    assert "\n" not in subject and "\r" not in subject and "=?" not in subject
    assert subject.startswith("Parley: @= ?utf-8?b?")
    assert subject.endswith(
        "mentioned you in = ?utf-8?q?hi=0D=0AReply-To:_evil@x.test=0D=0AX-Evil:_1?="
    )
    # The text is not a header: it says what was written.
    assert f"mentioned you in {INJECTION}: see {INJECTION}" in got.get_content()


@pytest.mark.parametrize(
    "name",
    [
        INJECTION,
        "=?UTF-8?B?aGkNClgtRXZpbDogMQ==?=",  # base64, upper case
        "x=?utf-8?q?=0D=0AX-Evil:_1?=y",  # inside a word
        "==??utf-8?q?=0AX-Evil:_1?==",
        "=\u2028?utf-8?q?=0AX-Evil:_1?=",  # a line break that becomes a space
        "gen\u2028eral\r\nX-Evil: 1",
        "\u00e9" * 40 + " " + INJECTION * 2,  # long, not ASCII: folded and encoded
    ],
)
def test_no_room_name_makes_a_header_line(name: str) -> None:
    """The message's bytes (as handed to SMTP) hold exactly the digest's headers for any
    room name, username and address, and Python parses them back to the same."""
    from services.common.config import Settings

    item = {"sender": "u1", "kind": "public", "room_name": name, "excerpt": name,
            "room_id": "r", "message_seq": 1}  # fmt: skip
    subject, text = mail.digest(name, [item], {"u1": name}, "https://api.example.org")
    for to in ("bob@example.test", f"{INJECTION}@example.test"):
        raw = mail.message(Settings(), to, subject, text)
        assert raw.isascii()
        assert _headers(raw) == HEADERS, raw[:600]
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert list(msg.keys()) == HEADERS
        assert "=?" not in str(msg["Subject"]) and len(str(msg["Subject"]).splitlines()) == 1


def test_a_message_with_a_header_it_did_not_set_is_not_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The last check, whatever Python's header handling does: a value that still makes
    a header line (here: the neutralising step taken away) raises before anything goes."""
    from services.common.config import Settings

    monkeypatch.setattr(mail, "header_text", lambda text: text)
    with pytest.raises(mail.HeaderInjection):
        mail.message(Settings(), "bob@example.test", f"in {INJECTION}", "hi\n")


async def test_a_digest_goes_to_the_stored_address_whatever_its_to_header_says(
    harness: Harness,
) -> None:
    """Audit finding: the recipients were taken from the To header as Python parsed it,
    which decodes an encoded word: an address stored as "=?utf-8?q?victim?=@example.test"
    (the auth service accepts it) was mailed to victim@example.test (RCPT TO). The
    envelope now names the stored address as it is, the sender is the From address's
    mailbox, and the To header names the address only if it is plain. (The stack's
    sink, aiosmtpd, decodes such an RCPT address itself: the envelope is read here,
    from the tests' own SMTP server.)"""
    tag = secrets.token_hex(4)
    stored = f"=?utf-8?q?victim{tag}?=@example.test"
    bob, alice, carol = (
        await harness.user(email=stored), await harness.user(), await harness.user()
    )  # fmt: skip
    async with SmtpStub() as stub:
        harness.notifier.settings = harness.settings.model_copy(update=stub.settings_update())
        await harness.produce(notice(bob["_id"], 1, alice["_id"]),
                              notice(carol["_id"], 1, alice["_id"]))  # fmt: skip
        await eventually(lambda: _value(stub.accepted), lambda ms: len(ms) == 2)
    assert sorted(stub.recipients) == sorted([stored, carol["email"]])
    assert f"victim{tag}@example.test" not in stub.recipients
    assert stub.senders == ["no-reply@parley.invalid"] * 2
    for raw in stub.raw:
        assert _headers(raw) == HEADERS, raw[:600]
    to = sorted(str(m["To"]) for m in stub.accepted)
    assert to == sorted(["undisclosed-recipients:;", carol["email"]])
