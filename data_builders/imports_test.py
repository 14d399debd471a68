"""Dependencies point one way: harmonax may import data_builders, never the reverse."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(ROOT)


def test_no_data_builders_file_imports_harmonax():
  pattern = re.compile(r"^\s*(from|import)\s+harmonax\b|import_module\(\s*['\"]harmonax",
                       re.MULTILINE)
  offenders = []
  for folder, _, files in os.walk(ROOT):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        with open(path, encoding="utf-8") as f:
          if pattern.search(f.read()):
            offenders.append(os.path.relpath(path, REPO))
  assert not offenders


def test_importing_every_builder_module_loads_no_harmonax_module():
  code = ("import importlib, pkgutil, sys; import data_builders; "
          "[importlib.import_module(m.name) for m in pkgutil.walk_packages("
          "data_builders.__path__, 'data_builders.') if not m.name.endswith('_test')]; "
          "print(sorted(m for m in sys.modules if m.split('.')[0] == 'harmonax'))")
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=True)
  assert result.stdout.strip() == "[]"
