"""Rooms in the web client, end to end: two browser users and a Python SDK user,
through HAProxy (web/chat/README.md, "Tests").

tests/web/chat_rooms.mjs drives Debian's Chromium (playwright-core) with two
browser contexts, A and B; when the story needs the Python user R it prints a
``PY {json}`` line and waits for this test's ``OK {json}`` (or ``ERR text``):

1. A creates a private room in the page and invites B and R by username; R accepts
   (SDK), B accepts in the page (keyboard only);
2. A, B and R each write once: every one reads the other two (sender keys
   distributed over the pairwise sessions as control payloads, both ways between
   the TypeScript and the Python implementation);
3. B logs out; A writes twice and R once; B logs in again and reads the three from
   the room's log (POST /delivery/v1/rooms/logs with B's cursor, 3: nothing of a
   private room is in a device's inbox now), each exactly once; after a reload B reads
   the log from the cursor kept in its vault (6), and nothing shows twice;
4. R sends a message under a new sender-key chain it gives nobody yet (both pages keep
   it sealed); B answers meanwhile, and its page places the answer at the number the
   room's log gave it; R gives the key: both pages show R's message before B's
   answer, in the room's order (history.ts ``inRoomOrder``);
5. R links a second device (SDK); A's next message reaches it at once. A's page read
   R's devices less than 30 s before (in a normal run), so it names only R's first
   device in ``device_digest``: the gateway refuses (``devices_changed``), A gives the
   new device its key, encrypts the text again and resends it with the same id (a
   resend's body is checked to be new; the number of tries is printed with ``-s``:
   2, or 1 on a machine slow enough that A read the lists again first). Either way
   R's new device shows that one message, nothing left sealed;
6. B leaves: A's next message rotates its sender key (R then holds two chains of
   A's device) and still reaches R;
7. A creates a public room; B finds it in the directory and joins (focus lands on
   the room, Tab goes on in order); A's post shows in B's page; no horizontal
   scroll at 390 px;
8. A's IndexedDB, read raw: every row sealed, no room id in a row name, no text.

No plaintext of the private room is in MongoDB, Kafka or Redis afterwards.
Screenshots as test_chat_browser.py takes them (``PARLEY_UPDATE_SCREENSHOTS=1``
replaces web/images/chat-room*.png).

tests/web/chat_rooms_moderation.mjs (``test_browser_reports_unsends_and_edits_in_rooms``),
browser user A and R in a private room, then a public one
(docs/moderation-messages.md): A reports R's message from the page and the admins'
queue holds it, verified, with the room and A as the reporter; A removes its own
message for everyone and R's client shows it removed (text gone); R unsends one and
A's page shows it removed; A edits its own public post (a refused edit shows its
error first) and the timeline holds the new text, marked ``edited``; R's post has no
Edit and no Delete; A deletes its own post after a confirmation (cancelled once): the
page shows it removed and the timeline R reads holds it empty, ``deleted_by_author``;
R deletes its own post and A's page shows it removed live (``room_message_changed``).

tests/web/chat_rooms_typing.mjs (``test_browser_typing_in_rooms``), browser user A and
R in a private room, then a public one (docs/protocol.md, "Typing"): A types in the
composer without sending and R's SDK gets a ``Typing`` event from A's user; clearing
the draft sends the stop, as sending a message does; R says it types and A's page
shows "R is typing…" in a polite live region until R's message arrives; with "Let
members see when I type" off, R gets A's post and no typing.

tests/web/chat_rooms_restore.mjs (``test_browser_restores_removed_posts``), browser
user A, the owner of a public room, and R (docs/moderation.md): A removes R's post and
R's SDK gets ``room_message_changed`` with the marker; A restores it (Restore, behind a
confirmation) and both A's page and R (``room_message_changed``, marker None, the text
back) show it again; R's own deletion shows no Restore; a post an admin hid is offered
Restore, which the server refuses (``forbidden``, shown in an alert), and the admin's
restore shows its text again in A's page, live.
The scripts share tests/web/chat_rooms_lib.mjs.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from parley import Client
from parley.crypto.encoding import b64encode
from parley.events import MessageRemoved, RoomMessage, RoomMessageChanged, Typing
from parley.messenger import encode_control
from parley.store import KdfParams
from parley_contract.envelopes import room_server_id

from scripts.stack import ROOT
from tests.e2e.test_moderation_messages import admin_token
from tests.e2e.test_no_plaintext import kafka_blobs, mongo_blobs, redis_blobs
from tests.support.secrets import forms
from tests.support.stack import System

WEB = ROOT / "web"
DOC_SHOTS = WEB / "images"
SHOTS = ("chat-room", "chat-room-public", "chat-room-phone")


class PythonSide:
    """The SDK user R, and what the scripts ask of it."""

    def __init__(self, client: Client, system: System, tmp: Path | None = None) -> None:
        self.r = client
        self.system = system
        self.texts: list[str] = []
        self.tmp = tmp
        self.r2: Client | None = None  # R's second device, once linked
        self.held_key = b""  # a sender-key chain R has not given yet (send_before_key)

    async def act(self, req: dict[str, Any]) -> dict[str, Any]:
        r, do = self.r, req["do"]
        if do == "accept":
            await r.rooms.accept(req["room"])
            return {}
        if do == "send":
            if req.get("track", True):  # a reported text is, by design, kept for the admins
                self.texts.append(req["text"])
            client_id = await r.rooms.send(req["room"], req["text"])
            assert r.user_id is not None
            return {"client_id": client_id,
                    "server_id": room_server_id(req["room"], r.user_id, client_id)}  # fmt: skip
        if do == "send_before_key":  # under a new chain R gives nobody yet (give_key)
            self.texts.append(req["text"])
            room = await r.rooms.resolve(req["room"])
            members = await r.rooms.member_ids(req["room"])
            keyed = await r.rooms._distribute(req["room"], int(room["version"]), members)
            async with r.store.transaction() as tx:
                session = r.rooms.group(tx, req["room"])
                self.held_key = session.rotate()  # the new chain where the message starts
                r.rooms._put_group(tx, session)
            frame = await r.rooms._encrypt(req["room"], req["text"], [], keyed)
            await r.messenger.submit(frame, f"room:{req['room']}")
            return {}
        if do == "give_key":  # that chain, to the room's other members
            payload = encode_control(
                {"t": "skd", "room": req["room"], "d": b64encode(self.held_key)}
            )
            for user_id in await r.rooms.member_ids(req["room"]):
                if user_id != r.user_id:
                    await r.messenger.send_control(user_id, payload)
            return {}
        if do == "unsend":
            await r.unsend(req["client_id"], f"room:{req['room']}")
            return {}
        if do == "expect_removed":  # a verified tombstone, and what R's history shows now
            while True:
                removed = await r.next_event(MessageRemoved, timeout=30)
                assert isinstance(removed, MessageRemoved)
                if removed.server_id == req["server_id"]:
                    break
            assert removed.peer_id == f"room:{req['room']}"
            history = r.store.read().history(f"room:{req['room']}")
            [entry] = [e for e in history if e.get("server_id") == req["server_id"]]
            return {"by": removed.by, "kind": entry["kind"], "text": entry["text"]}
        if do == "admin_report":  # the report of that message by that user, as admins see it
            report = await find_report(self.system, req["server_id"])
            reporter, _ = await r.resolve(req["reporter"])
            assert report["text"] == req["text"], report
            assert report["room"] == req["room"], report
            assert report["conversation"] == f"room:{req['room']}", report
            assert (report["sender"], report["reporter"]) == (r.user_id, reporter), report
            assert report["state"] == "open", report
            return {}
        if do == "public_post":
            page = await r.rooms.history(req["room"], limit=50)
            [post] = [m for m in page["messages"] if m["seq"] == req["seq"]]
            return {"text": post["text"], "marker": post["marker"]}
        if do == "delete_post":  # R deletes its own public post
            deleted = await r.rooms.delete(req["room"], req["seq"])
            assert deleted["marker"] == "deleted_by_author", deleted
            return {}
        if do == "typing":  # R says it types in the room
            await r.rooms.typing(req["room"])
            return {}
        if do == "expect_typing":  # the next typing R sees is this user's, in this room
            event = await r.next_event(Typing, timeout=15)
            assert isinstance(event, Typing)
            user_id, name = await r.resolve(req["user"])
            got = (event.room_id, event.user_id, event.username, event.typing)
            assert got == (req["room"], user_id, name, req["typing"]), got
            return {}
        if do == "expect_no_typing":  # this text arrives, with no typing said before it
            while True:
                message = await r.next_event(RoomMessage, timeout=30)
                assert isinstance(message, RoomMessage)
                if message.text == req["text"]:
                    break
            # A typing notice goes out on the typer's socket before its message, and
            # reaches R first: one said would be buffered by now.
            with pytest.raises(TimeoutError):
                said = await r.next_event(Typing, timeout=0.1)
                raise AssertionError(f"typing said with the setting off: {said}")
            return {}
        if do == "join":
            await r.rooms.join(req["room"])
            return {}
        if do == "join_and_post":
            await r.rooms.join(req["room"])
            await r.rooms.send(req["room"], req["text"])
            return {}
        if do == "expect":
            while True:
                event = await r.next_event(RoomMessage, timeout=30)
                assert isinstance(event, RoomMessage)
                if event.text == req["text"]:
                    assert event.room_id == req["room"] and not event.public
                    return {"from": event.username}
        if do == "link":  # R links a second device (approved by the first) and connects it
            assert self.tmp is not None and r.username is not None
            r2 = self.r2 = await sdk_client(self.tmp / "r2", self.system.lb)
            code = await r2.link_device(r.username, PASSWORD)
            waiting = asyncio.create_task(r2.wait_linked(60))
            await r.approve_device(code)
            await waiting
            await r2.connect()
            return {}
        if do == "expect_on_new":  # R's second device decrypts this text, nothing left sealed
            assert self.r2 is not None
            while True:
                event = await self.r2.next_event(RoomMessage, timeout=30)
                assert isinstance(event, RoomMessage)
                if event.text == req["text"]:
                    break
            assert self.r2.rooms.pending(req["room"]) == 0
            texts = [e["text"] for e in self.r2.history(f"room:{req['room']}")]
            assert texts == [req["text"]], texts  # linked after the rest: only this one
            return {}
        if do == "chains":
            # How many sender-key chains of `user`'s devices R holds for the room.
            user_id, _ = await r.resolve(req["user"])
            session = r.rooms.group(r.store.read(), req["room"])
            state = json.loads(session.to_bytes())
            chains = sum(
                len(c) for m, c in state["receivers"].items() if m.startswith(f"{user_id}:")
            )
            return {"chains": chains}
        raise AssertionError(f"unknown action {req!r}")


async def find_report(system: System, server_id: str) -> dict[str, Any]:
    """The open report of ``server_id`` in the admins' queue (every page read)."""
    headers = {"Authorization": f"Bearer {await admin_token(system)}"}
    after: str | None = None
    async with aiohttp.ClientSession(headers=headers) as http:
        while True:
            query = "state=open&limit=100" + (f"&after={after}" if after else "")
            async with http.get(f"{system.lb}/delivery/v1/admin/reports?{query}") as resp:
                assert resp.status == 200, await resp.text()
                page = await resp.json()
            for report in page["reports"]:
                if report["server_id"] == server_id:
                    return dict(report)
            after = page["next"]
            if after is None:
                raise AssertionError(f"no open report of {server_id} in the admins' queue")


