"""The client's keys part (parley.keys.Keys) against the real system through HAProxy."""

from __future__ import annotations

import pytest
from parley import ApiError, Client

from tests.client.conftest import MakeClient


async def test_setup_is_idempotent_and_a_listed_device_cannot_be_dropped(
    make_client: MakeClient,
) -> None:
    alice = await make_client()
    counts = await alice.api.counts(alice.device_id)
    await alice.keys.setup()  # nothing to do: same keys, full stock
    assert await alice.api.counts(alice.device_id) == counts
    # The directory will not forget a device the account's signed list names
    # (docs/devices.md): removal goes through a new list.
    with pytest.raises(ApiError) as exc:
        await alice.api.delete_device(alice.device_id)
    assert exc.value.code == "conflict"
    assert await alice.api.counts(alice.device_id) == counts


async def test_top_up_uploads_only_what_is_missing(make_client: MakeClient) -> None:
    alice, bob = await make_client(prekey_batch=20), await make_client()
    assert alice.username
    assert await alice.keys.top_up() == (0, 0)
    for _ in range(3):
        await bob.keys.claim(alice.user_id or "", [alice.device_id])
    assert await alice.keys.top_up() == (3, 3)
    assert (await alice.api.counts(alice.device_id))["one_time"] == 20


async def test_prekeys_low_makes_the_device_upload_more(make_client: MakeClient) -> None:
    bob = await make_client(prekey_batch=11)
    assert bob.username
    await bob.connect()
    counts = await bob.api.counts(bob.device_id)
    assert counts["one_time"] == 11 and counts["kem_one_time"] == 11
    for _ in range(2):  # two claims leave 9 (< 10): the directory says prekeys_low
        other = await make_client()
        await other.send(bob.username, "hi", wait=None)

    async def probe() -> tuple[int, int]:
        counts = await bob.api.counts(bob.device_id)
        return int(counts["one_time"]), int(counts["kem_one_time"])

    from tests.support.aio import eventually

    # Two uploads (X25519, then ML-KEM prekeys): wait for both.
    await eventually(probe, lambda n: n == (11, 11), timeout=30)


async def test_weekly_prekey_rotation_keeps_sessions_in_flight_working(
    make_client: MakeClient,
) -> None:
    alice, bob = await make_client(), await make_client()
    assert bob.username
    before = await bob.api.counts(bob.device_id)
    # Alice claims bob's bundle (current signed prekey) while bob is offline.
    await alice.connect()
    await alice.send(bob.username, "sent before the rotation", wait="stored")
    bob.rotate_after = 0  # the week has passed: the next connect rotates
    await bob.connect()
    after = await bob.api.counts(bob.device_id)
    assert after["signed_prekey_id"] == before["signed_prekey_id"] + 1
    assert after["kem_last_resort_id"] != before["kem_last_resort_id"]
    assert [e["text"] for e in bob.history(alice.user_id or "")] == ["sent before the rotation"]


async def test_keys_for_starting_sessions_are_parsed_once_per_stored_state(
    make_client: MakeClient,
) -> None:
    alice, bob = await make_client(), await make_client()
    assert bob.username
    first = alice.keys.device_to_send(alice.store.read())
    assert alice.keys.device_to_send(alice.store.read()) is first
    assert first.identity == alice.keys.device().identity  # type: ignore[union-attr]
    # A session started from it works, and the state it was parsed from is unchanged
    # (Session.initiate only reads the device).
    await alice.connect()
    await alice.send(bob.username, "hello", wait="stored")
    await bob.connect()
    assert [e["text"] for e in bob.history(alice.user_id or "")] == ["hello"]
    assert alice.keys.device_to_send(alice.store.read()) is first
    # A new stored state (bob rotates its prekeys: a new device row) is parsed again.
    bob.rotate_after = 0
    before = bob.keys.device_to_send(bob.store.read())
    await bob.keys.setup()
    again = bob.keys.device_to_send(bob.store.read())
    assert again is not before
    assert again.keys_digest() != before.keys_digest()


