"""Locust: users who sign up, publish keys, hold a WebSocket and chat end to end.

Each simulated user is a real Parley client (without the local store):

1. ``POST /auth/v1/signup``; a device (``parley.crypto.Device``) with
   ``PARLEY_LOCUST_PREKEYS`` one-time X25519 and ML-KEM prekeys, published
   with the key service's routes;
2. a WebSocket (websocket-client, which Locust's gevent makes cooperative)
   authenticated with the access token; a greenlet reads every frame;
3. its task picks one of its ``PARLEY_LOCUST_CONTACTS`` (5) contacts (other
   users of the run, chosen as it goes), claims that user's bundle the first
   time (PQXDH), encrypts ``{"t": send time, "n": counter}`` with the Double
   Ratchet and sends it; the recipient decrypts, acknowledges (cumulatively, every
   ``PARLEY_LOCUST_ACK_EVERY`` = 0.2 s), and reports
   the end-to-end delivery time (send on one socket to decrypted on the
   other) as the custom metric ``E2E  deliver``. ``WS  accepted`` is the time
   from ``send`` to the gateway's ``accepted`` (durable in Kafka).

Any decryption failure, error frame or lost socket is a Locust failure.  Run
headless (loadtest/README.md, "Locust")::

    locust -f loadtest/locustfile.py --headless -u 20 -r 5 -t 60s \\
        --host http://127.0.0.1:8080 --exit-code-on-error 1 --csv var/locust
"""

from __future__ import annotations

import base64
import json
import os
import random
import secrets
import time
from typing import Any

import gevent
import websocket
from locust import HttpUser, between, events, task
from parley.crypto import (
    AccountKey,
    Binding,
    CryptoError,
    Device,
    DeviceEntry,
    DeviceList,
    PrekeyBundle,
    ReplayedMessage,
    Session,
    SignedDeviceList,
)
from parley.peers import PeerState

PASSWORD = "locust " + "load test password"
PREKEYS = int(os.environ.get("PARLEY_LOCUST_PREKEYS", "20"))
DEVICE_ID = 1
CONTACTS = int(os.environ.get("PARLEY_LOCUST_CONTACTS", "5"))
ACK_EVERY = float(os.environ.get("PARLEY_LOCUST_ACK_EVERY", "0.2"))

