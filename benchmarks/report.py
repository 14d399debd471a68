"""Results files of the benchmark scripts: each run's table appended to the earlier ones."""

import os


def append_table(path: str, heading: str, table: str) -> None:
  """Appends `table` to the markdown file `path`, which starts with `heading`
  when it is new; the earlier runs stay (each table says when it was measured)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  earlier = ""
  if os.path.exists(path):
    with open(path) as f:
      earlier = f.read().rstrip("\n") + "\n\n"
  with open(path, "w") as f:
    f.write((earlier or heading + "\n\n") + table)
