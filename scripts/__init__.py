"""Developer scripts: the embedded stack, run and CI helpers."""
