"""The franking key settings are checked at start (docs/deployment.md, "Rotating the
franking key"): a retired entry that is malformed, too short, given twice or under the
current key id is refused with one line naming the variable, never the secret.

Before, each of these started: ``1=<old>`` and ``1 : <old>`` were dropped or kept under
the id ``"1 "``, a secret of a few characters was taken, and ``1:<old>`` beside the
current id ``1`` (the rotation as Terraform deployed it, where the key id was never
set) was silently replaced by the current key: every older report and tombstone
stopped verifying.
"""

from __future__ import annotations

import pytest

from services.common.config import ConfigError, load_settings

OLD = "old-franking-secret-9c1e" + "o" * 16  # 40 characters
NEW = "n" * 40


@pytest.mark.parametrize(
    ("retired", "current", "problem"),
    [
        (f"1:{OLD}", "1", "current key id '1'"),  # as deployed: PARLEY_FRANKING_KEY_ID unset
        (f"1={OLD}", "2", "entry 1 is not <id>:<secret>"),
        (f"1 : {OLD}", "2", "entry 1 is not <id>:<secret>"),
        (f"1.x:{OLD}", "2", "entry 1 is not <id>:<secret>"),  # a tag is "<kid>.<mac>"
        (f"{OLD}", "2", "entry 1 is not <id>:<secret>"),
        (f"0:{'z' * 40}, 1:short", "2", "entry 2 (id '1'): the secret must be at least 32"),
        (f"1: {OLD}", "2", "entry 1 (id '1'): the secret must be at least 32"),
        (f"1:{OLD},1:{'p' * 40}", "2", "entry 2: key id '1' is given twice"),
    ],
)
def test_a_bad_retired_key_is_refused_at_start_naming_the_entry_not_the_secret(
    monkeypatch: pytest.MonkeyPatch, retired: str, current: str, problem: str
) -> None:
    monkeypatch.setenv("PARLEY_FRANKING_KEY", NEW)
    monkeypatch.setenv("PARLEY_FRANKING_KEY_ID", current)
    monkeypatch.setenv("PARLEY_FRANKING_RETIRED_KEYS", retired)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith("PARLEY_FRANKING_RETIRED_KEYS: ") and problem in message, message
    assert "9c1e" not in message and "short" not in message and "zzzz" not in message


def test_well_formed_retired_keys_are_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_FRANKING_KEY", NEW)
    monkeypatch.setenv("PARLEY_FRANKING_KEY_ID", "2026-b")
    for retired in (f"1:{OLD}", f" 1:{OLD} , 2026-a:{'a' * 32},", f"x_1:{OLD}:with:colons"):
        monkeypatch.setenv("PARLEY_FRANKING_RETIRED_KEYS", retired)
        taken = load_settings().franking_retired_keys
        assert taken is not None and taken.get_secret_value() == retired
    # Empty (Terraform's first secret version: "retired": ""): none.
    monkeypatch.setenv("PARLEY_FRANKING_RETIRED_KEYS", "")
    assert load_settings().franking_retired_keys is None


def test_the_current_id_is_refused_among_the_retired_also_without_a_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In development (no key: one drawn per process) the clash is the same mistake."""
    monkeypatch.setenv("PARLEY_ENV", "development")
    monkeypatch.setenv("PARLEY_FRANKING_RETIRED_KEYS", f"1:{OLD}")
    with pytest.raises(ConfigError, match="current key id '1'"):
        load_settings()


def test_the_report_limit_is_a_count_per_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().limit_reports == "30/3600"
    monkeypatch.setenv("PARLEY_LIMIT_REPORTS", "5/60")
    assert load_settings().limit_reports == "5/60"
    for bad in ("0/60", "5", "five/60", "5/0"):
        monkeypatch.setenv("PARLEY_LIMIT_REPORTS", bad)
        with pytest.raises(ConfigError, match="PARLEY_LIMIT_REPORTS"):
            load_settings()
