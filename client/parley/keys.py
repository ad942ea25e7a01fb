"""The keys part of the client: this device's keys and what the directory holds.

Generates the device's identity and prekeys on first use, publishes them,
checks at every connect that the directory still holds them (keys check),
rotates the signed and last-resort prekeys weekly, tops up one-time
prekeys, and claims contacts' prekey bundles. Private halves are always
stored before the public halves are published.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

from parley.account import Account, StoreRef
from parley.api import Api
from parley.crypto import Device
from parley.crypto.encoding import b64encode
from parley.errors import ApiError, ParleyError
from parley.events import ErrorEvent, EventBus
from parley.store import Transaction

DEVICE_ID = 1
PREKEY_BATCH = 100
PREKEY_ROTATION_S = 7 * 24 * 3600  # signed and last-resort prekeys, as Signal (weekly)
MAX_UPLOAD = 100

Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None]"]


class Keys:
    def __init__(
        self,
        api: Api,
        store: StoreRef,
        account: Account,
        events: EventBus,
        spawn: Spawn,
        *,
        prekey_batch: int = PREKEY_BATCH,
        rotate_after: float = PREKEY_ROTATION_S,
    ) -> None:
        self.api = api
        self._store = store
        self.account = account
        self.events = events
        self._spawn = spawn
        self.prekey_batch = prekey_batch
        self.rotate_after = rotate_after
        self._topping_up: asyncio.Task[None] | None = None

    def device(self, tx: Transaction | None = None) -> Device | None:
        raw = (tx or self._store().read()).get_bytes("device")
        return None if raw is None else Device.from_bytes(raw)

    async def setup(self) -> None:
        """Generate this device's keys on first use and publish them; afterwards make
        sure the directory still holds them, rotate week-old signed and last-resort
        prekeys, and top up one-time prekeys."""
        await self.account.access_token()
        now = time.time()
        async with self._store().transaction() as tx:
            device = self.device(tx)
            new = device is None
            if device is None:
                device = Device.generate()
                tx.put("prekeys_rotated_at", now)
            elif now - float(tx.get("prekeys_rotated_at") or 0) >= self.rotate_after:
                # The previous ones are kept for initial messages still in flight.
                device.rotate_signed_prekey()
                device.rotate_last_resort_kem_prekey()
                tx.put("prekeys_rotated_at", now)
            tx.put_bytes("device", device.to_bytes())
        if new or not await self._directory_holds(device):
            await self.api.put_identity(DEVICE_ID, device.public_identity())
            await self.api.put_signed_prekey(DEVICE_ID, device.signed_prekey())
            await self.api.put_last_resort(DEVICE_ID, device.last_resort_kem_prekey())
        await self.top_up()

    async def _directory_holds(self, device: Device) -> bool:
        """Does the key directory hold this device's current keys (keys check)?"""
        try:
            return await self.api.check_keys(DEVICE_ID, b64encode(device.keys_digest()))
        except ApiError as exc:
            if exc.code == "device_not_found":  # deleted, or the directory lost it
                return False
            raise

    async def top_up(self) -> tuple[int, int]:
        """Upload one-time X25519 and ML-KEM prekeys up to the batch size; returns how
        many of each were uploaded."""
        counts = await self.api.counts(DEVICE_ID)
        need_ot = max(0, self.prekey_batch - int(counts["one_time"]))
        need_kem = max(0, self.prekey_batch - int(counts["kem_one_time"]))
        if not need_ot and not need_kem:
            return 0, 0
        async with self._store().transaction() as tx:
            device = self.device(tx)
            assert device is not None
            one_time = await asyncio.to_thread(device.generate_one_time_prekeys, need_ot)
            kem = await asyncio.to_thread(device.generate_kem_prekeys, need_kem)
            tx.put_bytes("device", device.to_bytes())
        for i in range(0, len(one_time), MAX_UPLOAD):
            await self.api.upload_one_time(DEVICE_ID, one_time[i : i + MAX_UPLOAD])
        for i in range(0, len(kem), MAX_UPLOAD):
            await self.api.upload_kem(DEVICE_ID, kem[i : i + MAX_UPLOAD])
        return need_ot, need_kem

    def on_prekeys_low(self) -> None:
        """The server says one-time prekeys run low: top up in the background."""
        if self._topping_up is None or self._topping_up.done():
            self._topping_up = self._spawn(self._top_up_quietly())

    async def _top_up_quietly(self) -> None:
        try:
            await self.top_up()
        except ParleyError as exc:
            self.events.emit(ErrorEvent("prekeys", f"Could not upload new prekeys: {exc}"))

    async def devices(self, user_id: str) -> list[dict[str, Any]]:
        """A user's devices in the key directory (with safety-relevant keys)."""
        await self.account.access_token()
        return await self.api.identities(user_id)

    async def claim_bundle(self, peer_id: str) -> dict[str, Any]:
        """Claim one prekey bundle of a contact (one-time prekeys are handed out once)."""
        bundles = await self.api.claim_bundles(peer_id)
        if not bundles:
            raise ParleyError("That contact has no keys published yet.")
        return next((b for b in bundles if b.get("device_id") == DEVICE_ID), bundles[0])
