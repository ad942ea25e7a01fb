import subprocess
import sys

import pytest
from pydantic import SecretStr

from scripts.stack import ROOT
from services.common.config import ConfigError, load_settings


def test_defaults_describe_the_embedded_stack() -> None:
    s = load_settings()
    assert s.mongo_url == "mongodb://127.0.0.1:27017"
    assert s.kafka_bootstrap == "127.0.0.1:9092"
    assert s.redis_url.startswith("redis://127.0.0.1:6379")


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_KAFKA_PARTITIONS", "8")
    assert load_settings().kafka_partitions == 8


def test_bad_value_names_the_variable_without_echoing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_KAFKA_PARTITIONS", "lots-9f3a")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "PARLEY_KAFKA_PARTITIONS" in str(info.value)
    assert "lots-9f3a" not in str(info.value)


def test_a_replica_wait_must_end_before_the_socket_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A WAIT still owed when the socket times out would be sent again by redis-py's
    retry, never answered short: the setting is refused, naming both."""
    monkeypatch.setenv("PARLEY_REDIS_WAIT_REPLICAS", "1")
    monkeypatch.setenv("PARLEY_REDIS_WAIT_TIMEOUT_MS", "5000")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "redis_wait_timeout_ms" in str(info.value)
    assert "dependency_timeout_ms" in str(info.value)
    monkeypatch.setenv("PARLEY_REDIS_WAIT_TIMEOUT_MS", "4999")
    assert load_settings().redis_wait_timeout_ms == 4999


def test_presence_must_be_refreshed_within_its_lifetime(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refreshed less often than it lapses, a connected user's presence comes and goes
    (no live pushes, mention e-mails to users who are online): refused, naming both."""
    monkeypatch.setenv("PARLEY_PRESENCE_TTL_S", "15")
    with pytest.raises(ConfigError) as info:
        load_settings()  # the default refresh, 20 s
    assert "presence_refresh_s" in str(info.value) and "presence_ttl_s" in str(info.value)
    monkeypatch.setenv("PARLEY_PRESENCE_REFRESH_S", "5")
    assert load_settings().presence_ttl_s == 15


def test_an_empty_franking_key_is_unset_and_a_short_one_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Empty (a blank export passed through): unset, so development draws a random key
    and production refuses to start, never keys derived from nothing."""
    monkeypatch.setenv("PARLEY_FRANKING_KEY", "")
    assert load_settings().franking_key is None
    monkeypatch.setenv("PARLEY_FRANKING_KEY", "short-9c1e")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "PARLEY_FRANKING_KEY" in str(info.value) and "short-9c1e" not in str(info.value)
    monkeypatch.setenv("PARLEY_FRANKING_KEY", "k" * 32)
    franking = load_settings().franking_key
    assert franking is not None and franking.get_secret_value() == "k" * 32


def test_secrets_never_print() -> None:
    s = load_settings(smtp_password=SecretStr("hunter2-secret"))
    assert "hunter2-secret" not in repr(s)
    assert "hunter2-secret" not in str(s)


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"PARLEY_PORT": "eighty"}, "PARLEY_PORT"),
        ({"PARLEY_PORT": "8999", "PARLEY_LOG_LEVEL": "LOUD"}, "PARLEY_LOG_LEVEL"),
        ({}, "PARLEY_PORT is required"),
        ({"PARLEY_PORT": "8999"}, "PARLEY_KEY_ENCRYPTION_SECRET is required"),
        ({"PARLEY_PORT": "8999", "PARLEY_ENV": "staging"}, "PARLEY_ENV"),
        # The auth service's own settings (a traceback echoing the value, exit 1, before
        # 2026-12-08), a URL that does not parse, and infinity.
        (
            {"PARLEY_PORT": "8999", "PARLEY_ENV": "development", "PARLEY_ARGON2_TIME_COST": "abc"},
            "PARLEY_ARGON2_TIME_COST",
        ),
        (
            {"PARLEY_PORT": "8999", "PARLEY_ENV": "development", "PARLEY_LIMIT_LOGIN_IP": "lots"},
            "PARLEY_LIMIT_LOGIN_IP",
        ),
        ({"PARLEY_PORT": "8999", "PARLEY_REDIS_URL": "127.0.0.1:6379"}, "PARLEY_REDIS_URL"),
        ({"PARLEY_PORT": "8999", "PARLEY_REDIS_URL": "redis://h:notaport/0"}, "PARLEY_REDIS_URL"),
        ({"PARLEY_PORT": "8999", "PARLEY_MONGO_URL": "mongodb://h:notaport"}, "PARLEY_MONGO_URL"),
        ({"PARLEY_PORT": "8999", "PARLEY_WS_SENDS_PER_S": "inf"}, "PARLEY_WS_SENDS_PER_S"),
        # A TLS file the URL names, missing: pymongo opens it while parsing (a traceback).
        (
            {
                "PARLEY_PORT": "8999",
                "PARLEY_MONGO_URL": "mongodb://a:S3cretPw@db:27017/"
                "?tls=true&tlsCAFile=/nonexistent/ca.pem",
            },
            "PARLEY_MONGO_URL",
        ),
    ],
)
def test_service_refuses_bad_config_with_one_line(env: dict[str, str], needle: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "services.auth"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    out = (proc.stdout + proc.stderr).strip()
    assert needle in out
    assert len(out.splitlines()) == 1, out
    assert "Traceback" not in out
    for name, value in env.items():  # the value is never echoed
        if name not in ("PATH", "PARLEY_PORT", "PARLEY_ENV"):
            assert value not in out, out


def test_delivery_refuses_to_start_without_a_franking_key_outside_development() -> None:
    """Each process would draw its own: with several delivery processes, or after a
    restart, reports would not verify (the embedded stack and Terraform give it one)."""
    env = {"PATH": "/usr/bin:/bin", "PARLEY_PORT": "8999"}
    proc = subprocess.run(
        [sys.executable, "-m", "services.delivery"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    out = (proc.stdout + proc.stderr).strip()
    assert "PARLEY_FRANKING_KEY is required" in out and len(out.splitlines()) == 1, out


def test_a_mongodb_url_with_an_option_the_driver_does_not_know_is_accepted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The driver only warns about such an option; refusing it stopped every service
    whose URL carried one (an old pymongo 3 option, a vendor's)."""
    monkeypatch.setenv("PARLEY_MONGO_URL", "mongodb://admin:pw@db:27017/?ssl_cert_reqs=CERT_NONE")
    with pytest.warns(UserWarning):
        assert load_settings().mongo_url.endswith("ssl_cert_reqs=CERT_NONE")
