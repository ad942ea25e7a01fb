"""The forms a secret could take in stored data or a log line."""

from __future__ import annotations

import base64


def forms(plaintext: str) -> list[bytes]:
    """The plaintext and every base64 form of it that could sit inside a larger blob:
    standard and URL-safe alphabets, at the three alignments (the characters that
    depend on neighbouring bytes are cut off)."""
    raw = plaintext.encode()
    out = [raw]
    for pad in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            enc = encode(b"\0" * pad + raw).rstrip(b"=")
            skip = (pad * 4 + 2) // 3  # characters touched by the padding bytes
            core = enc[skip : len(enc) - 2]
            out.append(core)
    out.append(base64.b64encode(raw))
    out.append(base64.urlsafe_b64encode(raw).rstrip(b"="))
    out.append(raw.hex().encode())
    return out