PASSWORD = "correct horse battery staple"


async def sdk_client(data_dir: Path, lb: str) -> Client:
    client = Client(
        lb, data_dir=data_dir, passphrase="test passphrase",
        kdf=KdfParams(n=2**10, r=8, p=1), backoff_start=0.1, backoff_max=1.0,
    )  # fmt: skip
    await client.open()
    return client


async def python_user(system: System, tmp_path: Path, tag: str) -> Client:
    r = await sdk_client(tmp_path / "r", system.lb)
    await r.signup(f"pyr{tag}", PASSWORD, f"pyr{tag}@example.test")
    await r.connect()
    return r


async def run_script(
    script: str, env: dict[str, str], py: PythonSide, timeout: float
) -> tuple[str, list[str]]:
    """Run a browser script, answering its ``PY`` lines with ``py``; its output and the
    texts it reported on ``TEXTS`` lines. Fails with the output if the script does."""
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(ROOT / "tests" / "web" / script),
        env={**os.environ, "WEB_DIR": str(WEB), **env},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdin is not None and proc.stdout is not None
    log: list[str] = []
    browser_texts: list[str] = []
    try:

        async def converse() -> None:
            assert proc.stdin is not None and proc.stdout is not None
            while line := (await proc.stdout.readline()).decode():
                log.append(line.rstrip())
                if line.startswith("PY "):
                    try:
                        answer = "OK " + json.dumps(await py.act(json.loads(line[3:])))
                    except Exception as exc:  # told to the script, which fails with it
                        answer = f"ERR {type(exc).__name__}: {exc}"
                    proc.stdin.write(answer.encode() + b"\n")
                    await proc.stdin.drain()
                elif line.startswith("TEXTS "):
                    browser_texts.extend(json.loads(line[6:]))

        await asyncio.wait_for(converse(), timeout=timeout)
        code = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    output = "\n".join(log)
    assert code == 0, output[-6000:]
    return output, browser_texts


