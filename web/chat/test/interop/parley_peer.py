"""A Python peer for the browser client's interop tests (web/chat/test/interop.test.ts).

Run from this directory as ``<repo>/.venv/bin/python -m parley_peer``. It reads one
JSON request per line on stdin and writes one JSON answer per line on stdout:

    {"id": 1, "op": "device_new", "args": {...}}
      -> {"id": 1, "ok": true, "result": {...}}
      or {"id": 1, "ok": false, "error": "ReplayedMessage", "message": "..."}

Binary values travel as base64url without padding (parley.crypto.encoding). The
peer holds devices, sessions and group sessions by name and drives the real
``parley.crypto`` of the repository: nothing here re-implements the protocol.

Only ``parley.crypto`` is needed, so the package root ``parley`` (whose
``__init__`` imports the whole networked SDK) is registered as a bare namespace
over ``client/parley`` instead of being executed.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[4]
if "parley" not in sys.modules:
    _pkg = types.ModuleType("parley")
    _pkg.__path__ = [str(REPO / "client" / "parley")]
    sys.modules["parley"] = _pkg
sys.path.insert(0, str(REPO))  # tests.crypto.drbg: the vectors' test DRBG

from parley.crypto import (  # noqa: E402
    Binding,
    CryptoError,
    Device,
    GroupSession,
    Session,
    safety_number,
    verify_report,
)
from parley.crypto.encoding import b64decode, b64encode  # noqa: E402
from parley.crypto.primitives import X25519KeyPair  # noqa: E402
from parley.crypto.ratchet import RatchetState  # noqa: E402

from tests.crypto.drbg import deterministic_random  # noqa: E402

devices: dict[str, Device] = {}
sessions: dict[str, Session] = {}
groups: dict[str, GroupSession] = {}


def b(value: str) -> bytes:
    return b64decode(value)


def rng_of(args: dict[str, Any]) -> Any:
    seed = args.get("drbg_seed")
    return None if seed is None else deterministic_random(bytes.fromhex(seed))


def public_parts(device: Device, one_time: list[Any], kem: list[Any]) -> dict[str, Any]:
    return {
        "identity": device.public_identity(),
        "signed_prekey": device.signed_prekey(),
        "one_time_prekeys": one_time,
        "kem_prekeys": kem,
        "last_resort_kem_prekey": device.last_resort_kem_prekey(),
    }


def op_device_new(args: dict[str, Any]) -> Any:
    rng = rng_of(args)
    device = Device.generate(rng) if rng is not None else Device.generate()
    one_time = device.generate_one_time_prekeys(args.get("one_time", 2))
    kem = device.generate_kem_prekeys(args.get("kem", 2))
    devices[args["name"]] = device
    return public_parts(device, one_time, kem)


def op_device_state(args: dict[str, Any]) -> Any:
    return b64encode(devices[args["name"]].to_bytes())


def op_device_keys_digest(args: dict[str, Any]) -> Any:
    return b64encode(devices[args["name"]].keys_digest())


def op_device_load(args: dict[str, Any]) -> Any:
    device = Device.from_bytes(b(args["state"]))
    devices[args["name"]] = device
    return {"identity": device.public_identity(), "one_time_count": device.one_time_prekey_count}


def binding_of(args: dict[str, Any]) -> Binding:
    """``args["binding"]``: Binding's fields by name (snake_case, as in the vectors)."""
    return Binding(**args["binding"])


def op_initiate(args: dict[str, Any]) -> Any:
    session, message = Session.initiate(
        devices[args["device"]], args["bundle"], b(args["plaintext"]), binding=binding_of(args)
    )
    sessions[args["session"]] = session
    return b64encode(message)


def op_respond(args: dict[str, Any]) -> Any:
    session, received = Session.respond_message(
        devices[args["device"]], b(args["message"]), binding=binding_of(args)
    )
    sessions[args["session"]] = session
    return {
        "plaintext": b64encode(received.plaintext),
        "franking_key": b64encode(received.franking_key),
        "commitment": b64encode(received.commitment),
    }


def op_encrypt(args: dict[str, Any]) -> Any:
    return b64encode(sessions[args["session"]].encrypt(b(args["plaintext"])))


def op_decrypt(args: dict[str, Any]) -> Any:
    received = sessions[args["session"]].decrypt_message(b(args["message"]))
    return {
        "plaintext": b64encode(received.plaintext),
        "franking_key": b64encode(received.franking_key),
        "commitment": b64encode(received.commitment),
    }


def op_session_state(args: dict[str, Any]) -> Any:
    return b64encode(sessions[args["session"]].to_bytes())


def op_session_load(args: dict[str, Any]) -> Any:
    sessions[args["session"]] = Session.from_bytes(b(args["state"]))
    return None


