"""What an idle socket keeps on its pod (issue #13; docs/BENCHMARKS.md, "Idle connections").

The gateway sheds per-socket objects that an idle socket does not use; some of
them are aiohttp's, reached by name, so an aiohttp upgrade that renames them
fails here instead of silently giving the memory back.
"""

from __future__ import annotations

import uuid

from .conftest import Messaging


def uid() -> str:
    return uuid.uuid4().hex[:12]


async def test_idle_sockets_hold_no_queue_task_set_or_headers_and_share_writer_state(
    messaging: Messaging,
) -> None:
    a, b = uid(), uid()
    client_a = await messaging.connect(a)
    client_b = await messaging.connect(b)
    hub = messaging.hub(0)
    ((conn_a,), (conn_b,)) = hub.local(a), hub.local(b)
    for conn in (conn_a, conn_b):
        assert conn.queue is None and conn._pending is None and conn._writer is None
        assert not conn.ws.headers
        assert len(hub.local(conn.user_id)) == 1
    writer_a, writer_b = conn_a.ws._writer, conn_b.ws._writer
    assert writer_a is not writer_b
    assert writer_a.get_random_bits is writer_b.get_random_bits
    assert writer_a._background_tasks is writer_b._background_tasks
    # And the sockets still work both ways.
    for client in (client_a, client_b):
        await client.send({"op": "ping", "id": "p"})
        await client.expect("pong", id="p")
