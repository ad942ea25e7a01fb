"""SASL authentication on a connection (``--sasl-users-file``): what MSK and most
managed Kafka services ask of a client, so that the services' SASL_SSL settings are
tested against a real Kafka-protocol server (docs/embedded-kafka.md, "SASL and TLS").

A connection answers only ApiVersions, SaslHandshake (v1) and SaslAuthenticate
(v0-1) until it has authenticated; anything else before that, or after a failed
authentication, closes it (a real broker does the same). Mechanisms: SCRAM-SHA-512,
SCRAM-SHA-256 (the server side is ``scramp``'s) and PLAIN. Users and passwords
come from a file of ``user:password`` lines, read at start.

Without ``--sasl-users-file`` the two SASL APIs are advertised but answer that no
mechanism is enabled (a client configured for SASL learns it at once).
"""

from __future__ import annotations

import hmac
import io
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scramp import ScramException, ScramMechanism

from embedded.kafka import protocol
from embedded.kafka.protocol import ProtocolError, encode

if TYPE_CHECKING:
    from embedded.kafka.connection import Dispatch
    from embedded.kafka.server import Broker, Request

SCRAM = ("SCRAM-SHA-512", "SCRAM-SHA-256")
MECHANISMS = (*SCRAM, "PLAIN")
SCRAM_ITERATIONS = 4096  # Kafka's minimum for SCRAM credentials

UNSUPPORTED_SASL_MECHANISM = 33
ILLEGAL_SASL_STATE = 34
SASL_AUTHENTICATION_FAILED = 58


def read_users(path: Path) -> dict[str, str]:
    """``user:password`` per line (blank lines and ``#`` comments skipped)."""
    users: dict[str, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user or not password:
            raise ValueError(f"{path}:{n}: expected user:password")
        users[user] = password
    return users


class Credentials:
    """Every user's password, and the SCRAM credentials made from it for each mechanism
    (what a broker stores instead of the password)."""

    def __init__(self, users: Mapping[str, str]) -> None:
        self.passwords = dict(users)
        self.mechanisms = {name: ScramMechanism(name) for name in SCRAM}
        self.scram = {
            name: {
                u: m.make_auth_info(p, iteration_count=SCRAM_ITERATIONS) for u, p in users.items()
            }
            for name, m in self.mechanisms.items()
        }

    def plain(self, payload: bytes) -> str | None:
        """The user a PLAIN message (``authzid \\0 user \\0 password``) proves, or None."""
        parts = payload.split(b"\0")
        if len(parts) != 3:
            return None
        authzid, user, password = (p.decode("utf-8", "replace") for p in parts)
        known = self.passwords.get(user)
        if known is None or authzid not in ("", user):
            return None
        return user if hmac.compare_digest(known.encode(), password.encode()) else None


class SaslGate:
    """One connection's dispatch: authentication first, then the broker's."""

    def __init__(self, dispatch: Dispatch, credentials: Credentials) -> None:
        self.dispatch = dispatch
        self.credentials = credentials
        self.mechanism: str | None = None
        self.scram: tuple[Any, str] | None = None  # scramp's server and the user, between steps
        self.user: str | None = None
        self.failed = False

    def __call__(self, frame: bytes, host: str) -> Any:
        if self.user is not None:
            return self.dispatch(frame, host)
        api_key, version, correlation_id, _, body_at = protocol.parse_header(frame)
        if self.failed:
            raise ProtocolError("request after a failed SASL authentication")
        if api_key == protocol.API_VERSIONS:
            return self.dispatch(frame, host)
        if api_key not in (protocol.SASL_HANDSHAKE, protocol.SASL_AUTHENTICATE):
            raise ProtocolError(f"api key {api_key} before SASL authentication")
        versions = protocol.VERSIONS[api_key]
        if version not in versions:
            raise ProtocolError(f"api key {api_key} version {version} is not supported")
        request_class, response_class = versions[version]
        stream = io.BytesIO(frame)
        stream.seek(body_at)
        try:
            body = request_class.decode(stream)
        except Exception as exc:
            raise ProtocolError(f"undecodable SASL request: {exc}") from None
        if api_key == protocol.SASL_HANDSHAKE:
            answer = self._handshake(str(body.mechanism))
        else:
            answer = self._authenticate(bytes(body.sasl_auth_bytes))
        return protocol.frame_response(correlation_id, encode(response_class, answer))

    def _handshake(self, mechanism: str) -> dict[str, Any]:
        if self.mechanism is not None:
            return {"error_code": ILLEGAL_SASL_STATE, "enabled_mechanisms": list(MECHANISMS)}
        if mechanism not in MECHANISMS:
            return {
                "error_code": UNSUPPORTED_SASL_MECHANISM,
                "enabled_mechanisms": list(MECHANISMS),
            }
        self.mechanism = mechanism
        return {"error_code": 0, "enabled_mechanisms": list(MECHANISMS)}

    def _authenticate(self, payload: bytes) -> dict[str, Any]:
        mechanism = self.mechanism
        if mechanism is None:
            return _refused(ILLEGAL_SASL_STATE, "SaslAuthenticate before SaslHandshake.")
        if mechanism == "PLAIN":
            self.user = self.credentials.plain(payload)
            if self.user is None:
                return self._fail()
            return {"error_code": 0, "sasl_auth_bytes": b"", "session_lifetime_ms": 0}
        try:
            text = payload.decode("utf-8")
            if self.scram is None:  # client-first: the server's nonce and salt
                known = self.credentials.scram[mechanism]
                named: list[str] = []

                def credentials_of(user: str) -> Any:
                    named.append(user)
                    return known[user]

                server = self.credentials.mechanisms[mechanism].make_server(credentials_of)
                server.set_client_first(text)
                reply = server.get_server_first()
                self.scram = (server, named[-1])
            else:  # client-final: its proof checked, the server's signature
                server, user = self.scram
                server.set_client_final(text)
                reply = server.get_server_final()
                self.user = user
        except (ScramException, KeyError, UnicodeDecodeError):
            return self._fail()
        return {"error_code": 0, "sasl_auth_bytes": reply.encode(), "session_lifetime_ms": 0}

    def _fail(self) -> dict[str, Any]:
        self.failed = True
        return _refused(SASL_AUTHENTICATION_FAILED, "Authentication failed: invalid credentials.")


def _refused(code: int, message: str) -> dict[str, Any]:
    return {"error_code": code, "error_message": message, "sasl_auth_bytes": b"",
            "session_lifetime_ms": 0}  # fmt: skip


# The broker's own handlers of the two APIs: reached only without --sasl-users-file
# (or after authentication), where there is nothing to negotiate.
def handshake_disabled(broker: Broker, req: Request) -> bytes:
    enabled = list(MECHANISMS) if broker.credentials is not None else []
    code = ILLEGAL_SASL_STATE if broker.credentials is not None else UNSUPPORTED_SASL_MECHANISM
    return encode(req.response_class, {"error_code": code, "enabled_mechanisms": enabled})


def authenticate_disabled(broker: Broker, req: Request) -> bytes:
    return encode(req.response_class, _refused(ILLEGAL_SASL_STATE, "No SASL authentication here."))