BROWSER = pytest.mark.skipif(
    not Path("/usr/bin/chromium").exists() or shutil.which("node") is None,
    reason="needs Debian's chromium and node (scripts/install.sh installs them)",
)


@BROWSER
async def test_two_browsers_and_python_share_rooms(system: System, tmp_path: Path) -> None:
    assert (WEB / "chat" / "dist" / "index.html").exists(), "make install builds web/chat"
    update = os.environ.get("PARLEY_UPDATE_SCREENSHOTS") == "1"
    shots = DOC_SHOTS if update else tmp_path / "shots"
    shots.mkdir(parents=True, exist_ok=True)
    tag = secrets.token_hex(4)
    r = await python_user(system, tmp_path, tag)
    py = PythonSide(r, system, tmp_path)
    env = {
        "LB": system.lb,
        "SHOTS": str(shots),
        "A_USER": f"weba{tag}",
        "B_USER": f"webb{tag}",
        "R_USER": str(r.username),
        "TAG": tag,
    }
    try:
        output, browser_texts = await run_script("chat_rooms.mjs", env, py, timeout=150)
    finally:
        if py.r2 is not None:
            await py.r2.close()
        await r.close()
    assert "chat rooms: ok" in output, output[-3000:]
    # R's linked device read A's next message (refused first, then resent, when A had read
    # R's devices in the last 30 s; printed with -s).
    [tries] = [ln for ln in output.splitlines() if ln.startswith("room_send tries")]
    print(tries)
    for name in SHOTS:
        assert (shots / f"{name}.png").stat().st_size > 5000, name

    # The private room's texts are nowhere on the server in the clear.
    plaintexts = sorted(set(py.texts + browser_texts))
    assert len(plaintexts) == 12  # A seven times, B twice, R three times
    blobs = list(mongo_blobs(system)) + await kafka_blobs(system) + list(redis_blobs(system))
    for where, blob in blobs:
        for text in plaintexts:
            for form in forms(text):
                assert form not in blob, f"{text!r} readable in {where} (as {form!r})"


