"""XLA flags set before JAX starts its backends: oneDNN on CPU where supported.

Every CLI calls `configure()` through `cli.run` before its main can create a
JAX backend (benchmarks call it themselves); importing this module changes
nothing. XLA reads `XLA_FLAGS` once, when the first backend is created, and
aborts the process on a flag its build does not know, so a flag is only added
after a one-off probe in a subprocess accepted it. Probe results are cached
per jaxlib build in `~/.cache/harmonax/xla_flags.json`.

`--xla_cpu_use_onednn=true` lets XLA's CPU backend use oneDNN (BENCHMARKS.md
has the measured effect). A flag the user already set in `XLA_FLAGS` (either
value) is left alone; `HARMONAX_XLA_SETUP=0` turns all of this off.
"""

import json
import os
import subprocess
import sys

ONEDNN = "--xla_cpu_use_onednn=true"
DEFAULT_FLAGS = (ONEDNN,)
_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "harmonax", "xla_flags.json")
_PROBE = "import jax; jax.devices('cpu')"


def _jaxlib_id() -> str:
  """Identifies the installed jaxlib build (version and library file)."""
  try:
    import jaxlib  # pylint: disable=g-import-not-at-top
    from jaxlib import version  # pylint: disable=g-import-not-at-top
    lib = os.path.join(os.path.dirname(jaxlib.__file__), "libjax_common.so")
    stamp = os.stat(lib).st_mtime_ns if os.path.exists(lib) else 0
    return f"{version.__version__}:{stamp}"
  except ImportError:
    return "none"


def _load_cache() -> dict:
  try:
    with open(_CACHE) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def flag_supported(flag: str, timeout_s: float = 120.0) -> bool:
  """Whether this jaxlib accepts `flag` in XLA_FLAGS (probed once, then cached)."""
  key = f"{_jaxlib_id()} {flag}"
  cache = _load_cache()
  if key in cache:
    return bool(cache[key])
  env = dict(os.environ, XLA_FLAGS=flag, JAX_PLATFORMS="cpu", HARMONAX_XLA_SETUP="0")
  try:
    supported = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True,
        timeout=timeout_s, check=False).returncode == 0
  except (OSError, subprocess.TimeoutExpired):
    return False  # Not cached: maybe a busy machine; try again next time.
  cache[key] = supported
  try:
    os.makedirs(os.path.dirname(_CACHE), exist_ok=True)
    with open(_CACHE + ".tmp", "w") as f:
      json.dump(cache, f, indent=1, sort_keys=True)
    os.replace(_CACHE + ".tmp", _CACHE)
  except OSError:
    pass  # A read-only home only costs a probe per run.
  return supported


def _backends_started() -> bool:
  if "jax" not in sys.modules:
    return False  # Nothing can have started a backend; and `import harmonax` stays light.
  try:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
    return xla_bridge.backends_are_initialized()
  except (ImportError, AttributeError):
    return False


def configure(flags: tuple[str, ...] = DEFAULT_FLAGS,
              environ: dict[str, str] | None = None) -> list[str]:
  """Appends each supported flag to XLA_FLAGS unless the user set that flag.

  Does nothing once a JAX backend exists (XLA_FLAGS would no longer apply, and
  subprocesses should see the flags this process runs with) or with
  HARMONAX_XLA_SETUP=0. Returns the flags added.
  """
  environ = os.environ if environ is None else environ
  if environ.get("HARMONAX_XLA_SETUP", "1") == "0" or _backends_started():
    return []
  current = environ.get("XLA_FLAGS", "")
  added = []
  for flag in flags:
    name = flag.split("=", 1)[0]
    if name in current or not flag_supported(flag):
      continue
    added.append(flag)
  if added:
    environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
  return added

