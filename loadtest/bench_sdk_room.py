"""What one pushed private-room message costs the Python SDK in a room of many devices.

A member device receives a room message: it reads the sender's chain, decrypts,
writes the history entry and the advanced chain, in one store transaction
(parley/rooms.py). The room's sender-key state is kept in rows (one for this
device's chain, one per member device: docs/client.md, "Sender keys in the store").
Side by side, in the same process and store:

- *rows* (what the SDK does): ``Rooms.on_room_message``, the page's sender's row
  read and written;
- *whole state* (the baseline, what the SDK did before 2026-12-08): the same
  messages decrypted with the room's whole ``GroupSession`` read, parsed, sealed
  and written back in each transaction, as the old single ``group`` row was.

libsignal, the peer, keeps a sender key record per (sender, distribution id), as
the rows do. Every member device holds ``--chains`` chains (rotations). Reported:
milliseconds per message (the frame loop is blocked that long) and bytes sealed
into the store per message. No server is involved.

    .venv/bin/python -m loadtest.bench_sdk_room [--devices 999] [--chains 6] [--messages 30]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from parley import Client
from parley.crypto import GroupSession
from parley.crypto.encoding import b64encode
from parley_contract import frames as f

from tests.client.test_room_pending import room_member

ROOM = "d" * 24


def _member(i: int) -> str:
    return f"u{i:031d}"


def _sealed(client: Client) -> Any:
    """Count the bytes the store seals (what is written) from now on."""
    store = client.store
    counted = {"bytes": 0}
    seal = store._seal  # type: ignore[attr-defined]

    def counting(plaintext: bytes, where: str) -> bytes:
        counted["bytes"] += len(plaintext)
        return seal(plaintext, where)  # type: ignore[no-any-return]

    store._seal = counting  # type: ignore[attr-defined]
    return counted


async def run(devices: int, chains: int, messages: int) -> dict[str, float]:
    senders = [GroupSession.create(ROOM) for _ in range(devices)]
    out: dict[str, float] = {}
    with (
        tempfile.TemporaryDirectory() as tmp,
        pytest.MonkeyPatch.context() as patch,
    ):
        # A member's client as the room tests make one (signed in as far as a room's
        # receiving side needs; no server).
        async with room_member(Path(tmp), patch) as client:
            async with client.store.transaction() as tx:
                group = client.rooms.group(tx, ROOM)
                for i, sender in enumerate(senders):
                    member = f"{_member(i)}:1"
                    group.process_distribution(member, sender.distribution_message())
                    for _ in range(chains - 1):
                        group.process_distribution(member, sender.rotate())
                client.rooms._put_group(tx, group)
                whole = group.to_bytes()
            out["state_bytes"] = len(whole)

            frames = []
            for n in range(messages):
                i = n % devices
                body = b64encode(senders[i].encrypt(f"m{n}".encode()))
                frames.append(f.RoomMessage(
                    room=ROOM, seq=n + 1, server_id=f"{n + 1:024x}", from_=_member(i),
                    from_device=1, body=body, sent_at=1_700_000_000_000 + n,
                ))  # fmt: skip

            # Rows: what the SDK does.
            counted = _sealed(client)
            start = time.perf_counter()
            for frame in frames:
                await client.rooms.on_room_message(frame)
            out["rows_ms"] = (time.perf_counter() - start) / messages * 1000
            out["rows_bytes"] = counted["bytes"] / messages
            shown = [e for e in client.history(f"room:{ROOM}") if e.get("kind") == "message"]
            assert len(shown) == messages, len(shown)

            # Whole state: the same messages again, through one whole row as before.
            key = "bench_whole_group"
            async with client.store.transaction() as tx:
                tx.put_bytes(key, whole)
            counted["bytes"] = 0
            start = time.perf_counter()
            for frame in frames:
                async with client.store.transaction() as tx:
                    state = GroupSession.from_bytes(tx.get_bytes(key) or b"")
                    member = f"{frame.from_}:{frame.from_device}"
                    state.decrypt(member, bytes.fromhex(_hex(frame.body)))
                    tx.add_message(
                        f"bench:{ROOM}", {"text": "x", "kind": "message"}, ref=frame.server_id
                    )
                    tx.put_bytes(key, state.to_bytes())
            out["whole_ms"] = (time.perf_counter() - start) / messages * 1000
            out["whole_bytes"] = counted["bytes"] / messages
    return out


def _hex(body: str) -> str:
    from parley.crypto.encoding import b64decode

    return b64decode(body).hex()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=999)
    parser.add_argument("--chains", type=int, default=6)
    parser.add_argument("--messages", type=int, default=30)
    args = parser.parse_args()
    r = asyncio.run(run(args.devices, args.chains, args.messages))
    print(f"room of {args.devices} member devices, {args.chains} chains each: "
          f"whole state {r['state_bytes'] / 1e6:.2f} MB")  # fmt: skip
    print("| storage | ms per pushed message | bytes sealed per message |")
    print("|---|---:|---:|")
    print(f"| rows (the SDK) | {r['rows_ms']:.1f} | {r['rows_bytes']:,.0f} |")
    print(f"| whole state (before 2026-12-08) | {r['whole_ms']:.1f} | {r['whole_bytes']:,.0f} |")


if __name__ == "__main__":
    main()