async def test_a_client_that_stays_connected_rotates_its_prekeys_when_due(
    make_client: MakeClient,
) -> None:
    """Until 2026-12-08 only connect rotated: ``parley chat`` or a bot left connected for
    weeks kept one signed prekey (and ran the keys check once)."""
    from tests.support.aio import eventually

    alice, bob = await make_client(), await make_client()
    assert bob.username
    before = await bob.api.counts(bob.device_id)
    bob.rotate_after = 2.0  # a "week" of two seconds; not yet due at connect
    bob.keys.upkeep_min_s = 0.5
    await bob.connect()
    assert (await bob.api.counts(bob.device_id))["signed_prekey_id"] == before["signed_prekey_id"]

    async def signed_prekey() -> int:
        return int((await bob.api.counts(bob.device_id))["signed_prekey_id"])

    await eventually(signed_prekey, lambda i: i > before["signed_prekey_id"], timeout=30)
    bob.rotate_after = 3600.0  # no further rotation under the message below
    # A first message on the rotated keys reads.
    await alice.connect()
    await alice.send(bob.username, "after the rotation", wait="stored")
    await eventually(
        lambda: _texts(bob, alice.user_id or ""), lambda t: t == ["after the rotation"], timeout=30
    )
    await bob.messenger.disconnect()
    assert bob.keys._upkeep is None


async def _texts(client: object, peer: str) -> list[str]:
    return [e["text"] for e in client.history(peer)]  # type: ignore[attr-defined]


async def _signup_unpublished(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> tuple[Client, str]:
    """A sign-up whose last step (``PUT /keys/v1/account``) is refused: the install holds
    the new account key, the directory none. Returns the client and the username."""
    from tests.client.conftest import PASSWORD, new_username

    client = await make_client(signup=False)

    async def refused(*args: object) -> object:
        raise ApiError("service_unavailable", "down for a moment", 503)

    monkeypatch.setattr(client.api, "put_account", refused)
    name = new_username()
    with pytest.raises(ApiError):
        await client.signup(name, PASSWORD, f"{name}@example.test")
    monkeypatch.undo()
    with pytest.raises(ApiError) as exc:
        await client.api.user_devices(client.user_id or "")
    assert exc.value.code in ("identity_not_found", "not_found")  # nothing published
    return client, name


async def _reachable(make_client: MakeClient, name: str) -> None:
    other = await make_client()
    await other.connect()
    await other.send(name, "reachable", wait="stored")


async def test_an_account_key_the_directory_did_not_take_is_published_at_the_next_start(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sign-up's last step (the account key and first list) refused: until 2026-12-08 the
    install kept the key and never sent it again, and the account had no list for good
    (every send ``identity_not_found``, nobody could write to it)."""
    client, name = await _signup_unpublished(make_client, monkeypatch)
    real, calls = client.api.put_account, 0

    async def counted(*args: object) -> object:
        nonlocal calls
        calls += 1
        return await real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(client.api, "put_account", counted)
    await client.keys.setup()  # the next start (connect, log-in)
    assert calls == 1
    assert await client.api.user_devices(client.user_id or "")  # the directory holds it
    await client.keys.setup()  # published: not sent again
    assert calls == 1
    await _reachable(make_client, name)


async def test_an_unpublished_account_key_never_resets_one_another_install_registered(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sign-up's PUT failed on install A; the owner signed in on install B, which found
    no account key and registered its own. A's retry must not reset B's (a reset removes
    B from the account): A is no device of the account (NeedsLink) and forgets its key."""
    from parley.keys import NeedsLink

    from tests.client.conftest import PASSWORD

    first, name = await _signup_unpublished(make_client, monkeypatch)
    second = await make_client(signup=False)
    await second.login(name, PASSWORD)
    held = (await second.api.user_devices(second.user_id or ""))["account_key"]
    with pytest.raises(NeedsLink):
        await first.keys.setup()
    assert first.keys.account_key() is None
    assert (await second.api.user_devices(second.user_id or ""))["account_key"] == held
    assert [d["this_device"] for d in await second.devices()] == [True]


async def test_a_store_from_before_the_mark_whose_account_key_was_never_published_is_repaired(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review finding: an install whose sign-up PUT failed under a version before the
    ``account_unpublished`` mark has no mark, so the retry never ran: its account stayed
    unreachable after the upgrade. Such a store is checked once."""
    from parley.keys import PUBLISHED, UNPUBLISHED

    client, name = await _signup_unpublished(make_client, monkeypatch)
    async with client.store.transaction() as tx:  # as the version before left it
        tx.delete(UNPUBLISHED)
        tx.delete(PUBLISHED)
    await client.keys.setup()
    assert (await client.api.user_devices(client.user_id or ""))["account_key"]
    assert client.store.read().get(PUBLISHED)
    await _reachable(make_client, name)
