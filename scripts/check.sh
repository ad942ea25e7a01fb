#!/usr/bin/env bash
# The project's gates, the same for everyone and for CI: lint, format, types, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
echo "== ruff check";  $BIN/ruff check .
echo "== ruff format"; $BIN/ruff format --check --quiet .
echo "== mypy";        $BIN/mypy
echo "== pytest";      $BIN/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder --durations=25 "$@"
