"""Structured JSON logs with a request id carried across HTTP calls and Kafka.

The request id lives in a context variable: the HTTP middleware sets it from
``X-Request-ID`` (or makes one), Kafka consumers set it from the record's
``request_id`` header, and outgoing calls copy it with :func:`outgoing_headers`
and :func:`kafka_headers`.

The caller's user id lives in another (:data:`user_id_var`): the route
decorator sets it once the token is verified, the gateway once a socket is
authenticated, and every line logged meanwhile carries ``user_id``. Lines
about one message add ``message_id`` (the server id) themselves. What never
goes into a log line: a token, a password, a code, a message body, a header
(aiohttp's own lines about a request it cannot parse quote its bytes:
:class:`BadRequestFilter` keeps only the error's type).
"""

from __future__ import annotations

import contextvars
import logging
import random
import sys
import time
from collections.abc import Iterable
from typing import Any

import orjson
from aiohttp.http_exceptions import BadHttpMessage

REQUEST_ID_HEADER = "X-Request-ID"
KAFKA_REQUEST_ID = "request_id"

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "parley_request_id", default=None
)

user_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "parley_user_id", default=None
)

_STD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


def new_request_id() -> str:
    """16 hex digits that correlate log lines; not a secret. Made for every frame a
    gateway reads, so from the process's PRNG, not the system's (a syscall each)."""
    return f"{random.getrandbits(64):016x}"


def valid_request_id(value: str | None) -> str | None:
    """Accept a caller's request id only if it is short and printable."""
    if value and len(value) <= 64 and value.isascii() and value.isprintable():
        return value
    return None


def outgoing_headers() -> dict[str, str]:
    rid = request_id_var.get()
    return {REQUEST_ID_HEADER: rid} if rid else {}


def kafka_headers(extra: Iterable[tuple[str, bytes]] = ()) -> list[tuple[str, bytes]]:
    rid = request_id_var.get()
    headers = [(KAFKA_REQUEST_ID, rid.encode())] if rid else []
    headers.extend(extra)
    return headers


def request_id_from_kafka(headers: Iterable[tuple[str, bytes]] | None) -> str | None:
    for key, value in headers or ():
        if key == KAFKA_REQUEST_ID:
            return valid_request_id(value.decode("ascii", "replace"))
    return None


class BadRequestFilter(logging.Filter):
    """aiohttp.server's lines about a malformed request: one INFO line with the error's type.

    aiohttp logs a request it cannot parse (a control character in a header, a header
    line over 8190 bytes, a bad request line) at ERROR with a traceback whose message
    quotes the offending bytes: an ``Authorization`` bearer token, a cookie. The client
    gets its 400 either way; the log gets ``bad HTTP request`` and the error's type,
    never the message (nor the traceback that repeats it). Anything else aiohttp.server
    logs (a handler's unhandled exception) passes unchanged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, BadHttpMessage):
            return True
        level = min(record.levelno, logging.INFO)
        record.msg, record.args = "bad HTTP request: %s", (type(exc).__name__,)
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        record.levelno, record.levelname = level, logging.getLevelName(level)
        record.status = exc.code
        # The logger's own level was checked at ERROR: check it again at the new level.
        return logging.getLogger(record.name).isEnabledFor(level)


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id_var.get()
        if rid:
            entry["request_id"] = rid
        uid = user_id_var.get()
        if uid:
            entry["user_id"] = uid
        for key, value in record.__dict__.items():
            if key not in _STD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        rid = request_id_var.get()
        base = f"{record.levelname[0]} {record.name}: {record.getMessage()}"
        if rid:
            base += f" [rid={rid}]"
        if record.exc_info:
            base += "\n" + self.formatException(record.exc_info)
        return base


def setup_logging(service: str, level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service) if fmt == "json" else ConsoleFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Chatty third-party loggers stay at WARNING unless we debug.
    for name in ("aiokafka", "aiohttp.access", "pymongo"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    # A malformed request is the client's fault and its bytes may hold a token: see
    # BadRequestFilter. Once per logger, however often this is called.
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, BadRequestFilter) for f in server.filters):
        server.addFilter(BadRequestFilter())
