"""The server's half of franking and the tombstone key (no servers): tags bind every
field and the recipient, keys rotate by id, commitments open as the client makes them,
and clients verify tombstones with the published key (docs/crypto.md)."""

from __future__ import annotations

import base64
import secrets
from dataclasses import replace

import pytest
from parley.crypto import franking
from parley.crypto.errors import InvalidSignature
from parley.crypto.primitives import ed25519_verify
from parley_contract.frames import tombstone_signed_bytes

from services.common.config import load_settings
from services.delivery.moderation_keys import (
    CommitmentMismatch,
    ModerationKeys,
    TaggedFields,
    TagInvalid,
    open_commitment,
)

FIELDS = TaggedFields(
    commitment="Y29tbWl0", server_id="ab" * 16, sender="alice", sender_device=2,
    recipient="bob", sent_at=1_700_000_000_000, conversation="dm:alice:bob",
)  # fmt: skip


def keys(kid: str = "1", secret: str = "s" * 32, retired: str | None = None) -> ModerationKeys:
    return ModerationKeys(
        load_settings(franking_key=secret, franking_key_id=kid, franking_retired_keys=retired)
    )


def test_a_tag_verifies_only_for_the_fields_it_was_made_for() -> None:
    k = keys()
    tag = k.tag(FIELDS)
    assert tag.startswith("1.") and k.check_tag(tag, FIELDS) == "1"
    changes = [
        {"commitment": "Y29tbWl1"}, {"server_id": "cd" * 16}, {"sender": "mallory"},
        {"sender_device": 3}, {"recipient": "carol"}, {"sent_at": FIELDS.sent_at + 1},
        {"conversation": "dm:alice:carol"}, {"conversation": None},
    ]  # fmt: skip
    for change in changes:
        with pytest.raises(TagInvalid):
            k.check_tag(tag, replace(FIELDS, **change))  # type: ignore[arg-type]
    # Fields cannot slide into each other (each is length-prefixed).
    with pytest.raises(TagInvalid):
        k.check_tag(tag, replace(FIELDS, sender="alic", recipient="ebob"))
    for bad in ("2." + tag[2:], tag + "A", "1.!!", "nodot", keys(secret="t" * 32).tag(FIELDS)):
        with pytest.raises(TagInvalid):
            k.check_tag(bad, FIELDS)


def test_a_rooms_tagger_makes_each_members_tag() -> None:
    k = keys()
    tag = k.tagger(replace(FIELDS, recipient="ignored"))
    for member in ("bob", "carol", "b", "x" * 64):
        made = tag(member)
        assert made == k.tag(replace(FIELDS, recipient=member))
        assert k.check_tag(made, replace(FIELDS, recipient=member)) == "1"
    assert tag("bob") == tag("bob") != tag("carol")  # the shared state is not consumed


def test_keys_rotate_by_id_and_retired_ones_still_verify() -> None:
    old = keys("2025", "old-secret-" * 3)
    new = keys("2026", "new-secret-" * 3, retired="2025:" + "old-secret-" * 3)
    tag = old.tag(FIELDS)
    assert new.check_tag(tag, FIELDS) == "2025"
    assert new.tag(FIELDS).startswith("2026.")
    published = {k["kid"]: k for k in new.public_keys()}
    assert set(published) == {"2025", "2026"} and published["2026"]["current"] is True
    with pytest.raises(TagInvalid):
        keys("2026", "new-secret-" * 3).check_tag(tag, FIELDS)  # retired and dropped


def test_a_commitment_opens_exactly_as_the_client_made_it() -> None:
    fk = secrets.token_bytes(32)
    text = "the plaintext ✓".encode()
    commitment = franking.commit(text, fk)
    open_commitment(text, fk, commitment)
    franking.verify_report(text, fk, commitment)
    for args in ((text + b" ", fk, commitment), (text, secrets.token_bytes(32), commitment),
                 (text, fk[:31], commitment), (text, fk, commitment[:31])):  # fmt: skip
        with pytest.raises(CommitmentMismatch):
            open_commitment(*args)


def test_clients_verify_a_tombstone_with_the_published_key() -> None:
    k = keys()
    kid, signature = k.sign_tombstone(
        server_id="ab" * 16, sender="alice", conversation="dm:alice:bob", by="admin", at=5
    )
    public = base64.urlsafe_b64decode(k.public_keys()[0]["public_key"] + "=")  # type: ignore[operator]
    sig = base64.urlsafe_b64decode(signature + "==")
    signed = tombstone_signed_bytes(kid=kid, server_id="ab" * 16, sender="alice",
                                    conversation="dm:alice:bob", by="admin", at=5)  # fmt: skip
    ed25519_verify(public, sig, signed)
    forged = tombstone_signed_bytes(kid=kid, server_id="ab" * 16, sender="alice",
                                    conversation="dm:alice:bob", by="sender", at=5)  # fmt: skip
    with pytest.raises(InvalidSignature):
        ed25519_verify(public, sig, forged)


def test_without_a_configured_key_each_process_draws_its_own() -> None:
    a, b = ModerationKeys(load_settings()), ModerationKeys(load_settings())
    with pytest.raises(TagInvalid):
        b.check_tag(a.tag(FIELDS), FIELDS)
