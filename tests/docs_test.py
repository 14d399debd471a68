"""The docs match the code: every `python -m harmonax.<tool>` command in the
README, docs/, launch/ and the configs' docstrings uses flags the tool defines,
and every `--config.a.b` override names a field of the config it is given to
(or, in prose, of some recipe's config); every benchmark command in the README,
BENCHMARKS.md and the scripts' docstrings names a script and flags it has."""

import functools
import os
import re

import pytest

from harmonax import conversion

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md", "docs/demo.md", "docs/architecture.md", "launch/README.md"] + sorted(
    os.path.join("configs", f) for f in os.listdir(os.path.join(ROOT, "configs"))
    if f.endswith(".py") and not f.startswith("_"))
RECIPES = sorted(os.path.splitext(os.path.basename(f))[0] for f in DOCS if f.endswith(".py"))
COMMAND = re.compile(r"python -m harmonax\.(\w+)([^`#\n]*)")
PLACEHOLDER = re.compile(r"[<>]|\.\.\.|^-+$")
# Fields the docs name as living on experiment branches only (docs/demo.md).
BRANCH_ONLY = {"model.zero_init_arguments": "exp27", "loss.contrast_gradient": "exp26"}


def _text(path: str) -> str:
  with open(os.path.join(ROOT, path), encoding="utf-8") as f:
    return f.read().replace("\\\n", " ")  # Continued shell lines.


def _flags(rest: str) -> list[str]:
  """The --flag tokens of a command's arguments (up to a shell operator)."""
  tokens = [t.strip("[]()'\"") for t in re.split(r"&&|\||;|\$\(", rest)[0].split()]
  return [t for t in tokens if t.startswith("--")]


@functools.cache
def _commands(doc: str) -> list[tuple[str, list[str]]]:
  """(tool, flag tokens) of every command in `doc`, a line (or backquoted span) each."""
  return [(tool, _flags(rest)) for tool, rest in COMMAND.findall(_text(doc))]


@functools.cache
def _defined_flags(*paths: str) -> set[str]:
  """Flag names (absl or argparse; '-' read as '_') the files define."""
  names = set()
  for path in paths:
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
      source = f.read()
    names |= set(re.findall(r"DEFINE_\w+\(\s*\"(\w+)\"", source))
    names |= {n.replace("-", "_") for n in re.findall(r"add_argument\(\s*\"--([\w-]+)\"", source)}
  return names


_config = functools.cache(conversion.default_config)


def _has(config, dotted: str) -> bool:
  node = config
  for part in dotted.split("."):
    if not hasattr(node, "keys") or part not in node:
      return False
    node = node[part]
  return True


BENCHMARK_DOCS = ["README.md", "BENCHMARKS.md"] + sorted(
    os.path.join("benchmarks", f) for f in os.listdir(os.path.join(ROOT, "benchmarks"))
    if f.endswith(".py"))
BENCHMARK = re.compile(r"python (?:-m benchmarks\.(\w+)|benchmarks/(\w+)\.py)([^`#\n]*)")


def test_benchmark_commands_name_scripts_and_flags_they_have():
  wrong, seen = [], 0
  for doc in BENCHMARK_DOCS:
    for module, script, rest in BENCHMARK.findall(_text(doc)):
      path = os.path.join("benchmarks", f"{module or script}.py")
      if not os.path.exists(os.path.join(ROOT, path)):
        wrong.append(f"{doc}: no {path}")
        continue
      for flag in _flags(rest):
        name = flag[2:].split("=")[0].replace("-", "_")
        if name not in _defined_flags(path):
          wrong.append(f"{doc}: {module or script} has no --{name}")
        seen += 1
  assert seen > 40 and not wrong, "\n".join(wrong)


def test_the_docs_hold_commands_of_every_tool():
  tools = {tool for doc in DOCS for tool, _ in _commands(doc)}
  assert {"train", "evaluate", "harmonize", "convert", "export", "summary",
          "self_taught"} <= tools


@pytest.mark.parametrize("doc", DOCS)
def test_command_flags_exist(doc):
  wrong = []
  for tool, flags in _commands(doc):
    assert os.path.exists(os.path.join(ROOT, "harmonax", f"{tool}.py")), f"{doc}: {tool}"
    for flag in flags:
      name = flag[2:].split("=")[0]
      if PLACEHOLDER.search(name) or name.startswith("config."):
        continue
      if name not in _defined_flags(f"harmonax/{tool}.py", "harmonax/cli.py"):
        wrong.append(f"{doc}: harmonax.{tool} has no --{name}")
  assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("doc", DOCS)
def test_config_overrides_name_existing_fields(doc):
  wrong = []
  for tool, flags in _commands(doc):
    values = dict(f[2:].split("=", 1) for f in flags if "=" in f)
    spec = values.get("config") or (f"configs/{values['model']}.py" if "model" in values
                                    else None)
    if spec is None or PLACEHOLDER.search(spec) or "self_taught=" in spec:
      continue  # (A self_taught=DIR config reads DIR.)
    path, _, arg = spec.partition(":")
    recipe = os.path.splitext(os.path.basename(path))[0]
    config = _config(recipe, arg)
    for flag in flags:
      name = flag[2:].split("=")[0]
      if name.startswith("config.") and not _has(config, name[len("config."):]):
        wrong.append(f"{doc}: {spec} has no {name} (harmonax.{tool})")
  assert not wrong, "\n".join(wrong)


def test_overrides_in_prose_name_fields_of_some_recipe():
  configs = [_config(r, a) for r in RECIPES for a in ("", "runlocal")]
  wrong = []
  for doc in DOCS:
    for dotted in set(re.findall(r"--config\.([A-Za-z_][\w.]*[A-Za-z_0-9])", _text(doc))):
      if dotted in BRANCH_ONLY:
        assert f"branch {BRANCH_ONLY[dotted]}" in _text(doc), (doc, dotted)
      elif not any(_has(c, dotted) for c in configs):
        wrong.append(f"{doc}: no recipe has config.{dotted}")
  assert not wrong, "\n".join(wrong)
