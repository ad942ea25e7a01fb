"""The deterministic byte stream of Parley's test vectors: **never production code**.

It lives under ``tests/`` so that it is not part of the installed ``parley``
package: no production module can import it, and nothing can select it by
accident.  ``scripts/gen_vectors.py`` and the tests import it from here
(``tests.crypto.drbg``); ``tests/crypto/test_crypto_layers.py`` checks that
nothing under ``client/parley`` does.

Definition (client/vectors/README.md, "Test DRBG"): block ``i`` (0, 1, 2, ...)
is ``HMAC-SHA256(seed, b"parley-test-drbg" || u64_be(i))``; the stream is the
concatenation of the blocks and each call takes the next ``n`` bytes of it.
The browser client implements the same few lines to replay our vectors.
"""

from __future__ import annotations

import hashlib
import hmac

from parley.crypto.primitives import RandomSource, require_bytes

__all__ = ["deterministic_random"]


class _TestDrbg:
    __slots__ = ("_buffer", "_counter", "_seed")

    def __init__(self, seed: bytes) -> None:
        self._seed = seed
        self._counter = 0
        self._buffer = b""

    def __call__(self, n: int) -> bytes:
        while len(self._buffer) < n:
            block = b"parley-test-drbg" + self._counter.to_bytes(8, "big")
            self._buffer += hmac.digest(self._seed, block, hashlib.sha256)
            self._counter += 1
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out


def deterministic_random(seed: bytes) -> RandomSource:
    """A reproducible :data:`~parley.crypto.primitives.RandomSource` for test vectors."""
    require_bytes("seed", seed)
    return _TestDrbg(seed)