def op_group_create(args: dict[str, Any]) -> Any:
    rng = rng_of(args)
    group = (
        GroupSession.create(args["group_id"], rng=rng)
        if rng is not None
        else GroupSession.create(args["group_id"])
    )
    groups[args["group"]] = group
    return b64encode(group.distribution_message())


def op_group_process(args: dict[str, Any]) -> Any:
    groups[args["group"]].process_distribution(args["member"], b(args["message"]))
    return None


def op_group_encrypt(args: dict[str, Any]) -> Any:
    return b64encode(groups[args["group"]].encrypt(b(args["plaintext"])))


def op_group_decrypt(args: dict[str, Any]) -> Any:
    return b64encode(groups[args["group"]].decrypt(args["member"], b(args["message"])))


def op_group_rotate(args: dict[str, Any]) -> Any:
    return b64encode(groups[args["group"]].rotate())


def op_group_state(args: dict[str, Any]) -> Any:
    return b64encode(groups[args["group"]].to_bytes())


def op_group_load(args: dict[str, Any]) -> Any:
    groups[args["group"]] = GroupSession.from_bytes(b(args["state"]))
    return None


def op_verify_report(args: dict[str, Any]) -> Any:
    verify_report(b(args["plaintext"]), b(args["franking_key"]), b(args["commitment"]))
    return None


def op_safety_number(args: dict[str, Any]) -> Any:
    return safety_number(
        b(args["local_key"]), args["local_user_id"], b(args["remote_key"]), args["remote_user_id"]
    )


def op_ratchet_transcript(args: dict[str, Any]) -> Any:
    """Replay a ratchet.json-shaped transcript as scripts/gen_vectors.py does; the states after."""
    v = args["vector"]
    alice = Device.generate(deterministic_random(b"parley-vector-alice"))
    bob = Device.generate(deterministic_random(b"parley-vector-bob"))
    bob_ratchet = X25519KeyPair.from_private_bytes(bytes.fromhex(v["bob_ratchet_private"]))
    sk, ad = bytes.fromhex(v["sk"]), bytes.fromhex(v["ad"])
    parties = {
        "alice": Session(
            ratchet=RatchetState.initiator(
                sk,
                ad,
                bob_ratchet.public,
                deterministic_random(bytes.fromhex(v["alice_drbg_seed"])),
            ),
            local_identity=alice.identity,
            peer_identity=bob.identity,
            pending_section=None,
            initial_digest=None,
        ),
        "bob": Session(
            ratchet=RatchetState.responder(
                sk, ad, bob_ratchet, deterministic_random(bytes.fromhex(v["bob_drbg_seed"]))
            ),
            local_identity=bob.identity,
            peer_identity=alice.identity,
            pending_section=None,
            initial_digest=None,
        ),
    }
    messages: dict[int, bytes] = {}
    for step in v["steps"]:
        session = parties[step["by"]]
        if step["op"] == "encrypt":
            messages[step["index"]] = session.encrypt(bytes.fromhex(step["plaintext"]))
        else:
            try:
                session.decrypt(messages[step["index"]])
            except CryptoError:
                pass
    return {name: b64encode(s.to_bytes()) for name, s in parties.items()}


def op_bench_session(args: dict[str, Any]) -> Any:
    """Session.encrypt + Session.decrypt, 200-byte messages, best of ``rounds`` (npm run bench)."""
    import time

    alice, bob = Device.generate(), Device.generate()
    bundle = {
        "user_id": "bob",
        "device_id": 1,
        "identity": bob.public_identity(),
        "signed_prekey": bob.signed_prekey(),
        "one_time_prekey": bob.generate_one_time_prekeys(1)[0],
        "kem_prekey": dict(bob.generate_kem_prekeys(1)[0], last_resort=False),
    }
    ids = Binding("alice", 1, "bob", 1)
    a, first = Session.initiate(alice, bundle, binding=ids)
    b, _ = Session.respond(bob, first, binding=ids)
    a.decrypt(b.encrypt(b"ack"))
    message = b"a" * 200
    best = 0.0
    for _ in range(int(args.get("rounds", 5))):
        ops = 0
        start = time.perf_counter()
        end = start + float(args.get("duration", 0.3))
        while time.perf_counter() < end:
            b.decrypt(a.encrypt(message))
            ops += 1
        best = max(best, ops / (time.perf_counter() - start))
    return {"per_second": best, "micros_per_op": 1e6 / best}


OPS = {name[3:]: fn for name, fn in globals().items() if name.startswith("op_")}


def main() -> None:
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        answer: dict[str, Any] = {"id": request.get("id")}
        try:
            answer["result"] = OPS[request["op"]](request.get("args", {}))
            answer["ok"] = True
        except CryptoError as exc:
            answer.update(ok=False, error=type(exc).__name__, message=str(exc))
        except Exception as exc:  # a bug in the test, reported to the caller
            answer.update(ok=False, error=f"python:{type(exc).__name__}", message=repr(exc))
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
