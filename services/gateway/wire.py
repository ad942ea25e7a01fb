"""WebSocket text frames written back to back: several frames, one write; and a ping.

aiohttp writes every frame with its own ``transport.write`` (a system call
each). When several frames wait for one socket (a routed batch, a sync page),
the gateway writes them in one go (services/gateway/connection.py). The
frames are what RFC 6455 (section 5.2) asks of a server: final, unmasked,
uncompressed (sockets are opened without permessage-deflate; and a frame
without RSV1 is uncompressed even where it is negotiated), and the client
reads them as separate messages, exactly as if written one by one.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

_TEXT = 0x81  # FIN + opcode 1 (text)

PING = bytes((0x89, 0))
"""A ping without payload (FIN + opcode 9): the pod's heartbeat (heartbeat.py)."""
_LEN16 = struct.Struct("!BBH")
_LEN64 = struct.Struct("!BBQ")


def text_frames(payloads: Iterable[bytes]) -> bytes:
    """The frames carrying ``payloads`` (UTF-8 JSON), in order, as one buffer."""
    out = bytearray()
    for payload in payloads:
        n = len(payload)
        if n < 126:
            out += bytes((_TEXT, n))
        elif n < 65536:
            out += _LEN16.pack(_TEXT, 126, n)
        else:
            out += _LEN64.pack(_TEXT, 127, n)
        out += payload
    return bytes(out)
