"""The broker process: listening, framing, dispatch, and its background work.

Each connection is served in order, one request at a time, as Kafka does: a
client matches responses to requests by their order on the connection. A
request the broker cannot read (garbage, an unknown API key or version, a
frame larger than ``--max-request-bytes``) closes that connection only; a
handler that fails closes that connection and is logged; the broker keeps
serving everyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import io
import json
import logging
import os
import struct
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from embedded.kafka import protocol
from embedded.kafka.config import BrokerConfig
from embedded.kafka.files import Syncer, atomic_write
from embedded.kafka.groups import GroupCoordinator
from embedded.kafka.offsets import OffsetStore
from embedded.kafka.protocol import ProtocolError
from embedded.kafka.topics import TopicStore

log = logging.getLogger(__name__)

_SIZE = struct.Struct(">i")
_WRITE_HIGH_WATER = 4 * 1024 * 1024


@dataclass(slots=True)
class Request:
    api_key: int
    version: int
    client_id: str | None
    client_host: str
    body: Any
    response_class: type[Any]


Handler = Callable[["Broker", Request], Awaitable[bytes | None]]


class Broker:
    """One Kafka node: every topic's partitions, the group coordinator, the listener."""

    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self.syncer = Syncer(config.fsync_interval_ms)
        self.topics = TopicStore(config, self.syncer)
        self.offsets = OffsetStore(config.data_dir, self.syncer)
        self.groups = GroupCoordinator(config)
        self.cluster_id = ""
        self.port = config.port
        self._server: asyncio.Server | None = None
        self._lock_fd: int | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._retention: asyncio.Task[None] | None = None
        self._handlers: dict[int, Handler] = {}

    # Lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        from embedded.kafka.handlers import HANDLERS

        self._handlers = HANDLERS
        self._open_data_dir()
        self.topics.load()
        self.offsets.load()
        self.syncer.start()
        self._server = await asyncio.start_server(
            self._serve, self.config.host, self.config.port, limit=2**20
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._retention = asyncio.create_task(self._retention_loop())

    def _open_data_dir(self) -> None:
        d = self.config.data_dir
        d.mkdir(parents=True, exist_ok=True)
        fd = os.open(d / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SystemExit(f"{d} is in use by another broker") from None
        self._lock_fd = fd
        meta = d / "broker.json"
        if meta.exists():
            self.cluster_id = json.loads(meta.read_text())["cluster_id"]
        else:
            self.cluster_id = uuid.uuid4().hex[:22]
            atomic_write(meta, json.dumps({"cluster_id": self.cluster_id, "format": 1}).encode())

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._retention is not None:
            self._retention.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._retention is not None:
            await asyncio.gather(self._retention, return_exceptions=True)
        self.groups.close()
        await self.syncer.stop()
        self.topics.close()
        self.offsets.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def _retention_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.retention_check_ms / 1000)
            try:
                removed = self.topics.apply_retention()
            except OSError as exc:
                log.error("retention failed: %r", exc)
                continue
            if removed:
                log.debug("retention removed %d segments", removed)

    # Connections ---------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        peer = writer.get_extra_info("peername")
        host = str(peer[0]) if peer else ""
        try:
            while True:
                head = await reader.readexactly(4)
                (size,) = _SIZE.unpack(head)
                if not 0 < size <= self.config.max_request_bytes:
                    raise ProtocolError(f"frame length {size}")
                frame = await reader.readexactly(size)
                response = await self._dispatch(frame, host)
                if response is not None:
                    writer.write(response)
                    if writer.transport.get_write_buffer_size() > _WRITE_HIGH_WATER:
                        await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except ProtocolError as exc:
            log.warning("closing connection from %s: %s", host, exc)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("closing connection from %s after an internal error", host)
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _dispatch(self, frame: bytes, host: str) -> bytes | None:
        api_key, version, correlation_id, client_id, body_at = protocol.parse_header(frame)
        versions = protocol.VERSIONS.get(api_key)
        if versions is None:
            raise ProtocolError(f"unknown api key {api_key}")
        if version not in versions:
            if api_key == protocol.API_VERSIONS:
                # Kafka's rule: answer in v0 with UNSUPPORTED_VERSION and the ranges.
                return protocol.frame_response(correlation_id, _api_versions_v0_error())
            raise ProtocolError(f"api key {api_key} version {version} is not supported")
        request_class, response_class = versions[version]
        try:
            stream = io.BytesIO(frame)
            stream.seek(body_at)
            body = request_class.decode(stream)
        except Exception as exc:  # any garbage: struct, unicode, length errors
            raise ProtocolError(f"undecodable request (api {api_key} v{version}): {exc}") from None
        request = Request(api_key, version, client_id, host, body, response_class)
        payload = await self._handlers[api_key](self, request)
        if payload is None:
            return None
        return protocol.frame_response(correlation_id, payload)


def _api_versions_v0_error() -> bytes:
    from aiokafka.protocol.admin import ApiVersionResponse_v0

    return protocol.encode(
        ApiVersionResponse_v0,
        {"error_code": protocol.UNSUPPORTED_VERSION, "api_versions": _api_version_entries()},
    )


def _api_version_entries() -> list[dict[str, int]]:
    return [
        {"api_key": k, "min_version": lo, "max_version": hi} for k, lo, hi in protocol.API_RANGES
    ]


async def serve_forever(config: BrokerConfig) -> None:
    """Run until SIGTERM/SIGINT; stop cleanly (final fsync, files closed)."""
    import signal

    broker = Broker(config)
    await broker.start()
    logging.getLogger("embedded.kafka.start").info(
        "embedded kafka listening on %s:%d, data in %s (fsync every %s)",
        config.host,
        broker.port,
        config.data_dir.resolve(),
        f"{config.fsync_interval_ms} ms" if config.fsync_interval_ms else "write",
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await broker.stop()