async def browser_scenario(
    system: System, tmp_path: Path, script: str, prefix: str, timeout: float,
    side: Callable[[Client, str, str], PythonSide] | None = None, lb: str | None = None,
) -> None:  # fmt: skip
    """The browser user ``<prefix><tag>`` runs ``script`` against a Python SDK user R,
    whose side answers the script's ``PY`` lines (``side(R, browser user, tag)``,
    :class:`PythonSide` by default); the script must end with ``<what>: ok``. ``lb``:
    where the browser opens the web client (HAProxy by default)."""
    assert (WEB / "chat" / "dist" / "index.html").exists(), "make install builds web/chat"
    tag = secrets.token_hex(4)
    a_user = f"{prefix}{tag}"
    r = await python_user(system, tmp_path, tag)
    py = side(r, a_user, tag) if side is not None else PythonSide(r, system)
    env = {"LB": lb or system.lb, "A_USER": a_user, "R_USER": str(r.username), "TAG": tag}
    try:
        output, _ = await run_script(script, env, py, timeout=timeout)
    finally:
        await r.close()
    done = script.removesuffix(".mjs").replace("_", " ") + ": ok"
    assert done in output, output[-3000:]


@BROWSER
async def test_browser_reports_unsends_and_edits_in_rooms(system: System, tmp_path: Path) -> None:
    await browser_scenario(system, tmp_path, "chat_rooms_moderation.mjs", "webm", timeout=120)


@BROWSER
async def test_browser_typing_in_rooms(system: System, tmp_path: Path) -> None:
    await browser_scenario(system, tmp_path, "chat_rooms_typing.mjs", "webt", timeout=90)


class RestoreSide(PythonSide):
    """R, plus an admin who hides and restores a public post (the admin routes)."""

    def __init__(self, client: Client, system: System) -> None:
        super().__init__(client, system)
        self.admin: str | None = None  # an admin's access token, made once

    async def as_admin(self, room: str, seq: int, verb: str) -> None:
        if self.admin is None:
            self.admin = await admin_token(self.system)
        url = f"{self.system.lb}/rooms/v1/admin/rooms/{room}/messages/{seq}/{verb}"
        headers = {"Authorization": f"Bearer {self.admin}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            async with http.post(url, json={"reason": "browser test"}) as resp:
                assert resp.status == 200, await resp.text()

    async def act(self, req: dict[str, Any]) -> dict[str, Any]:
        r, do = self.r, req["do"]
        if do == "post":  # R posts in a public room it is a member of; the post's number
            await r.rooms.send(req["room"], req["text"])
            page = await r.rooms.history(req["room"], limit=20)
            [post] = [m for m in page["messages"] if m["text"] == req["text"]]
            return {"seq": post["seq"]}
        if do == "expect_changed":  # the next change R is told of that post (of that marker)
            while True:
                event = await r.next_event(RoomMessageChanged, timeout=30)
                assert isinstance(event, RoomMessageChanged)
                if (event.room_id, event.seq) != (req["room"], req["seq"]):
                    continue
                if "marker" not in req or event.marker == req["marker"]:
                    return {"marker": event.marker, "text": event.text, "rev": event.rev}
        if do in ("admin_hide", "admin_restore"):
            await self.as_admin(req["room"], req["seq"], do.removeprefix("admin_"))
            return {}
        return await super().act(req)


@BROWSER
async def test_browser_restores_removed_posts(system: System, tmp_path: Path) -> None:
    await browser_scenario(
        system, tmp_path, "chat_rooms_restore.mjs", "webr", timeout=120,
        side=lambda r, _a, _tag: RestoreSide(r, system),
    )  # fmt: skip
