"""The services reach a broker that asks for TLS and SASL, as MSK does (Terraform gives
every task SASL_SSL with SCRAM-SHA-512): the embedded broker with
``--sasl-users-file`` and ``--tls-cert``, the services' own client factories
(services/common/clients.py ``kafka_security``), real connections."""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
from pathlib import Path

import pytest
from aiokafka.errors import KafkaError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import SecretStr

from services.common.clients import ensure_topics, kafka_consumer, kafka_producer, started
from services.common.config import ConfigError, Settings, load_settings
from tests.embedded.conftest import BrokerFactory

USER, PASSWORD = "parley", "s3cret-" + "p4ss"


def _tls_files(d: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (its own CA: the clients trust it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "embedded kafka test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
        ), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = d / "broker.pem", d / "broker.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))  # fmt: skip
    return cert_path, key_path


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    path = tmp_path / "users"
    path.write_text(f"# test users\n{USER}:{PASSWORD}\nother:another-password\n")
    return path


def _settings(bootstrap: str, **kw: object) -> Settings:
    return load_settings(kafka_bootstrap=bootstrap, dependency_timeout_ms=5000, **kw)


async def _round_trip(settings: Settings, topic: str) -> bytes:
    """Create the topic, produce one record and read it back, as the services do."""
    await ensure_topics(settings, [topic])
    producer = await started(kafka_producer(settings))
    try:
        await producer.send_and_wait(topic, b"sealed", key=b"k")
    finally:
        await producer.stop()
    consumer = await started(kafka_consumer(settings, [topic], f"g-{secrets.token_hex(3)}"))
    try:
        record = await consumer.getone()
    finally:
        await consumer.stop()
    return bytes(record.value or b"")


async def test_the_services_clients_speak_sasl_ssl_scram_sha_512_as_on_msk(
    make_broker: BrokerFactory, users_file: Path, tmp_path: Path, topic: str
) -> None:
    cert, key = _tls_files(tmp_path)
    broker = make_broker(
        "--sasl-users-file", str(users_file), "--tls-cert", str(cert), "--tls-key", str(key)
    )
    settings = _settings(
        broker.bootstrap, kafka_security_protocol="SASL_SSL",
        kafka_sasl_username=USER, kafka_sasl_password=SecretStr(PASSWORD),
        kafka_ssl_cafile=str(cert),
    )  # fmt: skip
    assert await _round_trip(settings, topic) == b"sealed"


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "PLAIN"])
async def test_other_mechanisms_over_sasl_plaintext(
    make_broker: BrokerFactory, users_file: Path, topic: str, mechanism: str
) -> None:
    broker = make_broker("--sasl-users-file", str(users_file))
    settings = _settings(
        broker.bootstrap, kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism=mechanism, kafka_sasl_username=USER,
        kafka_sasl_password=SecretStr(PASSWORD),
    )  # fmt: skip
    assert await _round_trip(settings, topic) == b"sealed"


@pytest.mark.parametrize(
    "client",
    ["wrong password", "unknown user", "no SASL", "no TLS"],
)
async def test_a_client_that_cannot_authenticate_gets_nothing_and_changes_nothing(
    make_broker: BrokerFactory, users_file: Path, tmp_path: Path, topic: str, client: str
) -> None:
    cert, key = _tls_files(tmp_path)
    broker = make_broker(
        "--sasl-users-file", str(users_file), "--tls-cert", str(cert), "--tls-key", str(key)
    )
    good = {
        "kafka_security_protocol": "SASL_SSL", "kafka_sasl_username": USER,
        "kafka_sasl_password": SecretStr(PASSWORD), "kafka_ssl_cafile": str(cert),
    }  # fmt: skip
    bad: dict[str, object] = {
        "wrong password": {**good, "kafka_sasl_password": SecretStr("not-the-password")},
        "unknown user": {**good, "kafka_sasl_username": "mallory"},
        "no SASL": {"kafka_security_protocol": "SSL", "kafka_ssl_cafile": str(cert)},
        "no TLS": {**good, "kafka_security_protocol": "SASL_PLAINTEXT"},
    }[client]
    settings = _settings(broker.bootstrap, **bad)  # type: ignore[arg-type]
    with pytest.raises(KafkaError):
        await ensure_topics(settings, [topic])
    with pytest.raises(KafkaError):
        await started(kafka_producer(settings, request_timeout_ms=3000))
    # Nothing was created: for a client that authenticates, the topic is still missing.
    assert await ensure_topics(_settings(broker.bootstrap, **good), [topic]) == [topic]  # type: ignore[arg-type]


def test_a_sasl_protocol_without_credentials_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(kafka_security_protocol="SASL_SSL", kafka_sasl_username=USER)
    assert "PARLEY_KAFKA_SASL_PASSWORD" in str(info.value)
    assert PASSWORD not in str(info.value)
    # PLAINTEXT and SSL need none.
    assert load_settings(kafka_security_protocol="SSL").kafka_sasl_password is None
