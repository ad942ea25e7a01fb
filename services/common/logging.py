"""Structured JSON logs with a request id carried across HTTP calls and Kafka.

The request id lives in a context variable: the HTTP middleware sets it from
``X-Request-ID`` (or makes one), Kafka consumers set it from the record's
``request_id`` header, and outgoing calls copy it with :func:`outgoing_headers`
and :func:`kafka_headers`.

The caller's user id lives in another (:data:`user_id_var`): the route
decorator sets it once the token is verified, the gateway once a socket is
authenticated, and every line logged meanwhile carries ``user_id``. Lines
about one message add ``message_id`` (the server id) themselves. What never
goes into a log line: a token, a password, a code, a message body.
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
