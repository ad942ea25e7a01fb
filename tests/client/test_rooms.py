"""Pure logic of the rooms part (parley/rooms.py, the control payloads in
parley/messenger.py); the rooms against the real system are in
tests/e2e/test_rooms_client.py and tests/e2e/test_cli_rooms.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from parley import Client, ParleyError, cli_rooms
from parley.cli_rooms import ShownOrder, TypingLine, late_note
from parley.crypto import GroupSession, UnknownSenderKey
from parley.events import RoomMessage, RoomNotification, Typing
from parley.messenger import CONTROL_PREFIX, encode_control, parse_control
from parley.rooms import member_key, room_conversation
from parley_contract import frames as f

from tests.client.conftest import CHEAP_KDF


def test_a_control_payload_round_trips_and_a_chat_line_is_never_one() -> None:
    payload = {"t": "skd", "room": "a" * 24, "d": "AAAA"}
    assert parse_control(encode_control(payload)) == payload
    for text in ("hello", '{"t": "skd"}', "parley-control", "\u0000"):
        assert parse_control(text.encode()) is None
    assert parse_control(CONTROL_PREFIX + b"not json") == {"t": "invalid"}
    assert parse_control(CONTROL_PREFIX + b"[1, 2]") == {"t": "invalid"}
    # Nested past ``json``'s recursion limit: invalid, not a RecursionError.
    assert parse_control(CONTROL_PREFIX + b"[" * 100_000) == {"t": "invalid"}
    assert parse_control(CONTROL_PREFIX + b"{" + b'"a":{' * 5000) == {"t": "invalid"}


def test_the_sdk_refuses_text_that_could_pass_for_a_control_payload(tmp_path: Path) -> None:
    client = Client("http://127.0.0.1:9", data_dir=tmp_path, passphrase="test passphrase")
    with pytest.raises(ParleyError, match="NUL"):
        client.check_text(CONTROL_PREFIX.decode() + '{"t": "skd"}')
    client.check_text("a line with a \u0000 inside is text")


def test_names() -> None:
    assert room_conversation("0" * 24) == "room:" + "0" * 24
    assert member_key("u" * 32, 7) == "u" * 32 + ":7"


def test_a_rotated_chain_is_unreadable_with_the_old_key_and_readable_with_the_new() -> None:
    """What the client's rotation rests on, in memory: a member who had the old chain
    cannot read the new one; those given the new distribution can."""
    room = "f" * 24
    alice, kept, removed = (GroupSession.create(room) for _ in range(3))
    first = alice.distribution_message()
    for member in (kept, removed):
        member.process_distribution(member_key("alice", 1), first)
    before = alice.encrypt(b"before")
    assert removed.decrypt(member_key("alice", 1), before) == b"before"
    kept.decrypt(member_key("alice", 1), before)
    second = alice.rotate()
    kept.process_distribution(member_key("alice", 1), second)
    after = alice.encrypt(b"after")
    assert kept.decrypt(member_key("alice", 1), after) == b"after"
    with pytest.raises(UnknownSenderKey):
        removed.decrypt(member_key("alice", 1), after)


async def test_live_room_frames_become_events(tmp_path: Path) -> None:
    """``room_post`` and ``notification`` frames (pushed live by the rooms service) are
    turned into RoomMessage and RoomNotification events."""
    async with Client(
        "http://127.0.0.1:9", data_dir=tmp_path, passphrase="test passphrase", kdf=CHEAP_KDF
    ) as client:
        sender = "b" * 32
        await client.messenger._on_frame(
            f.RoomPost(room_id="c" * 24, seq=7, sender=sender, client_id="x1", text="hi all",
                       mentions=[], sent_at=1_700_000_000_000)
        )  # fmt: skip
        post = await client.next_event(RoomMessage, timeout=1)
        assert isinstance(post, RoomMessage)
        assert (post.room_id, post.seq, post.text, post.public, post.server_id) == (
            "c" * 24, 7, "hi all", True, None,
        )  # fmt: skip
        await client.messenger._on_frame(
            f.Notification(seq=3, kind="mention", room_id="c" * 24, room_name="town",
                           sender=sender, excerpt="@you look", at=1, message_seq=7)
        )  # fmt: skip
        note = await client.next_event(RoomNotification, timeout=1)
        assert isinstance(note, RoomNotification)
        assert (note.seq, note.room_name, note.message_seq) == (3, "town", 7)


async def test_typing_notices_become_events_but_not_ones_own(tmp_path: Path) -> None:
    async with Client(
        "http://127.0.0.1:9", data_dir=tmp_path, passphrase="test passphrase", kdf=CHEAP_KDF
    ) as client:
        room = "c" * 24
        client.account.user_id = "a" * 32  # as if signed in
        own = f.TypingNotice(room_id=room, user="a" * 32, device=2, typing=True)
        await client.messenger._on_frame(own)  # another device of mine: not news
        other = "b" * 32
        for on in (True, False):
            await client.messenger._on_frame(
                f.TypingNotice(room_id=room, user=other, device=1, typing=on)
            )
        got = [await client.next_event(Typing, timeout=1) for _ in range(2)]
        assert [(e.room_id, e.user_id, e.device, e.typing) for e in got] == [
            (room, other, 1, True), (room, other, 1, False),
        ]  # fmt: skip


def test_who_is_typing_shows_under_the_prompt_until_it_expires(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr(cli_rooms.time, "monotonic", lambda: now[0])
    line = TypingLine()
    assert line.text() == ""
    line.on(Typing("r", "u1", "ann", 1, True))
    assert line.text() == "ann is typing..."
    line.on(Typing("r", "u2", "bob", 1, True))
    assert line.text() == "ann, bob are typing..."
    line.on(Typing("r", "u1", "ann", 1, False))
    assert line.text() == "bob is typing..."
    now[0] += f.TYPING_TTL_S + 0.1  # no notice since: bob stopped without saying so
    assert line.text() == ""
    for i in range(5):
        line.on(Typing("r", f"x{i}", f"n{i}", 1, True))
    assert line.text() == "5 people are typing..."


def test_a_message_shown_after_ones_it_was_sent_before_is_told_as_late() -> None:
    """A private room's message that waited for its sender's key is shown under
    messages the room had after it: the chat says how many (its history puts it in
    its place: tests/e2e/test_rooms_client.py)."""
    order = ShownOrder()
    assert [order.show(s) for s in (3, 4, None, 5)] == [0, 0, 0, 0]  # in order
    assert order.show(2) == 3  # before 3, 4 and 5
    assert order.show(4) == 1  # another late one: before 5 only
    assert order.show(6) == 0
    assert late_note(1) == "[dim](arrived late: sent before the last 1 message above)[/]"
    assert late_note(3).endswith("the last 3 messages above)[/]")
    for seq in range(10, 10 + 2 * ShownOrder.KEEP):
        order.show(seq)
    assert len(order.shown) == ShownOrder.KEEP  # what a long chat showed long ago goes
    assert order.show(10) == ShownOrder.KEEP


def test_the_room_chat_completes_member_names_and_commands() -> None:
    from parley.cli_rooms import room_completer
    from prompt_toolkit.completion import CompleteEvent
    from prompt_toolkit.document import Document

    members = ["alice", "Albert", "bob"]
    completer = room_completer(lambda: members)

    def complete(text: str) -> list[str]:
        doc = Document(text, len(text))
        return [c.text for c in completer.get_completions(doc, CompleteEvent())]

    assert complete("hi @al") == ["@Albert ", "@alice "]  # any case, sorted
    assert complete("hi @B") == ["@bob "]
    assert complete("hi @zed") == []
    assert complete("@") == ["@Albert ", "@alice ", "@bob "]
    assert complete("no mention here") == []
    assert complete("/in") == ["/invite"]
    assert complete("/") == [
        "/help", "/members", "/invite", "/leave", "/edit", "/delete", "/restore", "/quit"
    ]  # fmt: skip
    assert complete("/invite al") == []  # arguments are not commands
    members.append("alfred")  # the list is read at each completion
    assert complete("@alf") == ["@alfred "]


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("#12 spam", (12, "spam")),
        ("7", (7, "")),
        ("²", None),  # "²".isdigit() holds; int() refused it (a traceback ended the chat)
        ("٣", None),
        ("9" * 5000, None),  # int() refuses over 4,300 digits
        ("#", None),
        ("abc", None),
    ],
)
def test_a_message_number_argument_is_ascii_digits_or_nothing(
    arg: str, expected: tuple[int, str] | None
) -> None:
    assert cli_rooms._seq_arg(arg) == expected


class _Timeline:
    """A public room's timeline paged as services/rooms/timeline.py ``timeline_page``
    pages it (newest first; numbers ``inflight``, taken and not written yet: a page from
    the newest leaves out those above its first message, any other ends before one; at
    most ``limit + slack`` numbers looked at a page)."""

    def __init__(
        self, head: int, inflight: set[int], holes: frozenset[int] = frozenset(), slack: int = 50
    ) -> None:
        self.head, self.inflight, self.holes, self.slack = head, inflight, holes, slack
        self.calls: list[int | None] = []
        self.written_after: int | None = None  # reads before the numbers in flight are written

    async def room_messages(
        self, room_id: str, before: int | None = None, limit: int = 50
    ) -> dict[str, object]:
        self.calls.append(before)
        if self.written_after is not None and len(self.calls) > self.written_after:
            self.inflight.clear()
        from_head = before is None or before > self.head
        cursor = self.head if before is None else min(before - 1, self.head)
        found: list[dict[str, object]] = []
        budget = limit + self.slack  # numbers looked at (HOLE_SLACK): holes use it up
        while cursor >= 1 and len(found) < limit and budget > 0:
            budget -= 1
            if cursor in self.inflight:
                if found or not from_head:
                    break
            elif cursor not in self.holes:
                found.append({"seq": cursor, "sender": "b" * 32, "text": f"post {cursor}",
                              "sent_at": cursor, "mentions": [], "marker": None})  # fmt: skip
            cursor -= 1
        return {"messages": found, "next_before": cursor + 1 if cursor >= 1 else None}


async def _public_history(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, timeline: _Timeline, before: int | None
) -> dict[str, object]:
    import parley.rooms

    monkeypatch.setattr(parley.rooms, "TIMELINE_WAIT", (0.001, 0.004, 0.05))
    async with Client(
        "http://127.0.0.1:9", data_dir=tmp_path, passphrase="test passphrase", kdf=CHEAP_KDF
    ) as client:
        client.account.user_id = "a" * 32
        rooms = client.rooms
        room = {"room_id": "c" * 24, "name": "town", "kind": "public", "role": "member"}

        async def resolve(ref: str, directory: bool = False) -> dict[str, object]:
            return room

        async def name_of(user_id: str) -> str:
            return "bob"

        monkeypatch.setattr(rooms, "resolve", resolve)
        monkeypatch.setattr(rooms.api, "room_messages", timeline.room_messages)
        monkeypatch.setattr(rooms.messenger, "name_of", name_of)
        return await rooms.history("#town", limit=10, before=before)


async def test_a_public_page_held_back_by_a_post_in_flight_is_asked_again_not_taken_as_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review finding: since the timeline's pages end before a number still being
    written, the page before 26 (post 25 in flight) came back empty with next_before 26,
    and ``history`` handed that on: "No messages", the posts below never shown."""
    timeline = _Timeline(40, {25})
    timeline.written_after = 3  # post 25 written after three reads
    page = await _public_history(tmp_path, monkeypatch, timeline, 26)
    assert [m["seq"] for m in page["messages"]] == list(range(16, 26))  # type: ignore[attr-defined]
    assert page["next_before"] == 16
    assert timeline.calls == [26, 26, 26, 26]


async def test_a_public_page_held_back_for_good_comes_back_empty_to_ask_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    timeline = _Timeline(40, {25})
    page = await _public_history(tmp_path, monkeypatch, timeline, 26)
    assert (page["messages"], page["next_before"]) == ([], 26)
    # 1, 2, 4, 4, ... ms until 50 ms were waited: given up, no endless loop.
    assert 10 < len(timeline.calls) < 20 and set(timeline.calls) == {26}


async def test_an_empty_public_page_that_goes_further_back_is_read_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An empty page whose ``next_before`` is further back (numbers that were holes) is
    not the end either: the page before it is read at once."""
    timeline = _Timeline(40, set(), holes=frozenset(range(20, 41)), slack=0)
    page = await _public_history(tmp_path, monkeypatch, timeline, None)
    assert [m["seq"] for m in page["messages"]] == list(range(11, 20))  # type: ignore[attr-defined]
    assert timeline.calls == [None, 31, 21]
