"""A device with megabytes waiting syncs them all: a page stops at a byte budget, at
delivery (``sync_page_bytes``) and at the gateway (half of what may wait for one
socket), instead of pushing 200 items of 60 KB at once, which closed the socket as
a slow consumer (4008) on every sync, so such a device could never catch up."""

from __future__ import annotations

from typing import Any

import pytest

from services.delivery.store import PAGE_ITEM_BYTES
from tests.support.messaging import Messaging, start_messaging
from tests.support.users import uid

BODY = "QUJD" * 15_000  # 60,000 characters: a large message, under the 64 KiB frame
N = 90  # 5.4 MB waiting: more than the 4 MiB a socket may have unread


async def _send_large(m: Messaging, to: str) -> None:
    sender = await m.connect(uid())
    m.issuer.users.add(to)
    await sender.send_stored(to, [(f"c{i}", BODY) for i in range(N)])


async def _sync_all(m: Messaging, user: str) -> list[tuple[int, int]]:
    """Sync ``user``'s device from 0 until ``more`` is false, acking each page; returns
    each page's (items, bytes); checks every message came once, in order."""
    sock = await m.connect(user, pod=1)
    pages: list[tuple[int, int]] = []
    seqs: list[int] = []
    after = 0
    while True:
        await sock.send({"op": "sync", "id": f"p{after}", "after": after, "limit": 200})
        items: list[dict[str, Any]] = []
        while (frame := await sock.next())["op"] != "synced":
            assert frame["op"] == "message"
            items.append(frame)
        assert frame["id"] == f"p{after}"
        pages.append((len(items), sum(len(i["body"]) for i in items)))
        seqs += [int(i["seq"]) for i in items]
        assert all(i["body"] == BODY for i in items)
        if items:
            after = int(frame["last"])
            assert after == seqs[-1]
            await sock.send({"op": "ack", "seq": after})
        if not frame["more"]:
            break
    assert len(seqs) == N and seqs == sorted(set(seqs))
    assert not sock.closed.is_set()
    return pages


async def test_megabytes_waiting_sync_in_pages_of_a_megabyte(messaging: Messaging) -> None:
    bob = uid()
    await _send_large(messaging, bob)
    pages = await _sync_all(messaging, bob)
    per_page = messaging.settings.sync_page_bytes // (len(BODY) + PAGE_ITEM_BYTES)  # 17
    assert [n for n, _ in pages] == [per_page] * (N // per_page) + [N % per_page]
    assert max(b for _, b in pages) <= messaging.settings.sync_page_bytes


@pytest.fixture
async def unbudgeted(issuer: Any, make_client: Any) -> Any:
    """Delivery answering pages of any size (an operator's ``sync_page_bytes``) and a
    gateway that may hold only 1 MiB per socket."""
    m = await start_messaging(
        issuer,
        make_client,
        sync_page_bytes=64 * 1024 * 1024,
        ws_outbound_queue_bytes=1024 * 1024,
    )
    yield m
    for c in m.clients:
        await c.close()


async def test_the_gateway_ends_a_page_early_rather_than_close_the_socket(
    unbudgeted: Messaging,
) -> None:
    bob = uid()
    await _send_large(unbudgeted, bob)
    pages = await _sync_all(unbudgeted, bob)
    # Half of the 1 MiB a socket may hold: 8 of 60 KB (the first always goes).
    assert len(pages) > 2 and max(n for n, _ in pages) <= 9
    assert max(b for _, b in pages) <= 512 * 1024 + len(BODY)
    assert unbudgeted.hub(1).errors.labels("slow_consumer")._value.get() == 0
