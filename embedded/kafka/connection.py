"""One client connection: framing, in-order answers, back-pressure.

Kafka serves a connection one request at a time and answers in order (a
client matches answers to requests by their order). Most requests are
answered at once, synchronously, from ``data_received``: no task, no future,
no stream buffer in between (the cost of a request is most of the cost of a
message here). A request that must wait (a Fetch long poll, a JoinGroup, an
fsync) gets a task; frames that arrive meanwhile stay in the buffer until it
is answered. Likewise while the transport's write buffer is above its high
mark (``pause_writing``: the client does not read its answers), nothing is
read or answered until it drains (``resume_writing``): a client that sends
requests and never reads cannot make the broker buffer answers without end.

Bad input closes this connection only: a frame length out of bounds, a
request that cannot be read (``ProtocolError``), or a handler that fails
(logged with its traceback). A request is decoded and answered in one go on
the event loop, so only Produce may be as long as ``max_request`` (100 MiB);
a frame of any other API longer than ``max_other_request`` (1 MiB) closes the
connection as soon as its length and API key are in, before the rest arrives.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import struct
from collections.abc import Awaitable, Callable
from typing import cast

from embedded.kafka.protocol import PRODUCE, ProtocolError

log = logging.getLogger(__name__)

_SIZE = struct.Struct(">i")
_SIZE_API_KEY = struct.Struct(">ih")

Dispatch = Callable[[bytes, str], "bytes | Awaitable[bytes | None] | None"]


class Connection(asyncio.Protocol):
    def __init__(self, dispatch: Dispatch, max_request: int, max_other_request: int,
                 connections: set[Connection]) -> None:  # fmt: skip
        self.dispatch = dispatch
        self.max_request = max_request  # Produce
        self.max_other_request = max_other_request  # any other API
        self.connections = connections
        self.transport: asyncio.Transport | None = None
        self.host = ""
        self.buf = bytearray()
        self.waiting: asyncio.Task[None] | None = None  # the request being answered later
        self.paused = False  # we stopped reading: the client is not reading our answers
        self.closed = False
        self.processing = False  # in _process (resume_writing may come from inside a write)

    # asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peer = self.transport.get_extra_info("peername")
        self.host = str(peer[0]) if peer else ""
        self.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.connections.discard(self)
        if self.waiting is not None:
            self.waiting.cancel()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiting is None:
            self._process()
        elif len(self.buf) > self.max_request + 4 and self.transport is not None:
            self.transport.pause_reading()  # enough queued until the answer goes out

    def pause_writing(self) -> None:
        self.paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()
            if self.waiting is None and not self.processing:
                self._process()  # the frames that waited for the client to read

    # Requests --------------------------------------------------------------------------
    def _process(self) -> None:
        buf = self.buf
        pos = 0
        self.processing = True
        try:
            while (
                self.waiting is None and not self.closed and not self.paused and len(buf) - pos >= 4
            ):
                (size,) = _SIZE.unpack_from(buf, pos)
                if not 0 < size <= self.max_request:
                    raise ProtocolError(f"frame length {size}")
                if size > self.max_other_request:
                    if len(buf) - pos < _SIZE_API_KEY.size:
                        break  # its API key is not in yet
                    _, api_key = _SIZE_API_KEY.unpack_from(buf, pos)
                    if api_key != PRODUCE:
                        raise ProtocolError(
                            f"frame length {size} (api key {api_key}): only Produce may "
                            f"be longer than {self.max_other_request}"
                        )
                end = pos + 4 + size
                if len(buf) < end:
                    break
                frame = bytes(buf[pos + 4 : end])
                pos = end
                result = self.dispatch(frame, self.host)
                if type(result) is bytes:
                    self._write(result)
                elif result is not None:
                    assert inspect.isawaitable(result)
                    self.waiting = asyncio.ensure_future(self._answer_later(result))
        except ProtocolError as exc:
            log.warning("closing connection from %s: %s", self.host, exc)
            self._close()
        except Exception:
            log.exception("closing connection from %s after an internal error", self.host)
            self._close()
        finally:
            self.processing = False
            if pos:
                del buf[:pos]

    async def _answer_later(self, result: Awaitable[bytes | None]) -> None:
        try:
            answer = await result
        except asyncio.CancelledError:
            return
        except OSError as exc:  # an acks=0 produce whose fsync failed: no answer to carry it
            log.error("closing connection from %s: %r", self.host, exc)
            self._close()
            return
        except Exception:
            log.exception("closing connection from %s after an internal error", self.host)
            self._close()
            return
        finally:
            self.waiting = None
        if answer is not None:
            self._write(answer)
        if not self.closed:
            if self.transport is not None and not self.paused:
                self.transport.resume_reading()
            self._process()

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def _close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Broker shutdown: drop the connection and whatever it waits for."""
        if self.waiting is not None:
            self.waiting.cancel()
        self._close()
