r"""Composites per second of the harmonization_composites builder on COCO-sized photos.

  python benchmarks/composite_generation.py [--photos=24] [--beam]

Synthesizes 640x480 textured JPEG photos with one object mask each (10-30% of
the photo) in a temporary folder, then times the builder's per-example path
(`compose.make_example`: decode photo and reference, recolor, reject check,
PNG encoding of the composite's foreground box and of the mask; `real` is the
photo's own JPEG bytes) per color-transfer method and for the default mix, in
one process and in a pool of 2 processes. CPU ms are process CPU time per
composite (every process counted), which a busy machine inflates less than
wall time. Then times a whole `folder` build of the photos (listing, generation,
writing) in one process and, with --beam, through Apache Beam's DirectRunner with
1 and 2 workers. Prints a markdown table and writes it to
benchmarks/results/composite_generation.md.
"""

import argparse
import dataclasses
import datetime
import multiprocessing
import os
import platform
import shutil
import tempfile
import time

import numpy as np
from PIL import Image

from data_builders.harmonization_composites import color_transfer
from data_builders.harmonization_composites import compose
from data_builders.harmonization_composites import harmonization_composites_dataset_builder as hcb
from data_builders.harmonization_composites import sources
from data_builders.harmonization_composites.summary import Summary

HEIGHT, WIDTH = 480, 640
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                       "composite_generation.md")


def make_folder(root: str, count: int) -> None:
  """`count` textured 640x480 photos in images/ and an ellipse mask each in masks/."""
  os.makedirs(os.path.join(root, "images"), exist_ok=True)
  os.makedirs(os.path.join(root, "masks"), exist_ok=True)
  yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
  for i in range(count):
    rng = np.random.default_rng(i)
    base = rng.uniform(0.2, 0.8, 3) + 0.15 * np.stack(
        [np.sin(xx / rng.uniform(8, 40)), np.cos(yy / rng.uniform(8, 40)),
         np.sin((xx + yy) / rng.uniform(8, 40))], -1)
    photo = np.clip(base + rng.normal(0, 0.04, base.shape), 0, 1)
    cy, cx = rng.uniform(0.35, 0.65) * HEIGHT, rng.uniform(0.35, 0.65) * WIDTH
    ry, rx = rng.uniform(0.2, 0.35) * HEIGHT, rng.uniform(0.2, 0.35) * WIDTH
    mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    photo[mask] = np.clip(photo[mask] * rng.uniform(0.5, 1.5, 3), 0, 1)
    Image.fromarray(np.round(photo * 255).astype(np.uint8)).save(
        os.path.join(root, "images", f"p{i:03d}.jpg"), quality=90)
    Image.fromarray(mask.astype(np.uint8) * 255).save(os.path.join(root, "masks", f"p{i:03d}.png"))


def _config(methods):
  folder = hcb.Builder.BUILDER_CONFIGS[2]
  # Keep every composite: rejection would change what is timed per method.
  return dataclasses.replace(folder, name="bench", methods=methods, min_fmse=0.0,
                             max_fmse=1e12, test_fraction=0.0)


def _jobs(root: str, config) -> list[compose.Job]:
  summary = Summary()
  objects = sources.folder_objects(root, config, summary)
  objs = objects["train"] + objects["test"]
  jobs = []
  for i, obj in enumerate(objs):
    ref = objs[(i + 1) % len(objs)]
    jobs.append(compose.Job(key=f"{obj.name}/v00", obj=obj, reference=ref,
                            seed_key=f"bench/{obj.name}"))
  return jobs


def _run(args) -> tuple[int, float]:
  """(composites made, CPU seconds this process spent making them)."""
  jobs, config = args
  summary = Summary()
  cpu = time.process_time()
  made = sum(compose.make_example(job, config, summary) is not None for job in jobs)
  return made, time.process_time() - cpu