# Users that can receive, by user id (one Locust process shares this; with
# --processes each worker's users talk among themselves).
READY: dict[str, ParleyUser] = {}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class ParleyUser(HttpUser):
    wait_time = between(0.5, 1.5)

    def on_start(self) -> None:
        self.username = f"lc{secrets.token_hex(6)}"
        self.peers: dict[str, PeerState] = {}
        self.contacts: list[str] = []
        self.sent_at: dict[str, float] = {}
        self.counter = 0
        self.last_seq = 0
        self.ws: websocket.WebSocket | None = None
        self.reader: gevent.Greenlet[Any, Any] | None = None
        self.stopping = False
        self._signup()
        self._publish_keys()
        self._connect()
        READY[self.user_id] = self

    def on_stop(self) -> None:
        self.stopping = True
        READY.pop(getattr(self, "user_id", ""), None)
        if self.ws is not None:
            self.ws.close()
        for greenlet in (self.reader, getattr(self, "acker", None)):
            if greenlet is not None:
                greenlet.kill(block=False)

    # -- setup ------------------------------------------------------------------
    def _signup(self) -> None:
        body = {
            "username": self.username,
            "email": f"{self.username}@example.test",
            "password": PASSWORD,
            "device_id": DEVICE_ID,
        }
        with self.client.post("/auth/v1/signup", json=body, catch_response=True) as resp:
            if resp.status_code != 201:
                resp.failure(f"signup: {resp.status_code} {resp.text[:200]}")
                raise RuntimeError("signup failed")
            tokens = resp.json()
        self.user_id = tokens["user"]["user_id"]
        self.token = tokens["access_token"]
        self.auth = {"Authorization": f"Bearer {self.token}"}

    def _publish_keys(self) -> None:
        self.device = Device.generate()
        base = f"/keys/v1/devices/{DEVICE_ID}"
        d = self.device
        calls = [
            ("PUT", "/identity", d.public_identity(), "keys: identity"),
            ("PUT", "/signed-prekey", d.signed_prekey(), "keys: signed prekey"),
            ("PUT", "/kem-last-resort", d.last_resort_kem_prekey(), "keys: last resort"),
            (
                "POST",
                "/one-time-prekeys",
                {"prekeys": d.generate_one_time_prekeys(PREKEYS)},
                "keys: one-time prekeys",
            ),
            (
                "POST",
                "/kem-prekeys",
                {"prekeys": d.generate_kem_prekeys(PREKEYS)},
                "keys: kem prekeys",
            ),
        ]
        # The account key signs a list naming this one device (docs/devices.md).
        self.account_key = AccountKey.generate()
        listing = DeviceList(
            user_id=self.user_id,
            version=1,
            devices=[DeviceEntry.of(DEVICE_ID, "locust", d.identity)],
        )
        account = {
            "account_key": _b64(self.account_key.public),
            **listing.sign(self.account_key).to_json(),
        }
        calls.insert(1, ("PUT", "/keys/v1/account", account, "keys: account"))
        for method, path, body, name in calls:
            with self.client.request(
                method,
                path if path.startswith("/keys/") else base + path,
                json=body,
                headers=self.auth,
                name=name,
                catch_response=True,
            ) as resp:
                if resp.status_code >= 300:
                    resp.failure(f"{resp.status_code} {resp.text[:200]}")
                    raise RuntimeError(f"{name} failed")

    def _connect(self) -> None:
        url = self.host.replace("https://", "wss://").replace("http://", "ws://") + "/ws"
        start = time.perf_counter()
        try:
            ws = websocket.create_connection(url, timeout=20)
            ws.send(json.dumps({"op": "auth", "token": self.token}))
            ready = json.loads(ws.recv())
            if ready.get("op") != "ready":
                raise RuntimeError(f"not ready: {ready}")
            ws.settimeout(None)
        except Exception as exc:
            self._fire("WS", "connect", start, exc=exc)
            raise
        self._fire("WS", "connect", start)
        self.ws = ws
        self.reader = gevent.spawn(self._read)
        self.acker = gevent.spawn(self._ack_loop)

    def _ack_loop(self) -> None:
        """Acknowledge cumulatively, at most every ``ACK_EVERY`` seconds (as the SDK)."""
        acked = 0
        while not self.stopping:
            gevent.sleep(ACK_EVERY)
            if self.last_seq > acked:
                acked = self.last_seq
                self._send({"op": "ack", "seq": acked})

    # -- metrics ------------------------------------------------------------------
    def _fire(
        self, kind: str, name: str, start: float, *, exc: Exception | None = None, size: int = 0
    ) -> None:
        self._fire_ms(kind, name, (time.perf_counter() - start) * 1000, exc=exc, size=size)

    def _fire_ms(
        self, kind: str, name: str, ms: float, *, exc: Exception | None = None, size: int = 0
    ) -> None:
        self.environment.events.request.fire(
            request_type=kind,
            name=name,
            response_time=ms,
            response_length=size,
            exception=exc,
            context={},
        )

    # -- receiving ----------------------------------------------------------------
    def _read(self) -> None:
        assert self.ws is not None
        while not self.stopping:
            try:
                raw = self.ws.recv()
            except Exception as exc:
                if not self.stopping:
                    self._fire_ms("WS", "socket", 0, exc=exc)
                return
            if not raw:
                if not self.stopping:
                    self._fire_ms("WS", "socket", 0, exc=RuntimeError("socket closed"))
                return
            frame = json.loads(raw)
            op = frame.get("op")
            if op == "message":
                self._on_message(frame)
            elif op == "accepted":
                start = self.sent_at.pop(frame.get("id"), None)
                if start is not None:
                    self._fire("WS", "accepted", start)
            elif op == "error":
                self.sent_at.pop(frame.get("id"), None)
                self._fire_ms("WS", f"error {frame.get('code')}", 0, exc=RuntimeError(str(frame)))

    def _on_message(self, frame: dict[str, Any]) -> None:
        seq = int(frame["seq"])
        sender = frame["from"]
        peer = self._peer(sender)
        wire = _unb64(frame["body"])
        try:
            if peer is None:
                raise CryptoError("no verified device list for the sender")
            incoming = peer.decrypt(
                self.device, int(frame.get("from_device") or 1), wire,
                me=(self.user_id, DEVICE_ID),
            )  # fmt: skip
        except ReplayedMessage:
            incoming = None  # pushed twice (allowed by the protocol): shown once
        except CryptoError as exc:
            self._fire_ms("E2E", "deliver", 0, exc=exc)
            incoming = None
        if incoming is not None:
            body = json.loads(incoming.message.plaintext)
            ms = (time.time() - body["t"]) * 1000
            self._fire_ms("E2E", "deliver", ms, size=len(wire))
        self.last_seq = max(self.last_seq, seq)

    def _peer(self, user_id: str, answer: dict[str, Any] | None = None) -> PeerState | None:
        """A contact, trusted through its signed device list (from a claim's answer,
        or the directory's list the first time it writes to us)."""
        peer = self.peers.get(user_id)
        if peer is not None and answer is None:
            return peer
        if answer is None:
            with self.client.get(
                f"/keys/v1/users/{user_id}/devices", headers=self.auth,
                name="keys: device list", catch_response=True,
            ) as resp:  # fmt: skip
                if resp.status_code != 200:
                    resp.failure(f"{resp.status_code} {resp.text[:200]}")
                    return None
                answer = resp.json()
        # The GET yielded: the other greenlet (reader or task) may have made this
        # contact meanwhile, with a session in it; never replace it with a new one.
        peer = self.peers.get(user_id) or PeerState(user_id)
        peer.trust(
            str(answer["account_key"]), SignedDeviceList.from_json(answer),
            self.account_key.public, self.user_id,
        )  # fmt: skip
        self.peers[user_id] = peer
        return peer

    # -- sending ------------------------------------------------------------------
    def _send(self, frame: dict[str, Any]) -> None:
        if self.ws is not None and not self.stopping:
            self.ws.send(json.dumps(frame))

    @task
    def send_message(self) -> None:
        # Each user writes to a few contacts of its own (as people do), picked
        # among the ready users the first time they are needed.
        if len(self.contacts) < CONTACTS:
            others = [u for u in READY if u != self.user_id and u not in self.contacts]
            if others:
                self.contacts.append(random.choice(others))
        if not self.contacts:
            return
        peer_id = random.choice(self.contacts)
        self.counter += 1
        plaintext = json.dumps({"t": time.time(), "n": self.counter, "from": self.username})
        peer = self.peers.get(peer_id)
        if peer is None or not peer.has_session(DEVICE_ID):
            with self.client.get(
                f"/keys/v1/users/{peer_id}/bundles",
                headers=self.auth,
                name="keys: claim bundle",
                catch_response=True,
            ) as resp:
                if resp.status_code != 200:
                    resp.failure(f"{resp.status_code} {resp.text[:200]}")
                    return
                answer = resp.json()
            peer = self._peer(peer_id, answer)
            assert peer is not None
            if not peer.has_session(DEVICE_ID):  # a message from them may have made one
                raw = next(b for b in answer["bundles"] if b["device_id"] == DEVICE_ID)
                bundle = PrekeyBundle.from_json(raw)
                session, wire = Session.initiate(
                    self.device, bundle, plaintext.encode(),
                    binding=Binding(self.user_id, DEVICE_ID, peer_id, DEVICE_ID),
                )  # fmt: skip
                peer.start(DEVICE_ID, session)
            else:
                wire = peer.encrypt(DEVICE_ID, plaintext.encode())
        else:
            wire = peer.encrypt(DEVICE_ID, plaintext.encode())
        client_id = secrets.token_hex(12)
        self.sent_at[client_id] = time.perf_counter()
        copy = {"user": peer_id, "device": DEVICE_ID, "body": _b64(wire),
                "commitment": _b64(wire[2:34])}  # fmt: skip
        self._send({"op": "send", "id": client_id, "to": peer_id, "copies": [copy]})


@events.test_stop.add_listener
def _forget_users(**_: Any) -> None:
    READY.clear()
