"""Load generation and benchmarks (docs/BENCHMARKS.md has the commands and the figures)."""
