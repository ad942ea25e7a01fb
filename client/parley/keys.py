"""The keys part of the client: this device's keys, the account's device list, linking.

Generates the device's identity and prekeys on first use, publishes them,
checks at every connect that the directory still holds them (keys check),
rotates the signed and last-resort prekeys weekly, tops up one-time
prekeys, and claims contacts' prekey bundles. Private halves are always
stored before the public halves are published.

Several devices per account (docs/devices.md): the **account identity key**
lives on every device of the account and signs the device list; a new
install is either the account's first device (it makes the account key), or
is **linked** by an existing device (which gives it the account key through
the link code's sealed channel), or **resets** the account identity (a new
account key: contacts see a new safety number).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from parley.account import Account, StoreRef
from parley.api import Api
from parley.crypto import (
    AccountKey,
    CryptoError,
    Device,
    DeviceEntry,
    DeviceList,
    LinkRequest,
    PublicIdentity,
    SignedDeviceList,
    parse_link_code,
    seal_for_new_device,
)
from parley.crypto.encoding import b64decode, b64encode
from parley.crypto.linking import LINK_ID_LEN
from parley.errors import ApiError, ParleyError
from parley.events import ErrorEvent, EventBus
from parley.store import Transaction

PREKEY_BATCH = 100
PREKEY_ROTATION_S = 7 * 24 * 3600  # signed and last-resort prekeys, as Signal (weekly)
MAX_UPLOAD = 100
LINK_POLL_S = 1.0
# The public halves of a batch of one-time prekeys stored but not yet all uploaded
# (Keys.top_up): {"one_time": [part, ...], "kem": [part, ...], "held": [n, n],
# "sizes": [n, n]}, a part of at most MAX_UPLOAD dropped once the directory took it.
UNSENT = "prekeys_unsent"
# The account key and first list made here, not yet taken by the directory.
UNPUBLISHED = "account_unpublished"
# The directory holds this install's account key (or it was checked once: a store
# from before UNPUBLISHED).
PUBLISHED = "account_published"
# While connected: the keys check and top-up again at least this often, and the
# week-old prekeys rotated when due (a client that stays connected for weeks).
KEYS_CHECK_S = 24 * 3600
UPKEEP_RETRY_S = 300.0  # after a failed upkeep (the directory unreachable)
UPKEEP_MIN_S = 60.0  # at least this between two runs (``rotate_after`` 0: every connect)

Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None]"]


class NeedsLink(ParleyError):
    """This install is not a device of the account yet: link it from another device
    (``parley devices link``), or reset the account identity."""


@dataclass(frozen=True)
class PendingDevice:
    """A device waiting to be linked, as an existing device sees it before approving."""

    link_id: str
    device_id: int
    name: str
    fingerprint: str


def default_device_name() -> str:
    return f"parley-cli on {socket.gethostname()}"[:64]


def _chunks(prekeys: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    return [prekeys[i : i + MAX_UPLOAD] for i in range(0, len(prekeys), MAX_UPLOAD)]


def _stored_before(exc: ApiError, chunk: list[dict[str, Any]]) -> bool:
    """Is this refusal of a part sent again the directory holding some of it already
    (``duplicate_prekey`` naming only its ids): stored by an earlier try, then claimed?"""
    ids = exc.details.get("ids") if isinstance(exc.details, dict) else None
    return (
        exc.code == "duplicate_prekey"
        and isinstance(ids, list)
        and bool(ids)
        and set(ids) <= {p["id"] for p in chunk}
    )


def fingerprint(signing_key: bytes) -> str:
    """A short, readable fingerprint of a device's signing key (compare before approving)."""
    hexed = signing_key.hex()[:20]
    return " ".join(hexed[i : i + 4] for i in range(0, 20, 4))


