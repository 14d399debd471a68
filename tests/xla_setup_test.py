"""xla_setup: flags are added only when the installed jaxlib accepts them, a
user's own setting wins, and probes are cached."""

import os

from harmonax import xla_setup


def test_configure_adds_supported_flags_and_respects_the_user(monkeypatch):
  monkeypatch.setattr(xla_setup, "_backends_started", lambda: False)
  monkeypatch.setattr(xla_setup, "flag_supported", lambda flag: "bogus" not in flag)
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  added = xla_setup.configure(("--xla_cpu_use_onednn=true", "--xla_bogus=1"), env)
  assert added == ["--xla_cpu_use_onednn=true"]
  assert env["XLA_FLAGS"] == ("--xla_force_host_platform_device_count=8 "
                              "--xla_cpu_use_onednn=true")
  env = {"XLA_FLAGS": "--xla_cpu_use_onednn=false"}
  assert xla_setup.configure(("--xla_cpu_use_onednn=true",), env) == []
  assert env["XLA_FLAGS"] == "--xla_cpu_use_onednn=false"
  env = {"HARMONAX_XLA_SETUP": "0"}
  assert xla_setup.configure(("--xla_cpu_use_onednn=true",), env) == []
  assert "XLA_FLAGS" not in env


def test_configure_does_nothing_once_a_backend_exists(monkeypatch):
  monkeypatch.setattr(xla_setup, "_backends_started", lambda: True)
  env = {}
  assert xla_setup.configure(("--xla_cpu_use_onednn=true",), env) == []
  assert env == {}


def test_probe_rejects_an_unknown_flag_and_caches(monkeypatch, tmp_path):
  cache = tmp_path / "xla_flags.json"
  monkeypatch.setattr(xla_setup, "_CACHE", str(cache))
  assert not xla_setup.flag_supported("--xla_harmonax_no_such_flag=true")
  assert cache.exists() and "no_such_flag" in cache.read_text()
  # A cached answer needs no subprocess.
  monkeypatch.setattr(xla_setup.subprocess, "run", None)
  assert not xla_setup.flag_supported("--xla_harmonax_no_such_flag=true")
  assert os.path.exists(str(cache))
