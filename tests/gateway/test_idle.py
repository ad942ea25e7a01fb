"""What an idle socket keeps on its pod (issue #13; docs/BENCHMARKS.md, "Idle connections").

The gateway sheds per-socket objects that an idle socket does not use.
"""

from __future__ import annotations

from tests.support.users import uid

from .conftest import Messaging


async def test_idle_sockets_hold_no_queue_task_set_or_headers(
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
    # And the sockets still work both ways.
    for client in (client_a, client_b):
        await client.send({"op": "ping", "id": "p"})
        await client.expect("pong", id="p")
