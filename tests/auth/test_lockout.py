"""Login and second-factor lockouts (issue #20): counted before the check, atomically,
and keyed so that a stranger cannot lock the owner out.

- Every guess reserves its place in the window *before* argon2 (or the code
  check) runs, so a burst of parallel guesses gets exactly the limit tried.
- Password failures count per (account, client address); past an account-wide
  number of failures, addresses the account has not signed in from recently
  are refused too, while the owner's own addresses still get in.
- Wrong second-factor codes count the same way (by the account's id): someone
  with the password but not the second factor cannot lock the owner out of it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pyotp
import pytest

from services.auth.config import AuthSettings
from tests.auth.conftest import ROOMY
from tests.auth.helpers import PASSWORD, AuthApi, unique_name

PAIR = 10  # failures per (account, address)
ACCOUNT = 15  # failures per account, then unknown addresses are refused
CODES = 4  # wrong second-factor codes per (account, address)
CODE_ACCOUNT = 6  # per account, then unknown addresses are refused


@pytest.fixture
def auth_config() -> AuthSettings:
    return AuthSettings.for_tests(
        **ROOMY,
        limit_login_failures=f"{PAIR}/900",
        limit_login_account_failures=f"{ACCOUNT}/900",
        limit_code_failures=f"{CODES}/900",
        limit_code_account_failures=f"{CODE_ACCOUNT}/900",
        challenge_max_attempts=5,
        # A hash that takes a little while, so that the guesses overlap.
        argon2_memory_kib=4096,
    )


def ip(addr: str) -> dict[str, str]:
    return {"X-Forwarded-For": addr}


async def login_status(auth: AuthApi, name: str, password: str, addr: str) -> tuple[int, str]:
    status, body = await auth.call(
        "POST", "/auth/v1/login", {"username": name, "password": password}, headers=ip(addr)
    )
    return status, "ok" if status == 200 else body["error"]["code"]


async def test_parallel_guesses_are_counted_before_the_password_is_checked(
    auth: AuthApi,
) -> None:
    user = await auth.signup()
    name = user["user"]["username"]
    guesses = [
        login_status(auth, name, f"wrong guess {n}", "198.51.100.7") for n in range(3 * PAIR)
    ]
    got = Counter(await asyncio.gather(*guesses))
    # Exactly the limit was tried against the hash; every other guess was refused unseen.
    assert got == {(401, "invalid_credentials"): PAIR, (429, "account_locked"): 2 * PAIR}
    # The right password from that address is refused as well, until the window ends.
    assert await login_status(auth, name, PASSWORD, "198.51.100.7") == (429, "account_locked")


async def test_a_right_password_in_a_burst_does_not_get_past_a_full_window(
    auth: AuthApi,
) -> None:
    user = await auth.signup()
    name = user["user"]["username"]
    addr = "198.51.100.8"
    # The window is full of failures: the right password, sent together with
    # more guesses, is refused like them.
    for n in range(PAIR):
        assert await login_status(auth, name, f"guess {n}", addr) == (401, "invalid_credentials")
    burst = [login_status(auth, name, f"more {n}", addr) for n in range(10)]
    burst.insert(5, login_status(auth, name, PASSWORD, addr))
    assert set(await asyncio.gather(*burst)) == {(429, "account_locked")}


async def test_a_stranger_cannot_lock_the_owner_out(auth: AuthApi) -> None:
    user = await auth.signup()  # signs up, hence has signed in, from 127.0.0.1
    name = user["user"]["username"]
    home = "203.0.113.10"
    await auth.login(name)  # the owner's usual address...
    await auth.call(
        "POST", "/auth/v1/login", {"username": name, "password": PASSWORD},
        headers=ip(home), status=200,
    )  # fmt: skip
    # A stranger guesses from one address until that address is locked out.
    for n in range(PAIR):
        assert await login_status(auth, name, f"guess {n}", "192.0.2.66") == (
            401,
            "invalid_credentials",
        )
    assert await login_status(auth, name, PASSWORD, "192.0.2.66") == (429, "account_locked")
    # The owner, from another address, still signs in: the failures were the stranger's.
    assert await login_status(auth, name, PASSWORD, "198.51.100.20") == (200, "ok")
    # Guesses from many addresses add up to the account-wide limit...
    for n in range(ACCOUNT - PAIR):
        assert await login_status(auth, name, "nope nope", f"192.0.2.{100 + n}") == (
            401,
            "invalid_credentials",
        )
    # ...then an address the account has not signed in from is refused, even
    # with the right password, while the owner's addresses still get in.
    assert await login_status(auth, name, PASSWORD, "192.0.2.200") == (429, "account_locked")
    assert await login_status(auth, name, "a new guess", "192.0.2.201") == (429, "account_locked")
    assert await login_status(auth, name, PASSWORD, home) == (200, "ok")
    assert await login_status(auth, name, PASSWORD, "198.51.100.20") == (200, "ok")
    # Another account is not affected at all.
    other = await auth.signup()
    assert await login_status(auth, other["user"]["username"], PASSWORD, "192.0.2.200") == (
        200,
        "ok",
    )


async def test_unknown_and_real_accounts_lock_the_same_way(auth: AuthApi) -> None:
    user = await auth.signup()
    name, ghost = user["user"]["username"], unique_name()
    for n in range(PAIR):
        real = await auth.call(
            "POST", "/auth/v1/login", {"username": name, "password": f"g{n}"}, headers=ip("192.0.2.9")
        )  # fmt: skip
        fake = await auth.call(
            "POST", "/auth/v1/login", {"username": ghost, "password": f"g{n}"}, headers=ip("192.0.2.9")
        )  # fmt: skip
        assert real[0] == fake[0] == 401
    for who in (name, ghost):
        assert await login_status(auth, who, PASSWORD, "192.0.2.9") == (429, "account_locked")


async def test_ipv6_addresses_count_by_their_64_bit_network(auth: AuthApi) -> None:
    """A client rotating addresses inside its /64 is still one address."""
    user = await auth.signup()
    name = user["user"]["username"]
    for n in range(PAIR):
        assert await login_status(auth, name, f"g{n}", f"2001:db8:1:2::{n + 1:x}") == (
            401,
            "invalid_credentials",
        )
    assert await login_status(auth, name, PASSWORD, "2001:db8:1:2::ffff") == (429, "account_locked")
    assert await login_status(auth, name, PASSWORD, "2001:db8:1:3::1") == (200, "ok")


async def enrol_totp(auth: AuthApi, user: dict[str, Any]) -> pyotp.TOTP:
    token = user["access_token"]
    _, setup = await auth.call(
        "POST", "/auth/v1/2fa/totp/setup", {"password": PASSWORD}, token=token, status=200
    )
    totp = pyotp.TOTP(setup["secret"])
    await auth.call(
        "POST", "/auth/v1/2fa/totp/confirm", {"code": totp.now()}, token=token, status=200
    )
    return totp


def wrong_code(totp: pyotp.TOTP) -> str:
    now = time.time()
    valid = {totp.at(now + drift) for drift in (-90, -60, -30, 0, 30, 60, 90)}
    return next(f"{n:06d}" for n in range(1000000) if f"{n:06d}" not in valid)


async def test_parallel_second_factor_guesses_are_counted_before_the_check(
    auth: AuthApi,
) -> None:
    user = await auth.signup()
    totp = await enrol_totp(auth, user)
    name = user["user"]["username"]
    wrong = wrong_code(totp)
    challenges = [(await auth.login(name))["challenge_id"] for _ in range(4)]

    async def guess(challenge_id: str) -> tuple[int, str]:
        status, body = await auth.call(
            "POST", "/auth/v1/login/2fa",
            {"challenge_id": challenge_id, "method": "totp", "code": wrong},
        )  # fmt: skip
        return status, body["error"]["code"]

    got = Counter(await asyncio.gather(*(guess(c) for c in challenges for _ in range(5))))
    assert got == {(401, "invalid_code"): CODES, (429, "account_locked"): 20 - CODES}
    # Locked: a fresh challenge with the right code is refused too.
    challenge = (await auth.login(name))["challenge_id"]
    status, body = await auth.call(
        "POST", "/auth/v1/login/2fa",
        {"challenge_id": challenge, "method": "totp", "code": totp.now()},
    )  # fmt: skip
    assert (status, body["error"]["code"]) == (429, "account_locked")


async def test_someone_with_only_the_password_cannot_lock_the_owner_out_of_the_second_factor(
    auth: AuthApi,
) -> None:
    """Before, wrong codes counted per account only: whoever had the password sent
    them and the owner's right code was refused from every address, indefinitely."""
    user = await auth.signup()
    token, name = user["access_token"], user["user"]["username"]
    _, setup = await auth.call(
        "POST", "/auth/v1/2fa/totp/setup", {"password": PASSWORD}, token=token, status=200
    )
    totp = pyotp.TOTP(setup["secret"])
    _, enrolled = await auth.call(
        "POST", "/auth/v1/2fa/totp/confirm", {"code": totp.now()}, token=token, status=200
    )
    recovery = iter(enrolled["recovery_codes"])
    wrong = wrong_code(totp)

    async def answer(addr: str, method: str, code: str) -> tuple[int, str]:
        """A login with the right password from ``addr``, then ``code``."""
        _, challenge = await auth.call(
            "POST", "/auth/v1/login", {"username": name, "password": PASSWORD},
            headers=ip(addr), status=200,
        )  # fmt: skip
        status, body = await auth.call(
            "POST", "/auth/v1/login/2fa",
            {"challenge_id": challenge["challenge_id"], "method": method, "code": code},
            headers=ip(addr),
        )  # fmt: skip
        return status, "ok" if status == 200 else body["error"]["code"]

    home = "203.0.113.10"  # where the owner fully signed in before
    assert await answer(home, "recovery", next(recovery)) == (200, "ok")
    # The attacker, from one address, until that address is locked out of code entry.
    for _ in range(CODES):
        assert await answer("192.0.2.66", "totp", wrong) == (401, "invalid_code")
    assert await answer("192.0.2.66", "totp", wrong) == (429, "account_locked")
    # The owner, from an address never used before, with the right TOTP code (the
    # next step's: the enrolment used this one) gets in: the failures were the
    # attacker's address's.
    traveling = "198.51.100.20"
    assert await answer(traveling, "totp", totp.at(time.time() + 30)) == (200, "ok")
    # Wrong codes from many addresses add up to the account-wide count...
    for n in range(CODE_ACCOUNT - CODES):
        assert await answer(f"192.0.2.{100 + n}", "totp", wrong) == (401, "invalid_code")
    # ...then addresses the owner never fully signed in from are refused, even with a
    # right code (not spent), while the owner's known addresses still get in.
    unspent = next(recovery)
    assert await answer("192.0.2.200", "recovery", unspent) == (429, "account_locked")
    assert await answer("192.0.2.66", "recovery", unspent) == (429, "account_locked")
    assert await answer(home, "recovery", unspent) == (200, "ok")
    assert await answer(traveling, "recovery", next(recovery)) == (200, "ok")
    assert await answer("127.0.0.1", "recovery", next(recovery)) == (200, "ok")  # sign-up
    # The attacker's own address stays locked out with a right code, too.
    assert await answer("192.0.2.66", "recovery", next(recovery)) == (429, "account_locked")
