"""Password policy, the blocklist and argon2id hashing."""

from __future__ import annotations

import asyncio

import pytest
from argon2 import PasswordHasher, Type

from services.auth.config import AuthSettings
from services.auth.passwords import Passwords, blocklist, check_policy
from services.common.errors import ApiError
from tests.auth.helpers import PASSWORD, AuthApi, RecordingHasher, unique_name


def test_blocklist_is_shipped_lowercase_and_long_enough() -> None:
    words = blocklist()
    assert len(words) > 5000
    assert all(w == w.lower() and len(w) >= 10 for w in words)
    assert {"qwertyuiop", "1234567890", "password123", "iloveyou123"} <= words


@pytest.mark.parametrize(
    "password",
    ["QwErTyUiOp", "PASSWORD123", "1234567890", "ＰＡＳＳＷＯＲＤ１２３", "short", "zzzzzzzzzzzz"],  # noqa: RUF001
)
def test_weak_passwords_are_refused(password: str) -> None:
    with pytest.raises(ApiError) as exc:
        check_policy(password, AuthSettings.for_tests())
    assert exc.value.code == "weak_password"
    assert exc.value.status == 422


def test_policy_refuses_username_and_email_and_bounds_length() -> None:
    cfg = AuthSettings.for_tests()
    for pw, kw in [
        ("xx-alice-xx-2026", {"username": "alice"}),
        ("alice@example.test", {"email": "Alice@Example.test"}),
        ("x" * 100 + "y" * 100 + "z" * 100, {}),
    ]:
        with pytest.raises(ApiError):
            check_policy(pw, cfg, **kw)
    check_policy(PASSWORD, cfg, username="alice", email="alice@example.test")
    check_policy("ünïcödé passphrase ✓", cfg)


async def test_hashes_are_argon2id_with_the_configured_cost() -> None:
    cheap = Passwords(AuthSettings.for_tests())
    stored = await cheap.hash(PASSWORD)
    assert stored.startswith("$argon2id$v=19$m=8,t=1,p=1$")
    assert await cheap.verify(stored, PASSWORD)
    assert not await cheap.verify(stored, PASSWORD + "!")
    assert not await cheap.verify(None, PASSWORD)  # an unknown user: still one verification
    assert not await cheap.verify("not a hash", PASSWORD)
    # NFKC: the composed and decomposed forms of "é" are the same password.
    stored = await cheap.hash("caf\u00e9 au lait, bitte")
    assert await cheap.verify(stored, "cafe\u0301 au lait, bitte")
    # The production defaults are RFC 9106's second recommended option.
    prod = AuthSettings.model_fields
    assert (
        prod["argon2_time_cost"].default,
        prod["argon2_memory_kib"].default,
        prod["argon2_parallelism"].default,
    ) == (3, 65536, 4)


async def test_login_upgrades_a_hash_made_with_old_parameters(auth: AuthApi) -> None:
    user = await auth.signup()
    uid = user["user"]["user_id"]
    old = PasswordHasher(time_cost=1, memory_cost=16, parallelism=1, type=Type.ID).hash(PASSWORD)
    await auth.db["users"].update_one({"_id": uid}, {"$set": {"password_hash": old}})
    await auth.login(user["user"]["username"], status=200)
    doc = await auth.db["users"].find_one({"_id": uid})
    assert doc["password_hash"].startswith("$argon2id$v=19$m=8,t=1,p=1$")
    await auth.login(user["user"]["username"], status=200)


async def test_a_hash_with_other_parameters_is_also_checked_against_the_dummy(
    auth: AuthApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Login time must not tell an account not yet upgraded to the configured argon2
    parameters from an unknown username (checked against a dummy hash with the
    configured ones): such an account's hash is checked together with the dummy, and
    the answer waits for both. Asserted by what is verified, not by timing."""
    user = await auth.signup()
    uid, name = user["user"]["user_id"], user["user"]["username"]
    passwords = auth.service.passwords
    dummy = passwords._dummy
    hasher = RecordingHasher(passwords.hasher)
    monkeypatch.setattr(passwords, "hasher", hasher)

    async def checked(username: str, password: str, status: int) -> list[str]:
        hasher.verified.clear()
        await auth.login(username, password, status=status)
        return sorted(hasher.verified)

    current = (await auth.db["users"].find_one({"_id": uid}))["password_hash"]
    assert await checked(name, "a wrong password", 401) == [current]
    assert await checked(unique_name(), "a wrong password", 401) == [dummy]
    # Made before the parameters changed: cheaper ones (the cost was raised since), and
    # costlier ones (lowered since).
    for old in (
        PasswordHasher(time_cost=1, memory_cost=16, parallelism=1, type=Type.ID).hash(PASSWORD),
        PasswordHasher(time_cost=2, memory_cost=32, parallelism=2, type=Type.ID).hash(PASSWORD),
    ):
        await auth.db["users"].update_one({"_id": uid}, {"$set": {"password_hash": old}})
        assert await checked(name, "a wrong password", 401) == sorted([old, dummy])
        # The right password still signs in (and upgrades the hash).
        assert await checked(name, PASSWORD, 200) == sorted([old, dummy])
        upgraded = (await auth.db["users"].find_one({"_id": uid}))["password_hash"]
        assert upgraded.startswith("$argon2id$v=19$m=8,t=1,p=1$")
        assert await checked(name, "a wrong password", 401) == [upgraded]


@pytest.mark.parametrize("slots", [1, 2, 3])
async def test_checks_of_two_hashes_at_once_share_the_slots(slots: int) -> None:
    """A check of two hashes takes two slots (one if there is only one): a burst of
    them among ordinary checks all finishes (none waits for another's second slot), and
    every slot is back afterwards."""
    pw = Passwords(AuthSettings.for_tests(argon2_max_concurrency=slots))
    old = PasswordHasher(time_cost=2, memory_cost=16, parallelism=1, type=Type.ID).hash(PASSWORD)
    current = await pw.hash(PASSWORD)
    cases = [(h, p) for _ in range(4) for h in (old, current, None) for p in (PASSWORD, "wrong")]
    got = await asyncio.gather(*(pw.verify(h, p) for h, p in cases))
    assert got == [h is not None and p == PASSWORD for h, p in cases]
    for _ in range(slots):
        await pw._slots.acquire()  # each free, or this would wait
    assert pw._slots.locked()


def test_cheap_profiles_are_rejected_when_inconsistent() -> None:
    with pytest.raises(ValueError):
        AuthSettings(argon2_memory_kib=8, argon2_parallelism=4)
    with pytest.raises(ValueError):
        AuthSettings(limit_login_ip="ten per minute")
