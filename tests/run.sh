#!/usr/bin/env bash
# The test command (README): the linter, then the whole suite on CPU with 8 fake devices
# (conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
# The linter first (ruff.toml: pyflakes-class mistakes), then every test.
python3 -m ruff check --quiet .
exec python3 -m pytest -q "$@"
