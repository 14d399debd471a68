"""Test setup for every test (tests/ and data_builders/): 8 fake CPU devices, a
persistent compilation cache, and parsed absl flags."""

import os
import tempfile

# Must happen before jax is imported anywhere: the tests exercise data
# parallelism over a ('data',) mesh of 8 CPU devices.
# The suite's time is almost all XLA compiling (single-threaded) small programs
# that then run a step or two. Two flags cut the compile of a training step
# (Harmonizer runlocal, 8 devices: 46.5 s -> 31.8 s -> 22.5 s, measured with
# benchmarks/compile_time.py, BENCHMARKS.md) and leave values within float32
# rounding: LLVM's backend optimisation level 0, and XLA:CPU's older elemental
# IR emitters instead of its MLIR fusion emitters. A third compiles each program
# as one LLVM module rather than parts on XLA's thread pool, which the other test
# worker keeps busy (update steps 4-28% faster to compile in one run of the same
# benchmark, within noise in another: a small effect, BENCHMARKS.md).
# HARMONAX_TEST_XLA_OPT=1 restores XLA's defaults.
_FLAGS = ["--xla_force_host_platform_device_count=8"]
if os.environ.get("HARMONAX_TEST_XLA_OPT", "0") == "0":
  _FLAGS += ["--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false",
             "--xla_cpu_parallel_codegen_split_count=1"]
os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), *_FLAGS]).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Many tests compile the same update steps, also in subprocesses (which inherit
# these variables): a persistent cache turns the repeats into hits.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "harmonax_test_jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

from absl import flags  # noqa: E402

# Grain workers and TFDS read absl flags; under pytest nobody parses them.
if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()

import pytest  # noqa: E402

# Files whose tests are independent runs of one recipe each (and the Harmonizer's,
# three of which compile a training step): spread over the pytest-xdist workers
# one by one. Every other file's tests stay on one worker
# (tests/run.sh: --dist loadgroup), so its module fixtures are built once.
_SPREAD = ("configs_test.py", "mixed_precision_test.py", "harmonizer_test.py")


def pytest_collection_modifyitems(config, items):
  del config
  for item in items:
    if item.path.name not in _SPREAD:
      item.add_marker(pytest.mark.xdist_group(item.path.name))


def pytest_sessionfinish(session, exitstatus):
  """In a pytest-xdist worker, drops JAX's gc callback once the tests are done.

  After the last test the controller gives a worker 5 s to finish (execnet),
  then sends it SIGINT. With JAX's `_xla_gc_callback` in `gc.callbacks`, every
  collection while the worker tears down its fixtures also collects XLA's
  garbage; the interrupt landed there and printed a KeyboardInterrupt
  traceback after the suite had passed (CI logs, 2026-11-30 and 12-01).
  """
  del session, exitstatus
  if os.environ.get("PYTEST_XDIST_WORKER"):
    import gc  # pylint: disable=g-import-not-at-top
    gc.callbacks[:] = [c for c in gc.callbacks if getattr(c, "__name__", "") != "_xla_gc_callback"]
