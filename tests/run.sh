#!/usr/bin/env bash
# The test command (README): the whole suite on CPU with 8 fake devices (tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 -m pytest -q "$@"
