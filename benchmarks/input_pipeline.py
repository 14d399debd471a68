"""Input pipeline throughput: training images/s at 256x256 with 0, 1 and 2 grain workers.

Builds a small iHarmony4-layout dataset (HCOCO subset) of synthesized 640x480 photos
(scikit-image's bundled photos, randomly cropped, scaled and recolored) in /tmp, then times
`make_train_iterator` (decode, random resized crop, flip, resize, batch).

  python -m benchmarks.input_pipeline [--num_images=160 --batch_size=16 --batches=30]
"""

import datetime
import os
import platform
import shutil
import time

from absl import app
from absl import flags
import numpy as np
from PIL import Image
import skimage.data
import tensorflow_datasets as tfds

from data_builders.iharmony4 import iharmony4_dataset_builder as ihd
from harmonax import config_args
from harmonax import input_pipeline

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/harmonax_bench_input", "Scratch dir.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 160, "Composites in the dataset.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 16, "Global batch size.")
_BATCHES = flags.DEFINE_integer("batches", 30, "Timed batches per setting.")
_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2"], "grain worker counts to time.")
_OUTPUT = flags.DEFINE_string(
    "output", os.path.join(os.path.dirname(__file__), "results", "input_pipeline.md"),
    "Where the markdown table is written.")

_SIZE = (640, 480)
_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
           "immunohistochemistry")


def _synthesize(manual_dir: str, num_images: int, seed: int = 0) -> None:
  """Writes an HCOCO-layout manual dir of 640x480 JPEG composites, reals and masks."""
  rng = np.random.default_rng(seed)
  sub = os.path.join(manual_dir, "HCOCO")
  for d in ("composite_images", "masks", "real_images"):
    os.makedirs(os.path.join(sub, d), exist_ok=True)
  photos = [Image.fromarray(getattr(skimage.data, p)()) for p in _PHOTOS]
  names = []
  for k in range(num_images):
    photo = photos[k % len(photos)]
    scale = rng.uniform(1.0, 1.5) * max(_SIZE[0] / photo.width, _SIZE[1] / photo.height)
    photo = photo.resize((int(photo.width * scale) + 1, int(photo.height * scale) + 1),
                         Image.BICUBIC)
    left = rng.integers(0, photo.width - _SIZE[0] + 1)
    top = rng.integers(0, photo.height - _SIZE[1] + 1)
    real = np.asarray(photo.crop((left, top, left + _SIZE[0], top + _SIZE[1])))
    mask = np.zeros(real.shape[:2], np.uint8)
    h, w = rng.integers(80, 300), rng.integers(80, 400)
    y, x = rng.integers(0, _SIZE[1] - h), rng.integers(0, _SIZE[0] - w)
    mask[y:y + h, x:x + w] = 255
    gain = rng.uniform(0.6, 1.4, size=3)
    composite = np.where(mask[..., None] > 0, np.clip(real * gain, 0, 255), real)
    Image.fromarray(real).save(os.path.join(sub, "real_images", f"c{k}.jpg"), quality=90)
    Image.fromarray(composite.astype(np.uint8)).save(
        os.path.join(sub, "composite_images", f"c{k}_1_1.jpg"), quality=90)
    Image.fromarray(mask, mode="L").save(os.path.join(sub, "masks", f"c{k}_1.png"))
    names.append(f"c{k}_1_1.jpg")
  with open(os.path.join(sub, "HCOCO_train.txt"), "w") as f:
    f.write("\n".join(names))
  with open(os.path.join(sub, "HCOCO_test.txt"), "w") as f:
    f.write("\n".join(names[:8]))


def _time_pipeline(config, batch_size: int, batches: int) -> float:
  """Images per second of the training iterator, after two warm-up batches."""
  it = input_pipeline.make_train_iterator(config, batch_size, seed=0)
  for _ in range(2):
    next(it)
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  elapsed = time.perf_counter() - start
  if hasattr(it, "close"):
    it.close()
  return batches * batch_size / elapsed


def main(argv):
  del argv
  manual = os.path.join(_WORKDIR.value, "manual")
  data_dir = os.path.join(_WORKDIR.value, "tfds")
  shutil.rmtree(_WORKDIR.value, ignore_errors=True)
  _synthesize(manual, _NUM_IMAGES.value)
  builder = ihd.Builder(config="hcoco", data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual))

  config = config_args.data_config("iharmony4/hcoco", image_size=256, data_dir=data_dir)
  rows = []
  load_before = os.getloadavg()[0]
  for workers in map(int, _WORKERS.value):
    config.num_workers = workers
    rate = _time_pipeline(config, _BATCH_SIZE.value, _BATCHES.value)
    rows.append(f"| {workers} | {_BATCH_SIZE.value} | {rate:.1f} |")
    print(rows[-1], flush=True)

  table = "\n".join([
      "## Input pipeline: training images/s at 256x256",
      "",
      f"Machine: {os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), "
      f"no GPU; {datetime.date.today().isoformat()}. 1-minute load average "
      f"{load_before:.1f} before and {os.getloadavg()[0]:.1f} after the runs (other jobs "
      "share the CPU: numbers are lower bounds).",
      f"Data: {_NUM_IMAGES.value} synthesized 640x480 JPEG composites (iHarmony4 layout, "
      "ArrayRecord); decode + random resized crop + flip + bilinear resize + batch; "
      f"{_BATCHES.value} timed batches after 2 warm-up batches.",
      "",
      "| grain workers | batch | images/s |",
      "|---|---|---|",
      *rows,
      "",
  ])
  print(table)
  os.makedirs(os.path.dirname(_OUTPUT.value), exist_ok=True)
  with open(_OUTPUT.value, "w") as f:
    f.write(table)
  shutil.rmtree(_WORKDIR.value, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)
