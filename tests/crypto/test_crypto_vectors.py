"""Parley's own vectors are exactly what scripts/gen_vectors.py produces today.

The other tests replay each vector file through the library; this one checks
the files byte for byte: regenerating them from the library (with the test
DRBG and the recorded ML-KEM ciphertexts) changes nothing.
"""

from __future__ import annotations

import pytest

from scripts import gen_vectors


def test_generator_reproduces_every_vector_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert gen_vectors.main(["--check"]) == 0, capsys.readouterr().out
