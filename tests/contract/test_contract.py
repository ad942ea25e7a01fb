"""The wire contract: frames parse and fail with stable codes; the JSON Schema is
fresh; docs/protocol.md documents exactly the frames and fields that exist."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any, get_args

import msgspec
import pytest
from parley_contract import envelopes as e
from parley_contract import frames as f
from parley_contract.errors import ErrorCode
from parley_contract.schema import render

ROOT = Path(__file__).resolve().parents[2]


def test_the_committed_json_schema_is_fresh() -> None:
    committed = (ROOT / "contract/schema/parley.schema.json").read_text()
    assert committed == render(), (
        "contract/schema/parley.schema.json is stale: "
        "run `.venv/bin/python -m parley_contract.schema > contract/schema/parley.schema.json`"
    )


@pytest.mark.parametrize(
    ("raw", "code", "field"),
    [
        (b"{nope", ErrorCode.INVALID_JSON, None),
        (b"[1, 2]", ErrorCode.BAD_REQUEST, None),
        (b'"send"', ErrorCode.BAD_REQUEST, None),
        (b"{}", ErrorCode.UNKNOWN_OP, None),
        (b'{"op": "teleport"}', ErrorCode.UNKNOWN_OP, None),
        (b'{"op": 7}', ErrorCode.UNKNOWN_OP, None),
        (b'{"op": "send", "id": "a", "to": "b"}', ErrorCode.VALIDATION_FAILED, "copies"),
        (b'{"op": "send", "id": "a", "to": "b", "copies": []}', ErrorCode.VALIDATION_FAILED,
         "copies"),
        (b'{"op": "send", "id": "a", "to": "b", "body": "x"}', ErrorCode.VALIDATION_FAILED,
         "body"),
        (b'{"op": "send", "id": "a", "to": "b", "copies": [{"user": "b", "device": 1, "body": "x"}], "cc": 1}',
         ErrorCode.VALIDATION_FAILED, "cc"),
        (b'{"op": "send", "id": "a b", "to": "b", "copies": [{"user": "b", "device": 1, "body": "x"}]}',
         ErrorCode.VALIDATION_FAILED, "id"),
        (b'{"op": "send", "id": "", "to": "b", "copies": [{"user": "b", "device": 1, "body": "x"}]}',
         ErrorCode.VALIDATION_FAILED, "id"),
        (b'{"op": "send", "id": "a", "to": "b/c", "copies": [{"user": "b", "device": 1, "body": "x"}]}',
         ErrorCode.VALIDATION_FAILED, "to"),
        (b'{"op": "send", "id": "a", "to": "b", "copies": [{"user": "b", "device": 1, "body": "x+y="}]}',
         ErrorCode.VALIDATION_FAILED, "copies[0].body"),
        (b'{"op": "send", "id": "a", "to": "b", "copies": [{"user": "b", "device": 1, "body": ""}]}',
         ErrorCode.VALIDATION_FAILED, "copies[0].body"),
        (b'{"op": "send", "id": "a", "to": "b", "copies": [{"user": "b", "device": 0, '
         b'"body": "x"}]}', ErrorCode.VALIDATION_FAILED, "copies[0].device"),
        (b'{"op": "send", "id": "a", "to": "b", "copies": [{"user": "b", "device": 1, '
         b'"body": "x"}, {"user": "b", "device": 1, "body": "y"}]}',
         ErrorCode.VALIDATION_FAILED, "copies"),
        # A commitment beside the body that is not the body's own (bytes [2:34]): the
        # message could never be reported (the server tags the one beside).
        (b'{"op": "send", "id": "a", "to": "b", "copies": [{"user": "b", "device": 1, '
         b'"body": "' + b"A" * 64 + b'", "commitment": "' + b"B" * 43 + b'"}]}',
         ErrorCode.VALIDATION_FAILED, "copies[0].commitment"),
        (b'{"op": "send", "id": "a", "to": "b", "copies": [{"user": "b", "device": 1, '
         b'"body": "QUJD", "commitment": "' + b"A" * 43 + b'"}]}',
         ErrorCode.VALIDATION_FAILED, "copies[0].commitment"),
        (b'{"op": "room_send", "id": "a", "room": "' + b"a" * 24 + b'", "body": "'
         + b"A" * 64 + b'", "commitment": "' + b"B" * 43 + b'"}',
         ErrorCode.VALIDATION_FAILED, "commitment"),
        (b'{"op": "ack", "seq": -1}', ErrorCode.VALIDATION_FAILED, "seq"),
        (b'{"op": "ack", "seq": true}', ErrorCode.VALIDATION_FAILED, "seq"),
        (b'{"op": "ack", "seq": 1.5}', ErrorCode.VALIDATION_FAILED, "seq"),
        (b'{"op": "ack", "seq": 99999999999999999999999}', ErrorCode.VALIDATION_FAILED, "seq"),
        (b'{"op": "sync", "limit": 0}', ErrorCode.VALIDATION_FAILED, "limit"),
        (b'{"op": "sync", "limit": 1001}', ErrorCode.VALIDATION_FAILED, "limit"),
        (b'{"op": "auth"}', ErrorCode.VALIDATION_FAILED, "token"),
        (b'{"op": "ping", "id": "' + b"x" * 65 + b'"}', ErrorCode.VALIDATION_FAILED, "id"),
    ],
)  # fmt: skip
def test_bad_client_frames_fail_with_a_stable_code(
    raw: bytes, code: ErrorCode, field: str | None
) -> None:
    with pytest.raises(f.FrameError) as info:
        f.decode_client_frame(raw)
    assert info.value.code == code
    if field is not None:
        assert info.value.details is not None
        assert [d.field for d in info.value.details] == [field]


def test_good_client_frames_parse_with_their_defaults() -> None:
    sync = f.decode_client_frame(b'{"op": "sync"}')
    assert sync == f.Sync(after=0, limit=100, id=None)
    send = f.decode_client_frame(
        b'{"op":"send","id":"m-1","to":"u_1","copies":[{"user":"u_1","device":7,"body":"QUJD"}]}'
    )
    assert isinstance(send, f.Send) and send.copies[0].commitment is None
    assert send.copies[0].device == 7
    # A ciphertext's commitment is its bytes [2:34]; one sent beside it must be that.
    body = base64.urlsafe_b64encode(b"\x01\x01" + bytes(range(32)) + b"ct").rstrip(b"=")
    own = base64.urlsafe_b64encode(bytes(range(32))).rstrip(b"=")
    assert f.body_commitment(body.decode()) == own.decode()
    assert f.body_commitment("QUJD") is None
    good = f.decode_client_frame(
        b'{"op":"send","id":"m-1","to":"u_1","copies":[{"user":"u_1","device":7,"body":"'
        + body
        + b'","commitment":"'
        + own
        + b'"}]}'
    )
    assert isinstance(good, f.Send) and good.copies[0].commitment == own.decode()


def test_every_server_frame_round_trips() -> None:
    samples: list[f.ServerFrames] = [
        f.Ready(protocol=1, user_id="u", session_id="s", gateway="g",
                limits=f.Limits(max_frame_bytes=1, sends_per_s=1.0, send_burst=1)),
        f.Accepted(id="a", server_id="s", conversation="dm:a:b"),
        f.Stored(id="a", server_id="s", conversation=None, to="b", device=2),
        f.Delivered(id="a", server_id="s", conversation="dm:a:b", to="b", device=2),
        f.Message(seq=3, server_id="s", from_="a", from_device=1, body="QQ", sent_at=1),
        f.KeyChanged(seq=4, server_id="s", user_id="a", account_key="aw"),
        f.Message(seq=6, server_id="s", from_="a", from_device=1, body="QQ", commitment="Qw",
                  franking_tag="1.QUJD"),
        f.Tombstone(seq=7, server_id="s", from_="a", conversation="dm:a:b", by="admin", at=1,
                    kid="1", signature="c2ln"),
        f.PrekeysLow(user_id="u", device_id=1, one_time=1, kem_one_time=2, threshold=10),
        f.Message(seq=5, server_id="s", from_="a", from_device=1, body="QQ", room="r",
                  conversation="room:r", mentions=["b"]),
        f.RoomMessage(room="r", seq=1, server_id="s", from_="a", from_device=2, body="QQ",
                      sent_at=1, commitment="Qw", mentions=["b"], franking_tag="1.QUJD"),
        f.RoomPost(room_id="r", seq=1, sender="a", client_id="c", text="hi @b",
                   mentions=["b"], sent_at=1),
        f.Notification(seq=1, kind="mention", room_id="r", room_name="general", sender="a",
                       excerpt="hi @b", at=1, message_seq=1),
        f.RoomMessageChanged(room_id="r", seq=1, rev=2, marker="removed_by_moderator", text="",
                             mentions=[], at=2),
        f.RoomChanged(room_id="r", change="kind", kind="private", state="open", version=3,
                      at=2),
        f.TypingNotice(room_id="r", user="a", device=2, typing=True),
        f.Synced(last=4, more=False, id="x"),
        f.Pong(id="p"),
        f.Reconnect(reason="server_shutting_down"),
        f.Resync(reason="routing_restored"),
        f.Error(code="rate_limited", message="slow down", id="a",
                details=[f.FieldError(field="x", problem="y")]),
        f.Error(code="devices_changed", message="m", id="a",
                devices=[f.DeviceList(user="b", devices=[1, 2])]),
    ]  # fmt: skip
    assert {str(type(s).__struct_config__.tag) for s in samples} == set(f.SERVER_OPS)
    for frame in samples:
        assert f.decode_server_frame(f.encode(frame)) == frame
    # A client meets ops and fields newer than itself: unknown fields are ignored,
    # an unknown op is a FrameError it can skip.
    assert f.decode_server_frame(b'{"op":"pong","id":"p","new":1}') == f.Pong(id="p")
    with pytest.raises(f.FrameError):
        f.decode_server_frame(b'{"op":"hologram"}')


def test_envelopes_and_routed_frames_round_trip() -> None:
    env = e.message_envelope(sender="a", sender_device=3, sender_sid="s", peer="b", user="b",
                             device=2, client_id="c", body="QQ", commitment=None)  # fmt: skip
    assert e.decode_envelope(e.encode(env)) == env
    assert env.conversation == e.conversation_id("b", "a")
    assert env.inbox == "b.2"
    # Every copy and every resend of a message share one server id.
    again = e.message_envelope(sender="a", sender_device=3, sender_sid="s", peer="b", user="a",
                               device=5, client_id="c", body="Qg", commitment=None)  # fmt: skip
    assert again.server_id == env.server_id and again.conversation == env.conversation
    routed = e.routed("b", 2, e.item_frame(env, 9))
    raw = e.decode_routed(e.encode(routed))
    assert raw.to == "b" and raw.device == 2 and raw.op == "message"
    assert f.decode_server_frame(bytes(raw.frame)) == e.item_frame(env, 9)
    with pytest.raises(e.DecodeError):
        e.decode_envelope(b'{"kind": "message", "v": 2}')  # a version we do not know
    # A batch for one pod is a list of routed frames.
    batch = e.decode_routed(b"[" + e.encode(routed) + b"," + e.encode(routed) + b"]")
    assert isinstance(batch, list) and [r.to for r in batch] == ["b", "b"]


def test_a_tombstone_notice_becomes_its_frame_and_the_signed_bytes_are_unambiguous() -> None:
    env = e.TombstoneNotice(server_id="s", to="b", to_device=2, from_="a", client_id="tombstone:s",
                            conversation="dm:a:b", sent_at=5, by="sender", kid="1",
                            signature="c2ln", target_seq=3)  # fmt: skip
    assert e.decode_envelope(e.encode(env)) == env
    frame = e.item_frame(env, 9)
    assert frame == f.Tombstone(seq=9, server_id="s", from_="a", conversation="dm:a:b",
                                by="sender", at=5, kid="1", signature="c2ln")  # fmt: skip
    one = f.tombstone_signed_bytes(kid="1", server_id="ab", sender="c", conversation=None,
                                   by="admin", at=5)  # fmt: skip
    two = f.tombstone_signed_bytes(kid="1", server_id="a", sender="bc", conversation=None,
                                   by="admin", at=5)  # fmt: skip
    assert one != two and one.startswith(f.TOMBSTONE_CONTEXT)


def test_a_room_message_is_one_record_and_copies_name_their_inboxes() -> None:
    room = "0123456789abcdef01234567"
    env = e.RoomEnvelope(server_id=e.room_server_id(room, "a", "c"), room=room, from_="a",
                         from_device=1, client_id="c", body="QQ", sent_at=1, mentions=["b"],
                         targets=["b.1", "b.2", "a.2", "b.1", "bogus", "c.x", ".3"])  # fmt: skip
    assert e.decode_room_envelope(e.encode(env)) == env
    targets = e.room_targets(env)
    assert targets == ["b.1", "b.2", "a.2"]  # once each, malformed dropped
    # Protocol 2's copies (produced before an upgrade) are read back as the message.
    copies = e.RoomCopies(server_id=env.server_id, room=room, from_="a", from_device=1,
                          client_id=f"room:{room}:c", conversation=f"room:{room}", sent_at=1,
                          body="QQ", mentions=["b"], inboxes=targets)  # fmt: skip
    assert e.decode_envelope(e.encode(copies)) == copies
    assert e.room_envelope_of(copies) == msgspec.structs.replace(env, targets=targets)
    # Resends share the server id; another room or sender does not.
    assert e.room_server_id(room, "a", "c") == env.server_id
    assert e.room_server_id(room, "b", "c") != env.server_id
    assert e.room_server_id("f" * 24, "a", "c") != env.server_id


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"op":"room_send","id":"m","room":"0123456789ABCDEF01234567","body":"QQ"}', "room"),
        (b'{"op":"room_send","id":"m","room":"0123","body":"QQ"}', "room"),
        (b'{"op":"room_send","id":"m","room":"0123456789abcdef01234567","body":"Q Q"}', "body"),
        (b'{"op":"room_send","id":"m","room":"0123456789abcdef01234567","body":"QQ",'
         b'"mentions":["b","b"]}', "mentions"),
        (b'{"op":"room_send","id":"m","room":"0123456789abcdef01234567","body":"QQ",'
         b'"mentions":["a b"]}', "mentions"),
        (b'{"op":"room_send","id":"m","room":"0123456789abcdef01234567","body":"QQ",'
         b'"to":"b"}', "to"),
    ],
)  # fmt: skip
def test_bad_room_sends_fail_with_the_field_at_fault(raw: bytes, field: str) -> None:
    with pytest.raises(f.FrameError) as info:
        f.decode_client_frame(raw)
    assert info.value.code == ErrorCode.VALIDATION_FAILED
    assert info.value.details is not None and field in info.value.details[0].field


# -- docs/protocol.md ------------------------------------------------------------------------


def _doc_tables() -> dict[str, dict[str, set[str]]]:
    text = (ROOT / "docs/protocol.md").read_text()
    tables: dict[str, dict[str, set[str]]] = {}
    for heading, key in (("## Client → server", "client"), ("## Server → client", "server")):
        section = text.split(heading, 1)[1].split("\n## ", 1)[0]
        rows: dict[str, set[str]] = {}
        for line in section.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) < 2 or not re.fullmatch(r"`[a-z_]+`", cells[0]):
                continue
            # Not fields: a nested object's fields {...}, values in (...).
            fields = re.sub(r"\{[^}]*\}|\([^)]*\)", "", cells[1])
            rows[cells[0].strip("`")] = set(re.findall(r"`([a-z_]+)`", fields))
        tables[key] = rows
    return tables


def _fields(model: Any) -> set[str]:
    return {
        field.encode_name for field in msgspec.structs.fields(model) if field.encode_name != "op"
    }


@pytest.mark.parametrize("side", ["client", "server"])
def test_docs_protocol_lists_every_op_and_field_and_nothing_else(side: str) -> None:
    documented = _doc_tables()[side]
    union = f.ClientFrames if side == "client" else f.ServerFrames
    models = {str(m.__struct_config__.tag): m for m in get_args(union)}
    assert set(documented) == set(models), "ops documented vs ops in the contract"
    for op, model in models.items():
        assert documented[op] == _fields(model), f"fields of `{op}` in docs/protocol.md"