def _needs_link() -> NeedsLink:
    return NeedsLink(
        "This account already has devices. Link this one from one of them "
        "(`parley devices link` here, then `parley devices approve CODE` there), "
        "or start a new identity with `--new-identity` (your contacts will see a "
        "new safety number)."
    )


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
        claimed_kept: int | None = None,
    ) -> None:
        self.api = api
        self._store = store
        self.account = account
        self.events = events
        self._spawn = spawn
        self.prekey_batch = prekey_batch
        self.rotate_after = rotate_after
        # One-time prekeys of each kind kept past those the directory holds: claimed ones
        # waiting for the initial messages that use them (older ones: see top_up).
        self.claimed_kept = prekey_batch if claimed_kept is None else claimed_kept
        self._topping_up: asyncio.Task[None] | None = None  # prekeys_low's
        self._upkeep: asyncio.Task[None] | None = None  # while connected
        self.upkeep_min_s = UPKEEP_MIN_S
        self._top_up_lock = asyncio.Lock()  # one top-up at a time (its unsent batch)
        self._sending: tuple[bytes, Device] | None = None  # device_to_send's

    # -- this device ------------------------------------------------------------------
    async def device_id(self) -> int:
        """This install's device id: chosen at random once, kept in the store."""
        current = self._store().read().get("device_id")
        if current:
            return int(current)
        async with self._store().transaction() as tx:
            current = tx.get("device_id")
            if not current:
                current = secrets.randbelow(2**31 - 2) + 1
                tx.put("device_id", current)
        return int(current)

    def known_device_id(self) -> int:
        current = self._store().read().get("device_id")
        if not current:
            raise ParleyError("This install has no device id yet.")
        return int(current)

    def device(self, tx: Transaction | None = None) -> Device | None:
        raw = (tx or self._store().read()).get_bytes("device")
        return None if raw is None else Device.from_bytes(raw)

    def device_to_send(self, tx: Transaction) -> Device:
        """This device's keys for starting sessions (``Session.initiate`` only reads
        them), parsed once per stored state: parsing ~100 one-time prekeys' private
        keys cost ~8 ms, once per new session (a private room's first message starts
        one per member device). Callers that change the device use :meth:`device`."""
        raw = tx.get_bytes("device")
        if raw is None:
            raise ParleyError("This install has no device keys.")
        if self._sending is None or self._sending[0] != raw:
            self._sending = (raw, Device.from_bytes(raw))
        return self._sending[1]

    def account_key(self, tx: Transaction | None = None) -> AccountKey | None:
        raw = (tx or self._store().read()).get_bytes("account_key")
        return None if raw is None else AccountKey.from_seed(raw)

    def own_list(self, tx: Transaction | None = None) -> SignedDeviceList | None:
        raw = (tx or self._store().read()).get("device_list")
        return None if raw is None else SignedDeviceList.from_json(raw)

    def linked(self) -> bool:
        return self.account_key() is not None

    async def setup(self, *, new_identity: bool = False) -> None:
        """Make this device's keys on first use and publish them; then make sure the
        directory holds them, rotate week-old signed and last-resort prekeys, top up
        one-time prekeys, and (first device) create the account's device list.

        Raises :class:`NeedsLink` when the account already has devices and this
        install is not one of them (unless ``new_identity``: reset the account key).
        """
        await self.account.access_token()
        did = await self.device_id()
        device = await self._ensure_device_keys(did)
        if self.linked():
            pending = self._store().read().get(UNPUBLISHED)
            if isinstance(pending, dict):  # the first try's PUT failed (or was lost)
                await self._publish_account(pending, check=True)
            elif not self._store().read().get(PUBLISHED):
                await self._check_published()
            return
        current = await self._directory_account_key()
        if current is not None and not new_identity:
            raise _needs_link()
        await self._create_account(did, device, replaces=current)

    async def _directory_account_key(self) -> str | None:
        """The account key the directory holds for this account (base64), or None."""
        try:
            listed = await self.api.user_devices(self._me())
        except ApiError as exc:
            if exc.code not in ("identity_not_found", "user_not_found", "not_found"):
                raise
            return None
        return str(listed.get("account_key") or "") or None

    async def _ensure_device_keys(self, did: int) -> Device:
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
        if new or not await self._directory_holds(did, device):
            await self.api.put_identity(did, device.public_identity())
            await self.api.put_signed_prekey(did, device.signed_prekey())
            await self.api.put_last_resort(did, device.last_resort_kem_prekey())
        await self.top_up()
        return device

    async def _create_account(self, did: int, device: Device, replaces: str | None) -> None:
        """The account's first device (or a reset of ``replaces``, the key the directory
        held): a new account key and list v1."""
        account_key = AccountKey.generate()
        listing = DeviceList(
            user_id=self._me(),
            version=1,
            devices=[self._entry(did, default_device_name(), device)],
        )
        signed = listing.sign(account_key)
        async with self._store().transaction() as tx:
            tx.put_bytes("account_key", account_key.seed())
            tx.put("device_list", signed.to_json())
            tx.put(UNPUBLISHED, {"replaces": replaces})
        await self._publish_account({"replaces": replaces}, check=False)

    async def _publish_account(self, pending: dict[str, Any], *, check: bool) -> None:
        """Publish the account key and first list this install made (``_create_account``),
        until the directory has taken them. The same key again changes nothing there
        (docs/keys.md), so a PUT whose answer was lost is safely sent again. Before
        2026-12-08 a failed PUT (a 503, the network, the process ended) was never sent
        again: the install held the key, every later start took the account for set up,
        and the directory had no list: every send failed ``identity_not_found`` and
        nobody could write to the account.

        ``check`` (a retry): the directory is asked first. Holding neither our key nor the
        one ours replaces, another install registered its own since: ours, never
        published, is dropped and this install is no device of the account
        (:class:`NeedsLink`), rather than resetting the other's."""
        account_key, signed = self.account_key(), self.own_list()
        if account_key is None or signed is None:
            return
        ours = b64encode(account_key.public)
        current = await self._directory_account_key() if check else None
        if current != ours:
            if current is not None and current != pending.get("replaces"):
                async with self._store().transaction() as tx:
                    for key in ("account_key", "device_list", UNPUBLISHED):
                        tx.delete(key)
                raise _needs_link()
            await self.api.put_account(ours, signed.to_json())
        async with self._store().transaction() as tx:
            tx.delete(UNPUBLISHED)
            tx.put(PUBLISHED, True)

    async def _check_published(self) -> None:
        """A store from before the ``UNPUBLISHED`` mark (2026-12-08), asked once: if the
        directory holds no account key for this account (a sign-up whose PUT failed
        then), the key and first list this install made are published; another key is
        left as it is (ours may be the older one, replaced by another install's reset).
        A linked install's key is the directory's already."""
        account_key, signed = self.account_key(), self.own_list()
        if account_key is not None and signed is not None:
            if await self._directory_account_key() is None:
                await self.api.put_account(b64encode(account_key.public), signed.to_json())
        async with self._store().transaction() as tx:
            tx.put(PUBLISHED, True)

    @staticmethod
    def _entry(did: int, name: str, device: Device) -> DeviceEntry:
        return DeviceEntry.of(did, name, device.identity)

    def _me(self) -> str:
        if self.account.user_id is None:
            raise ParleyError("Log in first.")
        return self.account.user_id

    async def _directory_holds(self, did: int, device: Device) -> bool:
        """Does the key directory hold this device's current keys (keys check)?"""
        try:
            return await self.api.check_keys(did, b64encode(device.keys_digest()))
        except ApiError as exc:
            if exc.code == "device_not_found":  # deleted, or the directory lost it
                return False
            raise

    async def top_up(self) -> tuple[int, int]:
        """Upload one-time X25519 and ML-KEM prekeys up to the batch size; returns how
        many of each were uploaded. One at a time (connect's, ``top_up_prekeys`` and
        ``prekeys_low``'s wait for the one under way).

        The private halves of claimed prekeys wait for the initial messages that use
        them, but one claimed by someone who never writes would wait for ever (a
        claimer within the directory's per-target budget made a victim's device keep
        ~1,440 more of each kind a day, parsed for every first message). So past what
        the directory holds after this upload, only ``claimed_kept`` (a batch) of
        each kind are kept: the newest, as the directory hands them out in id order.
        An initial message naming one forgotten cannot be read (docs/crypto.md,
        "One-time prekeys kept").

        A batch is stored (private halves, and its public halves as ``prekeys_unsent``)
        before it is uploaded, and older prekeys are retired only once all of it is
        uploaded: a batch that never reached the directory is not among "the newest it
        holds", and until it is uploaded the next top-up sends it again, unchanged (the
        directory takes the same batch again as a retry), and makes no other."""
        async with self._top_up_lock:
            did = await self.device_id()
            sent = (0, 0)
            if self._store().read().get(UNSENT) is not None:
                sent = await self._send_unsent(did, resent=True)
            made = await self._top_up(did)
            return sent[0] + made[0], sent[1] + made[1]

    async def _top_up(self, did: int) -> tuple[int, int]:
        counts = await self.api.counts(did)
        held_ot, held_kem = int(counts["one_time"]), int(counts["kem_one_time"])
        need_ot = max(0, self.prekey_batch - held_ot)
        need_kem = max(0, self.prekey_batch - held_kem)
        if not need_ot and not need_kem:
            return 0, 0
        async with self._store().transaction() as tx:
            if tx.get(UNSENT) is not None:
                raise ParleyError("Another top-up of this device's prekeys is under way.")
            device = self.device(tx)
            assert device is not None
            one_time = await asyncio.to_thread(device.generate_one_time_prekeys, need_ot)
            kem = await asyncio.to_thread(device.generate_kem_prekeys, need_kem)
            tx.put_bytes("device", device.to_bytes())
            tx.put(UNSENT, {
                "one_time": _chunks(one_time), "kem": _chunks(kem),
                "held": [held_ot, held_kem], "sizes": [need_ot, need_kem],
            })  # fmt: skip
        return await self._send_unsent(did, resent=False, held=(held_ot, held_kem))

    async def _send_unsent(
        self, did: int, *, resent: bool, held: tuple[int, int] | None = None
    ) -> tuple[int, int]:
        """Upload the batch kept as unsent, each part (of ``MAX_UPLOAD``) noted once the
        directory took it; then retire the one-time prekeys of each kind past (what the
        directory held before the upload + the batch + ``claimed_kept``), and forget the
        batch, in one transaction. An upload that fails leaves it (nothing retired) for
        the next top-up to send again.

        Sent again, a part that the directory stored the first time (its answer was lost)
        is a retry while all of it is still stored; once some of it was claimed, the
        directory refuses it as ``duplicate_prekey`` naming ids of it: all or nothing,
        it was stored, so it counts as uploaded. (One stored and then all claimed cannot
        be told from one never stored: it is stored again.)"""
        row = self._store().read().get(UNSENT)
        if row is None:
            return 0, 0
        if held is None:
            counts = await self.api.counts(did)
            held = (int(counts["one_time"]), int(counts["kem_one_time"]))
        uploads = (("one_time", self.api.upload_one_time), ("kem", self.api.upload_kem))
        sent = {"one_time": 0, "kem": 0}
        for kind, upload in uploads:
            for chunk in list(row[kind]):
                try:
                    await upload(did, chunk)
                except ApiError as exc:
                    if not (resent and _stored_before(exc, chunk)):
                        raise
                sent[kind] += len(chunk)
                async with self._store().transaction() as tx:
                    row = tx.get(UNSENT)
                    if row is None or not row[kind] or row[kind][0] != chunk:
                        raise ParleyError("This device's unsent prekeys changed meanwhile.")
                    row[kind].pop(0)
                    tx.put(UNSENT, row)
        sizes = (int(row["sizes"][0]), int(row["sizes"][1]))
        # Held before the upload: now, or when the batch was made, whichever is more (a
        # batch sent again may have been partly stored already: keeping more is safe).
        held_ot, held_kem = (max(a, int(b)) for a, b in zip(held, row["held"], strict=True))
        async with self._store().transaction() as tx:
            device = self.device(tx)  # as stored now: sessions started meanwhile used some
            assert device is not None
            device.retire_one_time_prekeys(
                held_ot + sizes[0] + self.claimed_kept, held_kem + sizes[1] + self.claimed_kept
            )
            tx.put_bytes("device", device.to_bytes())
            tx.delete(UNSENT)
        return sent["one_time"], sent["kem"]

    # -- upkeep while connected --------------------------------------------------------
    def start_upkeep(self) -> None:
        """While connected: rotate the signed and last-resort prekeys when they are
        ``rotate_after`` old and run the keys check and top-up again daily (what
        :meth:`setup` does at connect). Before 2026-12-08 only connect did it, so a
        client that stayed connected (``parley chat``, a bot) kept one signed prekey for
        ever, against the weekly rotation documented (docs/crypto.md)."""
        if self._upkeep is None or self._upkeep.done():
            self._upkeep = self._spawn(self._upkeep_loop())

    async def stop_upkeep(self) -> None:
        task, self._upkeep = self._upkeep, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _upkeep_due_in(self) -> float:
        rotated = float(self._store().read().get("prekeys_rotated_at") or 0)
        due = min(rotated + self.rotate_after - time.time(), KEYS_CHECK_S)
        return max(due, self.upkeep_min_s)

    async def _upkeep_loop(self) -> None:
        wait = self._upkeep_due_in()  # connect's setup has just run
        while True:
            await asyncio.sleep(wait)
            try:
                await self._ensure_device_keys(await self.device_id())
                wait = self._upkeep_due_in()
            except ParleyError as exc:  # the API's network errors are ParleyErrors too
                message = f"Could not refresh this device's keys: {exc}"
                self.events.emit(ErrorEvent("prekeys", message))
                wait = UPKEEP_RETRY_S

    def on_prekeys_low(self) -> None:
        """The server says one-time prekeys run low: top up in the background."""
        if self._topping_up is None or self._topping_up.done():
            self._topping_up = self._spawn(self._top_up_quietly())

    async def _top_up_quietly(self) -> None:
        try:
            await self.top_up()
        except ParleyError as exc:
            self.events.emit(ErrorEvent("prekeys", f"Could not upload new prekeys: {exc}"))

    # -- the account's devices ----------------------------------------------------------
    async def devices(self) -> list[dict[str, Any]]:
        """This account's devices, from the verified list: id, name, and which is this one."""
        await self.refresh_own_list()
        signed = self.own_list()
        if signed is None:
            return []
        me = self.known_device_id()
        return [
            {"device_id": d.device_id, "name": d.name, "this_device": d.device_id == me,
             "fingerprint": fingerprint(d.signing_key)}
            for d in signed.device_list.devices
        ]  # fmt: skip

    async def refresh_own_list(self) -> SignedDeviceList | None:
        """Fetch the account's current list, verify it with our account key, keep it."""
        account_key = self.account_key()
        if account_key is None:
            return None
        await self.account.access_token()
        answer = await self.api.user_devices(self._me())
        if answer.get("account_key") != b64encode(account_key.public):
            raise ParleyError(
                "The directory holds another account key for this account: the identity "
                "was reset from another install. Link this device again."
            )
        signed = SignedDeviceList.from_json(answer)
        signed.verify(account_key.public, user_id=self._me())
        current = self.own_list()
        if current is not None and signed.device_list.version < current.device_list.version:
            raise ParleyError("The directory served an older device list than this device has.")
        async with self._store().transaction() as tx:
            tx.put("device_list", signed.to_json())
        return signed

    async def _publish_list(self, change: Callable[[list[DeviceEntry]], list[DeviceEntry]]) -> None:
        """Sign and publish the next version of the device list (retrying on a race)."""
        account_key = self.account_key()
        if account_key is None:
            raise NeedsLink("This device is not linked to the account.")
        for _attempt in range(3):
            current = await self.refresh_own_list()
            assert current is not None
            listing = DeviceList(
                user_id=self._me(),
                version=current.device_list.version + 1,
                devices=change(list(current.device_list.devices)),
            )
            signed = listing.sign(account_key)
            try:
                await self.api.put_device_list(signed.to_json())
            except ApiError as exc:
                if exc.code == "conflict":
                    continue  # another device changed the list meanwhile
                raise
            async with self._store().transaction() as tx:
                tx.put("device_list", signed.to_json())
            return
        raise ParleyError("The device list keeps changing; try again.")

    async def rename(self, device_id: int, name: str) -> None:
        """Give a device of this account a new name: 1 to ``NAME_MAX`` characters, no
        control character (the device list's rule), else :class:`ParleyError` and
        nothing changes (before, a longer name was cut to 64 without a word)."""
        from parley.crypto.device_list import NAME_MAX  # (kept to this method)

        if not 0 < len(name) <= NAME_MAX:
            raise ParleyError(
                f"A device name has 1 to {NAME_MAX} characters (this one has {len(name)})."
            )
        if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or 0xD800 <= ord(c) <= 0xDFFF
               for c in name):  # fmt: skip
            raise ParleyError(
                "A device name may not contain a control character (a tab, a line break) or "
                "bytes that are not UTF-8."
            )

        def change(devices: list[DeviceEntry]) -> list[DeviceEntry]:
            if all(d.device_id != device_id for d in devices):
                raise ParleyError(f"No device {device_id} in this account.")
            return [
                DeviceEntry(d.device_id, name, d.signing_key, d.dh_key)
                if d.device_id == device_id else d
                for d in devices
            ]  # fmt: skip

        await self._publish_list(change)

    async def remove(self, device_id: int) -> None:
        """Remove a device (another one, or this one) from the account."""

        def change(devices: list[DeviceEntry]) -> list[DeviceEntry]:
            kept = [d for d in devices if d.device_id != device_id]
            if len(kept) == len(devices):
                raise ParleyError(f"No device {device_id} in this account.")
            if not kept:
                raise ParleyError("This is the account's only device.")
            return kept

        await self._publish_list(change)

    # -- linking --------------------------------------------------------------------------
    async def start_link(self, name: str | None = None) -> LinkRequest:
        """On the new device: publish it as pending; returns the link (show its code).

        The link (its id and ephemeral key) is kept in the store until it is finished
        or withdrawn: a link this install started before, and that the directory still
        holds, is taken up again with the same code. So an install that died after
        another device approved it (it is listed, but never opened the account key)
        opens the approval when it is run again, instead of being a listed device
        without the key that must be removed and linked again."""
        await self.account.access_token()
        did = await self.device_id()
        await self._ensure_device_keys(did)
        saved = self._saved_link()
        if saved is not None:
            try:
                await self.api.get_link(b64encode(saved.link_id))
                return saved
            except ApiError as exc:
                if exc.code != "not_found":
                    raise
            self._forget_link()  # expired or withdrawn: a new one
        request = LinkRequest.generate()
        async with self._store().transaction() as tx:
            tx.put_bytes("pending_link", request.link_id + request.private_bytes())
        try:
            await self.api.create_link(
                b64encode(request.link_id), did, (name or default_device_name())[:64],
                e_pub=b64encode(request.e_public),
            )  # fmt: skip
        except BaseException:
            self._forget_link()
            raise
        return request

    def _saved_link(self) -> LinkRequest | None:
        raw = self._store().read().get_bytes("pending_link")
        if raw is None or len(raw) != LINK_ID_LEN + 32:
            return None
        return LinkRequest.from_private(raw[:LINK_ID_LEN], raw[LINK_ID_LEN:])

    def _forget_link(self) -> None:
        with self._store().transaction_sync() as tx:
            tx.delete("pending_link")

    async def cancel_link(self, request: LinkRequest) -> bool:
        """On the new device: withdraw the link (its user gave up), so that its code can
        no longer be approved. Best effort: an expired link is gone already. Returns
        False when it was approved meanwhile (``conflict``): the account lists this
        device already, so the link is kept for :meth:`finish_link` to open (forgotten,
        the listed device never got the account key, and contacts wrote to it for
        nothing)."""
        try:
            await self.api.cancel_link(b64encode(request.link_id))
        except ApiError as exc:
            if exc.code == "conflict":
                return False
        except ParleyError:
            pass
        self._forget_link()
        return True

    async def finish_link(self, request: LinkRequest, timeout: float = 600.0) -> None:
        """On the new device: wait for the approval, open it, check the list names us."""
        device = self.device()
        assert device is not None
        link_id = b64encode(request.link_id)
        deadline = time.monotonic() + timeout
        while True:
            link = await self.api.get_link(link_id)
            if link.get("approval"):
                break
            if time.monotonic() > deadline:
                if not await self.cancel_link(request):
                    continue  # approved since the last look: open it
                raise ParleyError("The link code was not approved in time.")
            await asyncio.sleep(LINK_POLL_S)
        sealed = b64decode(link["approval"]["sealed"])
        payload = json.loads(request.open(device.identity.signing_key, sealed))
        if payload.get("user_id") != self._me():
            self._forget_link()  # approved: it cannot be approved again
            raise ParleyError("The approval is for another account.")
        account_key = AccountKey.from_seed(b64decode(payload["account_key"]))
        async with self._store().transaction() as tx:
            tx.put_bytes("account_key", account_key.seed())
            tx.put(PUBLISHED, True)  # the account's key, which the directory holds
            tx.delete("pending_link")  # opened: done with
        signed = await self.refresh_own_list()
        assert signed is not None
        me = self.known_device_id()
        if not any(
            d.device_id == me and d.signing_key == device.identity.signing_key
            for d in signed.device_list.devices
        ):
            async with self._store().transaction() as tx:
                tx.delete("account_key")
            raise ParleyError("The device list does not name this device: the link failed.")

    async def pending(self, code: str) -> PendingDevice:
        """On an existing device: what a link code asks to link (show it before approving)."""
        return (await self._read_link(code))[0]

    async def _read_link(self, code: str) -> tuple[PendingDevice, dict[str, Any]]:
        link_id, _ = parse_link_code(code)
        await self.account.access_token()
        link = await self.api.get_link(b64encode(link_id))
        identity = link["identity"]
        pending = PendingDevice(
            link_id=b64encode(link_id),
            device_id=int(link["device_id"]),
            name=str(link.get("name") or ""),
            fingerprint=fingerprint(b64decode(identity["signing_key"])),
        )
        return pending, link

    async def approve(
        self, code: str, confirm: Callable[[PendingDevice], Awaitable[bool]] | None = None
    ) -> PendingDevice:
        """On an existing device: add the new device to the signed list and hand it the
        account key through the link code's sealed channel."""
        account_key = self.account_key()
        if account_key is None:
            raise NeedsLink("This device is not linked to the account.")
        link_id, e_pub = parse_link_code(code)
        pending, shown = await self._read_link(code)
        registered = shown.get("e_pub")
        if registered is not None and registered != b64encode(e_pub):
            # The key part of the code (after its first 11 characters) differs from the
            # one the new device registered: a typo. Sealed to it, the account key could
            # never be opened, and the device would stay listed without it. (Only a
            # check: the seal uses the code's key, so a lying server can only make this
            # refuse.)
            raise ParleyError(
                "That code does not match the new device's link (a character mistyped?): "
                "copy it whole from the new device. Nothing was changed."
            )
        if confirm is not None and not await confirm(pending):
            raise ParleyError("Not approved.")
        # Read again (the user may have taken minutes): it must still name the device and
        # keys that were shown, or a directory could show one fingerprint and get other
        # keys into the signed list.
        link = await self.api.get_link(pending.link_id)
        if link.get("approval") is not None:
            # Another device approved this code meanwhile: nothing more to do here (and
            # nothing to publish: the list names the device already).
            raise ParleyError("This link was approved already (by another device).")
        if (link.get("device_id"), link.get("identity")) != (
            shown.get("device_id"),
            shown.get("identity"),
        ):
            raise ParleyError(
                "The new device's keys changed after they were shown: not approved. Compare again."
            )
        try:
            identity = PublicIdentity.from_json(link["identity"])  # its DH key signed by it
        except CryptoError as exc:
            raise ParleyError(f"The new device's keys are not valid ({exc}).") from exc
        entry = DeviceEntry(
            device_id=pending.device_id,
            name=pending.name or "new device",
            signing_key=identity.signing_key,
            dh_key=identity.dh_key,
        )

        def change(devices: list[DeviceEntry]) -> list[DeviceEntry]:
            return [d for d in devices if d.device_id != entry.device_id] + [entry]

        await self._publish_list(change)
        payload = json.dumps(
            {"user_id": self._me(), "account_key": b64encode(account_key.seed())}
        ).encode()
        sealed = seal_for_new_device(e_pub, link_id, entry.signing_key, payload)
        # The key directory refuses the new device's withdrawal of its link once the list
        # names it (services/keys/links.py ``cancel``), so the approval finds the link
        # unless it expired in the moment between (ten minutes after it was posted).
        await self.api.approve_link(pending.link_id, b64encode(sealed))
        return pending

    # -- contacts' bundles --------------------------------------------------------------
    async def claim(self, user_id: str, device_ids: list[int]) -> dict[str, Any]:
        """Claim bundles of some devices of a user (one-time prekeys are handed out once);
        the answer carries the signed device list to verify them against."""
        return await self.api.claim_bundles(user_id, device_ids)

    async def directory_list(self, user_id: str) -> dict[str, Any]:
        """A user's account key and signed device list, as the directory has them."""
        await self.account.access_token()
        return await self.api.user_devices(user_id)
