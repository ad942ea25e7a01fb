"""The wire contract's model library, chosen by measurement: msgspec vs pydantic.

Every message costs the gateway and delivery a handful of parse/build steps;
this times each step with the same shapes in three ways, in one process:

- ``msgspec``: the contract as it is (``parley_contract``: msgspec Structs);
- ``pydantic``: the same models in pydantic v2 (what 0.1's gateway used for
  client frames), ``model_validate_json`` / ``model_dump_json``;
- ``dicts``: no models, ``orjson`` and hand-written checks (0.1's envelopes).

Steps (per message): the gateway parses a ``send`` frame and encodes the Kafka
envelope; delivery parses the envelope and encodes the routed ``message``
frame; the gateway encodes ``accepted``.

    .venv/bin/python -m loadtest.bench_contract [--n 200000]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

import orjson
from parley_contract import envelopes as ce
from parley_contract import frames as cf
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

SEND = orjson.dumps(
    {"op": "send", "id": "m-000123", "to": "u" + "7" * 23,
     "copies": [{"user": "u" + "7" * 23, "device": 1, "body": "A" * 300,  # bytes [2:34]: 0
                 "commitment": "A" * 43}]}
)  # fmt: skip

# -- pydantic equivalents -----------------------------------------------------------------
B64 = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]*$")]
Cid = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[\x21-\x7e]+$")]
Uid = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


class PCopy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    user: Uid
    device: Annotated[int, Field(ge=1, le=2**31 - 1)]
    body: Annotated[B64, StringConstraints(min_length=1)]
    commitment: Annotated[B64, StringConstraints(max_length=128)] | None = None


class PSend(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    op: Literal["send"]
    id: Cid
    to: Uid
    copies: Annotated[list[PCopy], Field(min_length=1, max_length=32)]


class PEnvelope(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True)
    v: int = 2
    kind: Literal["message"] = "message"
    server_id: str
    to: Uid
    to_device: int
    from_: Uid = Field(alias="from")
    from_device: int
    client_id: Cid
    conversation: str | None = None
    sent_at: int | None = None
    from_sid: str | None = None
    body: B64
    commitment: B64 | None = None


class PMessage(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True)
    op: Literal["message"] = "message"
    seq: int
    server_id: str
    from_: str = Field(alias="from")
    from_device: int
    body: str
    conversation: str | None = None
    commitment: str | None = None
    sent_at: int | None = None
    kind: Literal["message"] = "message"


class PRouted(BaseModel):
    to: str
    device: int | None = None
    op: str = "message"
    frame: PMessage


class PAccepted(BaseModel):
    op: Literal["accepted"] = "accepted"
    id: str
    server_id: str
    conversation: str


def steps_msgspec() -> dict[str, Callable[[], Any]]:
    send = cf.decode_client_frame(SEND)
    assert isinstance(send, cf.Send)
    copy = send.copies[0]
    env = ce.message_envelope(
        sender="u" + "1" * 23, sender_device=1, sender_sid="sid", peer=send.to, user=copy.user,
        device=copy.device, client_id=send.id, body=copy.body, commitment=copy.commitment,
    )  # fmt: skip
    env_bytes = ce.encode(env)

    def parse_send() -> Any:
        return cf.decode_client_frame(SEND)

    def build_envelope() -> Any:
        return ce.encode(ce.message_envelope(
            sender="u" + "1" * 23, sender_device=1, sender_sid="sid", peer=send.to,
            user=copy.user, device=copy.device, client_id=send.id, body=copy.body,
            commitment=copy.commitment))  # fmt: skip

    def parse_envelope() -> Any:
        return ce.decode_envelope(env_bytes)

    def build_routed() -> Any:
        return cf.encode(ce.routed(env.to, env.to_device, ce.item_frame(env, 42)))

    def build_accepted() -> Any:
        return cf.encode(cf.Accepted(id=send.id, server_id=env.server_id,
                                     conversation=env.conversation or ""))  # fmt: skip

    return {"parse send": parse_send, "build envelope": build_envelope,
            "parse envelope": parse_envelope, "build routed message": build_routed,
            "build accepted": build_accepted}  # fmt: skip


def steps_pydantic() -> dict[str, Callable[[], Any]]:
    send = PSend.model_validate_json(SEND)
    copy = send.copies[0]
    env = PEnvelope(server_id=ce.new_server_id(), to=copy.user, to_device=copy.device,
                    from_="u" + "1" * 23, from_device=1, client_id=send.id,
                    conversation="dm:a:b", sent_at=ce.now_ms(), from_sid="sid",
                    body=copy.body, commitment=copy.commitment)  # fmt: skip
    env_bytes = env.model_dump_json(by_alias=True).encode()

    def parse_send() -> Any:
        return PSend.model_validate_json(SEND)

    def build_envelope() -> Any:
        return PEnvelope(
            server_id=ce.message_server_id("u" + "1" * 23, send.id),
            to=copy.user,
            to_device=copy.device,
            from_="u" + "1" * 23,
            from_device=1,
            client_id=send.id,
            conversation=ce.conversation_id("u" + "1" * 23, send.to),
            sent_at=ce.now_ms(),
            from_sid="sid",
            body=copy.body,
            commitment=copy.commitment,
        ).model_dump_json(by_alias=True)

    def parse_envelope() -> Any:
        return PEnvelope.model_validate_json(env_bytes)

    def build_routed() -> Any:
        frame = PMessage(seq=42, server_id=env.server_id, from_=env.from_,
                         from_device=env.from_device, body=env.body,
                         conversation=env.conversation, commitment=env.commitment,
                         sent_at=env.sent_at)  # fmt: skip
        return PRouted(to=env.to, device=env.to_device, frame=frame).model_dump_json(by_alias=True)

    def build_accepted() -> Any:
        return PAccepted(id=send.id, server_id=env.server_id,
                         conversation=env.conversation or "").model_dump_json()  # fmt: skip

    return {"parse send": parse_send, "build envelope": build_envelope,
            "parse envelope": parse_envelope, "build routed message": build_routed,
            "build accepted": build_accepted}  # fmt: skip


def steps_dicts() -> dict[str, Callable[[], Any]]:
    env = {"v": 2, "kind": "message", "server_id": ce.new_server_id(), "to": "u" + "7" * 23,
           "to_device": 1, "from": "u" + "1" * 23, "from_device": 1,
           "client_id": "m-000123", "conversation": "dm:a:b",
           "sent_at": ce.now_ms(), "from_sid": "sid", "body": "A" * 300,
           "commitment": "A" * 43}  # fmt: skip
    env_bytes = orjson.dumps(env)

    def parse_send() -> Any:
        data = orjson.loads(SEND)
        if not (isinstance(data, dict) and data.get("op") == "send"):
            raise ValueError
        for k in ("id", "to"):
            if not isinstance(data.get(k), str):
                raise ValueError
        copies = data.get("copies")
        if not isinstance(copies, list) or not 1 <= len(copies) <= 32:
            raise ValueError
        for c in copies:
            if not (
                isinstance(c, dict)
                and isinstance(c.get("user"), str)
                and isinstance(c.get("device"), int)
                and isinstance(c.get("body"), str)
            ):
                raise ValueError
        return data

    def build_envelope() -> Any:
        return orjson.dumps({**env, "server_id": ce.new_server_id(), "sent_at": ce.now_ms()})

    def parse_envelope() -> Any:
        data = orjson.loads(env_bytes)
        if not all(isinstance(data.get(k), str) for k in ("server_id", "from", "to", "body")):
            raise ValueError
        return data

    def build_routed() -> Any:
        frame = {
            "op": "message", "seq": 42, "server_id": env["server_id"], "from": env["from"],
            "from_device": env["from_device"], "body": env["body"],
            "conversation": env["conversation"],
            "commitment": env["commitment"], "sent_at": env["sent_at"], "kind": "message",
        }  # fmt: skip
        return orjson.dumps(
            {"to": env["to"], "device": env["to_device"], "op": "message", "frame": frame}
        )

    def build_accepted() -> Any:
        return orjson.dumps({"op": "accepted", "id": "m-000123", "server_id": env["server_id"],
                             "conversation": env["conversation"]})  # fmt: skip

    return {"parse send": parse_send, "build envelope": build_envelope,
            "parse envelope": parse_envelope, "build routed message": build_routed,
            "build accepted": build_accepted}  # fmt: skip


def per_second(fn: Callable[[], Any], n: int) -> float:
    fn()
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = max(best, n / (time.perf_counter() - t0))
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=100_000)
    args = p.parse_args()
    kinds = {"msgspec": steps_msgspec(), "pydantic": steps_pydantic(), "dicts": steps_dicts()}
    print(f"{'step':24}" + "".join(f"{k:>14}" for k in kinds) + "   (operations/s)")
    totals = dict.fromkeys(kinds, 0.0)
    for step in kinds["msgspec"]:
        rates = {k: per_second(steps[step], args.n) for k, steps in kinds.items()}
        for k, r in rates.items():
            totals[k] += 1e6 / r
        print(f"{step:24}" + "".join(f"{rates[k]:>14,.0f}" for k in kinds))
    print(f"{'µs per message (sum)':24}" + "".join(f"{totals[k]:>14.2f}" for k in kinds))


if __name__ == "__main__":
    main()
