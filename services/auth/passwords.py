"""Password policy and hashing (argon2id).

Hashing runs in worker threads (argon2-cffi releases the GIL) behind a
semaphore, so that a burst of logins neither blocks the event loop nor holds
more than ``argon2_max_concurrency`` x ``argon2_memory_kib`` of memory.
Passwords are NFKC-normalised before hashing and checking, so that the same
password typed on two keyboards that compose characters differently matches.

An unknown username is checked against a dummy hash with the configured
parameters, so that it costs what a wrong password costs. A stored hash made
with other parameters (before ``PARLEY_ARGON2_*`` changed, not yet upgraded by a
login) is checked together with the dummy hash, in parallel, and answered
once both are done: no sooner than an unknown username. (One made with
costlier parameters than the configured ones still takes its own, longer
time: lowering the cost shows which accounts are not upgraded yet until they
are; raising it does not.)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import unicodedata
from collections.abc import AsyncIterator

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from services.auth.config import AuthSettings
from services.auth.data import common_passwords
from services.common.errors import ApiError, ErrorCode


@functools.cache
def blocklist() -> frozenset[str]:
    words = frozenset(w.strip() for w in common_passwords.PASSWORDS.splitlines() if w.strip())
    if len(words) != common_passwords.COUNT:
        raise RuntimeError("the password blocklist is damaged; regenerate it")
    return words


def normalize(password: str) -> str:
    return unicodedata.normalize("NFKC", password)


def check_policy(
    password: str, settings: AuthSettings, *, username: str = "", email: str = ""
) -> None:
    """Raise WEAK_PASSWORD (with the reason) unless the password is acceptable."""
    pw = normalize(password)
    lowered = pw.casefold()
    if len(pw) < settings.password_min_length:
        reason = f"Use at least {settings.password_min_length} characters."
    elif len(pw) > settings.password_max_length:
        reason = f"Use at most {settings.password_max_length} characters."
    elif lowered in blocklist() or pw.lower() in blocklist():
        reason = "This password is too common; choose another."
    elif len(set(pw)) < 3:
        reason = "This password repeats too few characters."
    elif username and username.casefold() in lowered:
        reason = "The password must not contain the username."
    elif email and email.casefold() == lowered:
        reason = "The password must not be the e-mail address."
    else:
        return
    raise ApiError(ErrorCode.WEAK_PASSWORD, reason)


class Passwords:
    """argon2id hashing with the configured cost, off the event loop."""

    def __init__(self, settings: AuthSettings) -> None:
        self.hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
            hash_len=32,
            salt_len=16,
            type=Type.ID,
        )
        self._slots = asyncio.Semaphore(settings.argon2_max_concurrency)
        # Two slots for a check of two hashes at once (one taker at a time, so that
        # takers each holding one slot never wait for each other's second).
        self._pair_slots = min(2, settings.argon2_max_concurrency)
        self._pairing = asyncio.Lock()
        # Verified against for unknown usernames, so that a login for an account
        # that does not exist costs the same time as a wrong password.
        self._dummy = self.hasher.hash("parley-dummy-password-for-timing")

    async def hash(self, password: str) -> str:
        async with self._slots:
            return await asyncio.to_thread(self.hasher.hash, normalize(password))

    async def verify(self, stored: str | None, password: str) -> bool:
        """True if the password matches; always spends one argon2 computation with the
        configured parameters (the dummy hash's, for an unknown user or a stored hash
        made with other parameters), and answers no sooner than it."""
        password = normalize(password)
        if stored is None:
            async with self._slots:
                await asyncio.to_thread(self._check, self._dummy, password)
            return False
        if not self.needs_rehash(stored):
            async with self._slots:
                return await asyncio.to_thread(self._check, stored, password)
        async with self._slots_for_two():
            if self._pair_slots < 2:  # one slot: one argon2 at a time, its memory cap kept
                ok = await asyncio.to_thread(self._check, stored, password)
                await asyncio.to_thread(self._check, self._dummy, password)
                return ok
            ok, _ = await asyncio.gather(
                asyncio.to_thread(self._check, stored, password),
                asyncio.to_thread(self._check, self._dummy, password),
            )
        return ok

    @contextlib.asynccontextmanager
    async def _slots_for_two(self) -> AsyncIterator[None]:
        taken = 0
        try:
            async with self._pairing:
                while taken < self._pair_slots:
                    await self._slots.acquire()
                    taken += 1
            yield
        finally:
            for _ in range(taken):
                self._slots.release()

    def _check(self, stored: str, password: str) -> bool:
        try:
            return self.hasher.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored: str) -> bool:
        try:
            return self.hasher.check_needs_rehash(stored)
        except InvalidHashError:
            return True
