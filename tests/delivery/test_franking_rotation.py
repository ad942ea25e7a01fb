"""Rotating the franking key in two steps, as docs/deployment.md ("Rotating the franking
key") tells operators to, with old and new delivery tasks side by side at each step of a
rolling deploy (no servers: the keys only).

Step 1 publishes the next key under a new id in ``PARLEY_FRANKING_RETIRED_KEYS`` (it
verifies and is published, it does not sign) while the old key still signs; step 2
makes it the signing key and moves the old one to the retired list. At every moment
each task verifies every tag, and publishes every tombstone key, that any other task
made. In one step (new key and id at once) an old task refuses the new tasks' tags.
"""

from __future__ import annotations

import base64

import pytest
from parley.crypto.primitives import ed25519_verify
from parley_contract.frames import tombstone_signed_bytes
from pydantic import SecretStr

from services.common.config import ConfigError, load_settings
from services.delivery.moderation_keys import ModerationKeys, TaggedFields, TagInvalid

K1, K2 = "first-franking-secret-" + "1" * 20, "second-franking-secret-" + "2" * 20
FIELDS = TaggedFields(
    commitment="Y29tbWl0", server_id="ab" * 16, sender="alice", sender_device=2,
    recipient="bob", sent_at=1_700_000_000_000, conversation="dm:alice:bob",
)  # fmt: skip


def task(kid: str, key: str, retired: str = "") -> ModerationKeys:
    """A delivery task's keys, from its settings as the environment gives them."""
    return ModerationKeys(
        load_settings(franking_key=key, franking_key_id=kid, franking_retired_keys=retired)
    )


def tombstone_verifies(signer: ModerationKeys, reader: ModerationKeys) -> bool:
    """A client that fetched ``reader``'s published keys verifies ``signer``'s tombstone."""
    kid, signature = signer.sign_tombstone(
        server_id="cd" * 16, sender="alice", conversation="dm:alice:bob", by="admin", at=7
    )
    published = {str(k["kid"]): str(k["public_key"]) for k in reader.public_keys()}
    if kid not in published:
        return False
    ed25519_verify(
        base64.urlsafe_b64decode(published[kid] + "="),
        base64.urlsafe_b64decode(signature + "=="),
        tombstone_signed_bytes(kid=kid, server_id="cd" * 16, sender="alice",
                               conversation="dm:alice:bob", by="admin", at=7),
    )  # fmt: skip
    return True


def agree(*tasks: ModerationKeys) -> None:
    """Every task verifies every other task's tags and tombstones."""
    for signer in tasks:
        for reader in tasks:
            assert reader.check_tag(signer.tag(FIELDS), FIELDS) == signer.kid
            assert tombstone_verifies(signer, reader)


def test_a_two_step_rotation_keeps_every_task_verifying_every_other() -> None:
    before = task("1", K1)
    step1 = task("1", K1, retired=f"2:{K2}")  # the next key published, not signing
    step2 = task("2", K2, retired=f"1:{K1}")  # the next key signs, the old one retired
    old_tag = before.tag(FIELDS)

    agree(before, step1)  # step 1 rolling out: both still sign with key 1
    assert step1.tag(FIELDS) == old_tag
    published = {k["kid"]: k["current"] for k in step1.public_keys()}
    assert published == {"1": True, "2": False}
    agree(step1, step2)  # step 2 rolling out: old tasks already know key 2
    assert step2.tag(FIELDS).startswith("2.")
    # Afterwards: tags and tombstones made before the rotation still verify.
    assert step2.check_tag(old_tag, FIELDS) == "1"
    assert tombstone_verifies(before, step2)


def test_in_one_step_the_old_tasks_refuse_the_new_ones_tags() -> None:
    """Why there are two steps: new key and id at once, a report of a message the new
    task tagged, answered by an old task during the deploy, is refused, and a client
    that fetches the keys from an old task drops the new task's tombstone."""
    before, after = task("1", K1), task("2", K2, retired=f"1:{K1}")
    with pytest.raises(TagInvalid):
        before.check_tag(after.tag(FIELDS), FIELDS)
    assert not tombstone_verifies(after, before)


def test_a_rotation_that_keeps_the_current_id_is_refused_not_silently_lossy() -> None:
    """As Terraform deployed it (PARLEY_FRANKING_KEY_ID never set, so always "1"), the
    documented rotation put the old key under the current id, where the new key
    replaced it: every older tag and tombstone stopped verifying, without a word."""
    with pytest.raises(ConfigError, match="current key id"):
        task("1", K2, retired=f"1:{K1}")
    # Settings made without validation (a test's model_copy) are refused too.
    base = load_settings(franking_key=K2, franking_key_id="2")
    for retired in (f"2:{K1}", f"1={K1}", "1:short"):
        unchecked = base.model_copy(update={"franking_retired_keys": SecretStr(retired)})
        with pytest.raises(ConfigError, match="PARLEY_FRANKING_RETIRED_KEYS"):
            ModerationKeys(unchecked)