def time_jobs(jobs, config, processes: int) -> tuple[float, float]:
  """(composites per wall second, CPU seconds per composite, all processes)."""
  if processes == 1:
    _run((jobs[:2], config))  # Warm up: imports, caches.
    start = time.perf_counter()
    made, cpu = _run((jobs, config))
    wall = time.perf_counter() - start
  else:
    chunks = [(jobs[i::processes], config) for i in range(processes)]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
      # Warm up each worker (imports) before timing; chunksize 1 spreads them.
      pool.map(_run, [(jobs[i:i + 2], config) for i in range(processes)], chunksize=1)
      start = time.perf_counter()
      results = pool.map(_run, chunks, chunksize=1)
      wall = time.perf_counter() - start
    made, cpu = sum(r[0] for r in results), sum(r[1] for r in results)
  return made / wall, cpu / max(made, 1)


def time_build(root: str, data_dir: str, beam_workers: int = 0) -> float:
  """Composites per second of a whole `folder` build (listing, generation, writing):
  in this process (its worker threads) or, with beam_workers, through Beam."""
  from data_builders import datasets  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  summary = datasets.build("harmonization_composites/folder", data_dir, root,
                           beam=beam_workers > 0, beam_workers=beam_workers or None)
  return sum(summary.examples.values()) / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--photos", type=int, default=24)
  parser.add_argument("--beam", action="store_true")
  args = parser.parse_args()
  root = tempfile.mkdtemp(prefix="composite_bench_")
  make_folder(root, args.photos)
  load_before = os.getloadavg()[0]
  rows = []
  for method in color_transfer.METHODS + ("mix",):
    methods = hcb.DEFAULT_METHODS if method == "mix" else ((method, 1.0),)
    config = _config(methods)
    jobs = _jobs(root, config)
    rate, cpu = time_jobs(jobs, config, 1)
    row = [method, f"{rate:.1f}", f"{1000 * cpu:.0f}"]
    if method == "mix":
      rate2, cpu2 = time_jobs(jobs * 2, config, 2)
      row += [f"{rate2:.1f}", f"{1000 * cpu2:.0f}"]
    else:
      row += ["", ""]
    rows.append(row)
  load = os.getloadavg()[0]
  lines = [
      f"Composite generation, {WIDTH}x{HEIGHT} photos ({args.photos} synthetic JPEGs, one "
      "object of 10-30% each), per example: decode photo and reference, recolor, fMSE "
      "check, PNG of the composite's foreground box and of the mask (`real`: the photo's "
      "JPEG bytes).",
      f"Machine: {os.cpu_count()}-core CPU, no GPU ({platform.processor() or platform.machine()}), "
      f"{datetime.date.today().isoformat()}, 1-minute load average {load_before:.1f} before "
      f"and {load:.1f} after (a shared machine: wall-clock rates are pessimistic; CPU ms "
      "are per composite, summed over processes).",
      "",
      "| method | composites/s, 1 process | CPU ms / composite | composites/s, 2 processes "
      "| CPU ms / composite, 2 processes |",
      "|---|---|---|---|---|",
  ] + ["| " + " | ".join(r) + " |" for r in rows]
  lines += ["", "| whole `folder` build | composites/s |", "|---|---|"]
  runs = [("1 process (builder threads)", 0)]
  runs += [(f"Beam DirectRunner, {w} workers", w) for w in ((1, 2) if args.beam else ())]
  for label, workers in runs:
    data_dir = tempfile.mkdtemp(prefix="composite_bench_data_")
    lines.append(f"| {label} | {time_build(root, data_dir, workers):.1f} |")
    shutil.rmtree(data_dir, ignore_errors=True)
  shutil.rmtree(root, ignore_errors=True)
  table = "\n".join(lines)
  print(table)
  os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
  with open(RESULTS, "w", encoding="utf-8") as f:
    f.write(table + "\n")


if __name__ == "__main__":
  main()
