"""The broker: its state (topics, offsets, groups), its lifecycle, and request dispatch.

``Broker.start`` opens the data directory (one broker per directory: a lock
file), recovers every topic and the offsets journal, then listens; each
connection is a ``connection.Connection``, which hands every frame to
``Broker.dispatch``. Background work: the fsync schedule (files.py) and the
retention pass every ``--retention-check-ms``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import io
import json
import logging
import os
import ssl
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from embedded.kafka import codec, protocol
from embedded.kafka.config import BrokerConfig
from embedded.kafka.connection import Connection, Dispatch
from embedded.kafka.files import Syncer, atomic_write
from embedded.kafka.groups import GroupCoordinator
from embedded.kafka.offsets import OffsetStore
from embedded.kafka.protocol import ProtocolError
from embedded.kafka.sasl import Credentials, SaslGate, read_users
from embedded.kafka.topics import TopicStore

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Request:
    api_key: int
    version: int
    client_id: str | None
    client_host: str
    body: Any
    response_class: type[Any]


# A handler answers at once (the encoded response, or None for no answer) or,
# when it must wait, returns an awaitable of that.
Handler = Callable[["Broker", Request], "bytes | Awaitable[bytes | None] | None"]


class Broker:
    """One Kafka node: every topic's partitions, the group coordinator, the listener."""

    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self.syncer = Syncer(config.fsync_interval_ms)
        self.topics = TopicStore(config, self.syncer)
        self.offsets = OffsetStore(config.data_dir, self.syncer)
        self.groups = GroupCoordinator(config, lambda g: bool(self.offsets.of_group(g)))
        self.cluster_id = ""
        self.port = config.port
        self._server: asyncio.Server | None = None
        self._lock_fd: int | None = None
        self.connections: set[Connection] = set()
        self._retention: asyncio.Task[None] | None = None
        self._handlers: dict[int, Handler] = {}
        self.credentials: Credentials | None = None

    # Lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        from embedded.kafka.handlers import HANDLERS

        self._handlers = HANDLERS
        self._open_data_dir()
        self.topics.load()
        self.offsets.load(
            {(t.name, p): plog.next_offset for t in self.topics for p, plog in enumerate(t.logs)}
        )
        self.syncer.start()
        if self.config.sasl_users_file is not None:
            self.credentials = Credentials(read_users(self.config.sasl_users_file))
        tls = None
        if self.config.tls_cert is not None and self.config.tls_key is not None:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(self.config.tls_cert, self.config.tls_key)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: Connection(
                self._dispatch(),
                self.config.max_request_bytes,
                self.config.max_other_request_bytes,
                self.connections,
            ),
            self.config.host,
            self.config.port,
            ssl=tls,
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
        for conn in list(self.connections):
            conn.abort()
        await asyncio.sleep(0)  # let the cancelled requests unwind
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

    # Requests ---------------------------------------------------------------------
    def _dispatch(self) -> Dispatch:
        """A new connection's dispatch: authentication first when SASL is on."""
        if self.credentials is None:
            return self.dispatch
        return SaslGate(self.dispatch, self.credentials)

    def dispatch(self, frame: bytes, host: str) -> bytes | Awaitable[bytes | None] | None:
        """Decode one request and answer it: the framed answer, None (no answer), or,
        for a request that must wait, an awaitable of either."""
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
        max_entries = self.config.max_request_entries
        try:
            if api_key == protocol.PRODUCE:
                # The records stay in the frame; the item count is checked as it is read.
                body: Any = codec.decode_produce(frame, body_at, max_entries)
            else:
                stream = io.BytesIO(frame)
                stream.seek(body_at)
                body = request_class.decode(stream)
        except ProtocolError:
            raise
        except Exception as exc:  # any garbage: struct, unicode, length errors
            raise ProtocolError(f"undecodable request (api {api_key} v{version}): {exc}") from None
        if api_key != protocol.PRODUCE and protocol.count_entries(body, max_entries) > max_entries:
            # Answered in one go on the loop: the work a request may ask is bounded.
            raise ProtocolError(
                f"more than {max_entries} array items in a request (api {api_key} v{version})"
            )
        request = Request(api_key, version, client_id, host, body, response_class)
        payload = self._handlers[api_key](self, request)
        if payload is None:
            return None
        if isinstance(payload, bytes):
            return protocol.frame_response(correlation_id, payload)
        return _framed(correlation_id, payload)


async def _framed(correlation_id: int, payload: Awaitable[bytes | None]) -> bytes | None:
    answer = await payload
    return None if answer is None else protocol.frame_response(correlation_id, answer)


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
