"""Terraform gives the delivery tasks every franking setting from the one secret version
(deploy/terraform/stack; docs/deployment.md, "Rotating the franking key").

``PARLEY_FRANKING_KEY_ID`` was set nowhere, so it was always ``"1"``: an operator who
rotated as documented (a new secret in ``key``, the old one as ``1:<old>`` in
``retired``) had the current id replace the retired entry. The key id now comes from
the secret's ``kid``, beside the key, so a task never reads a new key under the old id.
"""

from __future__ import annotations

import re

from services.common.config import Settings
from tests.deploy.test_terraform_structure import STACK, load

FRANKING_SETTINGS = {
    f"PARLEY_{name.upper()}" for name in Settings.model_fields if name.startswith("franking_")
}


def test_every_franking_setting_comes_from_the_franking_secret() -> None:
    stack = load(STACK)
    catalog = stack["locals"]["secret_catalog"]
    assert FRANKING_SETTINGS == {
        "PARLEY_FRANKING_KEY", "PARLEY_FRANKING_KEY_ID", "PARLEY_FRANKING_RETIRED_KEYS",
    }  # fmt: skip
    fields = {}
    for env in FRANKING_SETTINGS:
        entry = catalog[env]
        assert entry["needs"] == "franking_key", env
        m = re.fullmatch(
            r"\$\{aws_secretsmanager_secret\.franking\.arn\}:([a-z]+)::", entry["value_from"]
        )
        assert m, (env, entry["value_from"])
        fields[env] = m.group(1)
    assert fields == {
        "PARLEY_FRANKING_KEY": "key",
        "PARLEY_FRANKING_KEY_ID": "kid",
        "PARLEY_FRANKING_RETIRED_KEYS": "retired",
    }
    # The first secret version has each of those JSON keys (ECS refuses to start a task
    # whose secret lacks one), and its key id is a valid one.
    version = stack["resource"]["aws_secretsmanager_secret_version"]["franking"]
    written = version["secret_string"]
    for field in fields.values():
        assert re.search(rf"\b{field}\s*=", written), (field, written)
    kid = re.search(r'\bkid\s*=\s*"?([^",}\s]+)', written)
    assert kid and Settings(franking_key_id=kid.group(1)).franking_key_id == kid.group(1)
