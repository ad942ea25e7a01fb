"""Which failures of a batch are a server's, not a record's (services/delivery/worker.py).

A batch that fails while a server it needs is unavailable waits and is tried
again without limit: nothing of it is lost, and no record is to blame. Only a
failure a record can cause counts toward ``delivery_max_attempts`` and may end
in the dead-letter topic. Deciding that by a ``PING`` alone was wrong both ways:
a Redis that answers ``PING`` may still refuse every write (a demoted primary
after a failover answers ``READONLY``; under ``maxmemory`` with ``noeviction``,
``OOM``), and good records were dead-lettered as failed; and a MongoDB that does
not answer said nothing about a batch that failed without using it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from aiokafka.errors import KafkaError, KafkaTimeoutError
from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError
from redis import exceptions as rx

from services.delivery.counters import CountersUnseeded

_REDIS_REFUSALS = (
    rx.ConnectionError,  # BusyLoadingError (LOADING) is one
    rx.TimeoutError,
    rx.ReadOnlyError,  # READONLY: a replica, or a primary demoted by a failover
    rx.OutOfMemoryError,  # OOM: maxmemory reached under noeviction
    rx.MasterDownError,  # MASTERDOWN: a replica whose link to its primary is down
    rx.ClusterDownError,
    rx.TryAgainError,
)
# Error replies redis-py has no class for: a script running too long (BUSY), a failed
# RDB save that stops writes (MISCONF), min-replicas not met (NOREPLICAS). The reply
# starts the message, or follows a pipeline's "caused error: " and its command.
_REDIS_REFUSAL_TEXT = re.compile(r"(?:^|caused error: \(?['\"]?)(?:BUSY|MISCONF|NOREPLICAS) ")

# The server's codes for "not now": shutting down, stepping down, not primary, network,
# time limits (pymongo's own retryable codes, and the time limits).
_MONGO_UNAVAILABLE_CODES = frozenset(
    {6, 7, 50, 89, 91, 134, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436}
)


def unavailable(exc: BaseException) -> str | None:
    """The server ``exc`` says is unavailable now (``redis``, ``mongo``, ``kafka``,
    ``counters``: a counter another seeder holds, ``network``), or None: the failure
    may be the records' (the exception, or one it was raised from)."""
    return next((name for cur in _causes(exc) if (name := _one(cur)) is not None), None)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from (``__cause__``), each once."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__


def _one(exc: BaseException) -> str | None:
    if isinstance(exc, _REDIS_REFUSALS):
        return "redis"
    if isinstance(exc, rx.ResponseError) and _REDIS_REFUSAL_TEXT.search(str(exc)):
        return "redis"
    if isinstance(exc, ConnectionFailure):  # AutoReconnect, NotPrimaryError, selection timeout
        return "mongo"
    if isinstance(exc, PyMongoError) and (
        exc.timeout
        or exc.has_error_label("RetryableWriteError")
        or exc.has_error_label("TransientTransactionError")
        or (isinstance(exc, OperationFailure) and exc.code in _MONGO_UNAVAILABLE_CODES)
    ):
        return "mongo"
    if isinstance(exc, KafkaTimeoutError) or (isinstance(exc, KafkaError) and exc.retriable):
        return "kafka"
    if isinstance(exc, CountersUnseeded):
        return "counters"
    if isinstance(exc, (ConnectionError, TimeoutError)):  # the builtins (wait_for's)
        return "network"
    return None


def from_mongo(exc: BaseException) -> bool:
    """Whether ``exc`` (or one it was raised from) is MongoDB's."""
    return any(isinstance(cur, PyMongoError) for cur in _causes(exc))
