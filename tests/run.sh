#!/usr/bin/env bash
# The test command (README): the linter, then the whole suite on CPU with 8 fake devices
# (conftest.py) in two worker processes.
set -euo pipefail
cd "$(dirname "$0")/.."
# The linter first (ruff.toml: pyflakes-class mistakes), then every test.
python3 -m ruff check --quiet .
# jemalloc where installed (.ci/run installs it; Debian/Ubuntu: libjemalloc2):
# XLA compiles about 30% faster (tests/jemalloc.sh). HARMONAX_TEST_MALLOC=system
# keeps glibc's malloc.
source tests/jemalloc.sh
if [ -z "${LD_PRELOAD:-}" ] && [ "${HARMONAX_TEST_MALLOC:-jemalloc}" != system ]; then
  lib="$(find_jemalloc)"
  if [ -n "$lib" ]; then export LD_PRELOAD="$lib"; fi
fi
# Two workers (pytest-xdist): most of the suite's time is XLA compiling on one
# thread, so the 2-core CI machine runs about twice as fast. HARMONAX_TEST_WORKERS=0
# runs in one process. A file's tests share a worker (conftest.py) unless listed there.
# -p no:benchmark: pytest-benchmark, where installed, warns once per process that
# xdist disables it (no test here uses it).
exec python3 -m pytest -q -n "${HARMONAX_TEST_WORKERS:-2}" --dist loadgroup --durations=25 \
    -p no:benchmark "$@"
