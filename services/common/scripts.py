"""Lua scripts in Redis pipelines: one round trip, not two.

redis-py asks ``SCRIPT EXISTS`` before every pipeline that calls a script, then
runs the pipeline: a second round trip for each of the hot path's pipelines
(1.6 per delivered message at 300 msgs/s, docs/BENCHMARKS.md). Here a
pipeline calls a script by its SHA alone (:func:`queue`). The script is known
to the server because it is loaded:

- the first time this process queues it (one ``SCRIPT LOAD``), and
- on every new connection, for every script registered so far
  (:func:`on_connect`, the client's ``redis_connect_func``): a Redis that
  restarted lost its script cache, and every connection to it is a new one,
  loaded before its first command.

Only ``SCRIPT FLUSH`` on a live server would leave a pipeline to fail with
``NOSCRIPT``; the caller sees a Redis error, as for any other.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

_TEXTS: dict[str, bytes | str] = {}  # sha -> text of every script queued in this process


def define(text: str) -> str:
    """Remember a script (for :func:`on_connect` and FastRedis's connection), by its
    text alone; returns its SHA (what Redis names it by)."""
    sha = hashlib.sha1(text.encode()).hexdigest()  # noqa: S324  # Redis names scripts so
    _TEXTS.setdefault(sha, text)
    return sha


def register(redis: aioredis.Redis, text: str) -> AsyncScript:
    """``redis.register_script``, remembered (:func:`define`)."""
    define(text)
    return redis.register_script(text)


async def queue(
    pipe: aioredis.client.Pipeline, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]
) -> None:
    """Add a call of ``script`` to ``pipe`` by SHA (loading it once per process)."""
    await queue_sha(pipe, script.registered_client, script.sha, keys, args)  # type: ignore[arg-type]


async def queue_sha(
    pipe: aioredis.client.Pipeline,
    redis: aioredis.Redis,
    sha: str,
    keys: Sequence[Any],
    args: Sequence[Any],
) -> None:
    """:func:`queue` for a script from :func:`define`, with the client to load it by."""
    await _load_once(redis, sha)
    pipe.evalsha(sha, len(keys), *keys, *args)


async def call(redis: aioredis.Redis, sha: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
    """One call of a script from :func:`define`, outside any pipeline."""
    await _load_once(redis, sha)
    return await redis.evalsha(sha, len(keys), *keys, *args)


_LOADED: set[str] = set()


async def _load_once(redis: aioredis.Redis, sha: str) -> None:
    """``SCRIPT LOAD`` the first time this process uses a script (new connections
    load every one they know: :func:`on_connect`)."""
    if sha not in _LOADED:
        await redis.script_load(_TEXTS[sha])
        _LOADED.add(sha)


def texts() -> list[bytes | str]:
    """Every script registered in this process (what a new connection loads)."""
    return list(_TEXTS.values())


async def on_connect(conn: Any) -> None:
    """A new connection: the usual handshake, then every registered script loaded."""
    await conn.on_connect()
    for body in list(_TEXTS.values()):
        await conn.send_command("SCRIPT", "LOAD", body)
        await conn.read_response()


def text(value: object) -> str:
    """A Redis reply (bytes, or str from a client that decodes) as str."""
    return value.decode() if isinstance(value, bytes) else str(value)
