"""Synthetic harmonization composites: real photos whose object was recolored.

Each example recolors the masked foreground of a real photo with the color
statistics of another object (same category where categories exist) using
one of color_transfer's methods; the background stays byte-identical
to the real photo. Configs:

- `sample`: photos and hand-made polygons shipped in `sample/` (no download).
- `coco`: manual dir with COCO 2017 `train2017/`, `val2017/` and
  `annotations/instances_{train,val}2017.json`; train2017 -> train, val2017 -> test.
- `folder`: manual dir with `images/` and `masks/` of matching stems.

No TensorFlow needed: images are passed as PNG/JPEG bytes (Pillow) and written
as ArrayRecord; the composite is stored as its foreground's box (record.py).
Examples are seeded from their key, so a build is byte-identical whatever the
order or the number of Beam workers.
"""

import concurrent.futures
import dataclasses
import json
import os
from typing import Any, Iterator

from etils import epath
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import example_serializer

from data_builders.harmonization_composites import color_transfer
from data_builders.harmonization_composites import compose
from data_builders.harmonization_composites import record
from data_builders.harmonization_composites import sources
from data_builders.harmonization_composites.summary import Summary

SPLITS = ("train", "test")
# Worker threads and jobs in flight of a build without Beam.
_THREADS = 3
_WINDOW = 64
# Default mix of methods (relative weights); 'filters' are Harmonizer's white-box filters.
DEFAULT_METHODS = (("reinhard", 1.0), ("covariance", 1.0), ("histogram", 1.0),
                   ("idt", 1.0), ("exposure", 0.5), ("filters", 0.5))


@dataclasses.dataclass
class BuilderConfig(tfds.core.BuilderConfig):
  """Source of photos and how composites are made from them.

  Attributes:
    source: 'sample', 'coco' or 'folder'.
    variants: composites per object, per split ({'train': n, 'test': m}).
    methods: (method, weight) pairs of color_transfer.METHODS.
    strength_range: fraction of each color change kept, drawn uniformly.
    min_fmse, max_fmse: accepted foreground MSE (0..255 pixels) of a composite;
      below is too small a change to learn, above is absurd.
    max_attempts: draws (method, strength, reference sample) per example
      before it is dropped.
    min_area, max_area: accepted object area as a fraction of the photo.
    max_objects_per_photo: the largest objects of a photo that are used.
    max_size: photos with a longer side are downscaled to it (None: keep).
    test_fraction: folder source: fraction of photos (by stem hash) in test.
    blobs_per_photo: sample source: random blob regions of each training photo
      used as objects besides the annotated ones.
  """
  source: str = "sample"
  variants: tuple[tuple[str, int], ...] = (("train", 1), ("test", 1))
  methods: tuple[tuple[str, float], ...] = DEFAULT_METHODS
  strength_range: tuple[float, float] = (0.6, 1.0)
  min_fmse: float = 40.0
  max_fmse: float = 8000.0
  max_attempts: int = 3
  min_area: float = 0.01
  max_area: float = 0.8
  max_objects_per_photo: int = 2
  max_size: int | None = None
  test_fraction: float = 0.1
  blobs_per_photo: int = 0

  def __post_init__(self):
    bad = [m for m, _ in self.methods if m not in color_transfer.METHODS]
    if bad:
      raise ValueError(f"BuilderConfig {self.name!r}: unknown methods {bad}; "
                       f"valid: {color_transfer.METHODS}")
    if self.source not in ("sample", "coco", "folder"):
      raise ValueError(f"BuilderConfig {self.name!r}: source must be 'sample', "
                       f"'coco' or 'folder', got {self.source!r}")


def _jobs(objects: dict[str, list[sources.Obj]], config: BuilderConfig, version: str,
          summary: Summary) -> dict[str, list[compose.Job]]:
  """Every (object, variant) of each split with its reference, chosen in the split."""
  variants = dict(config.variants)
  out = {}
  for split in SPLITS:
    objs = objects.get(split, [])
    by_category: dict[str, list[sources.Obj]] = {}
    for o in objs:
      by_category.setdefault(o.category, []).append(o)
    jobs = []
    for obj in objs:
      for v in range(variants.get(split, 1)):
        key = f"{obj.name}/v{v:02d}"
        seed_key = f"{config.name}/{version}/{key}"
        reference = sources.pick_reference(obj, objs, by_category,
                                           compose.rng_for(seed_key, "reference"))
        if reference is None and not any(m in ("exposure", "filters")
                                         for m, _ in config.methods):
          summary.add("no_reference", obj.name)
          continue
        jobs.append(compose.Job(key=key, obj=obj, reference=reference, seed_key=seed_key))
    out[split] = jobs
  return out


def _deterministic_serialization() -> None:
  """Makes TFDS serialize tf.train.Example with sorted feature keys.

  Why: upb, the protobuf runtime, orders map entries by a hash seeded per
  process, so one example serializes to different bytes in different
  processes (and Beam workers). `deterministic=True` sorts the keys; the bytes
  are still a valid tf.train.Example. Done at import, so Beam workers (which
  import this module to run the compose step) serialize the same way.
  """
  serializer = example_serializer.ExampleSerializer
  if getattr(serializer.serialize_example, "deterministic", False):
    return

  def serialize_example(self, example):
    return self.get_tf_example(example).SerializeToString(deterministic=True)

  serialize_example.deterministic = True
  serializer.serialize_example = serialize_example


_deterministic_serialization()


class _BeamCounter:
  """Summary stand-in on Beam workers: counts kinds as Beam metrics."""

  def __init__(self):
    self.found = Summary()

  def flush(self) -> list[str]:
    import apache_beam as beam  # pylint: disable=g-import-not-at-top
    for kind in set(self.found.files) | set(self.found.events):
      beam.metrics.Metrics.counter("harmonization_composites", kind).inc(
          self.found.count(kind))
    text = self.found.to_json() if (self.found.files or self.found.events) else None
    self.found = Summary()
    return [text] if text else []


def _beam_generate(jobs: list[compose.Job], config: BuilderConfig, work_dir: str, split: str):
  """A PTransform making the examples on Beam workers.

  The jobs go to `work_dir/jobs-<split>.jsonl` and the pipeline reads them
  back, so the pipeline graph stays small (Dataflow caps it at ~10 MB; COCO
  has ~200k jobs with polygons). Problems go to `work_dir/issues-<split>*`.
  """
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  jobs_path = epath.Path(work_dir) / f"jobs-{split}.jsonl"
  jobs_path.write_text("".join(json.dumps(compose.job_to_dict(j)) + "\n" for j in jobs))

  def process(line):
    counter = _BeamCounter()
    result = compose.make_example(compose.job_from_dict(json.loads(line)), config,
                                  counter.found)
    for text in counter.flush():
      yield beam.pvalue.TaggedOutput("issues", text)
    if result is not None:
      yield result

  def expand(pipeline):
    outputs = (pipeline
               | "Jobs" >> beam.io.ReadFromText(os.fspath(jobs_path))
               | "Spread" >> beam.Reshuffle()
               | "Compose" >> beam.FlatMap(process).with_outputs("issues", main="examples"))
    _ = outputs.issues | "Issues" >> beam.io.WriteToText(
        os.path.join(work_dir, f"issues-{split}"))
    return outputs.examples

  return beam.ptransform_fn(lambda pcoll: expand(pcoll))()  # pylint: disable=unnecessary-lambda


class Builder(tfds.core.GeneratorBasedBuilder):
  """DatasetBuilder for synthetic harmonization composites."""

  VERSION = tfds.core.Version("2.1.0")
  RELEASE_NOTES = {
      "1.0.0": "Initial release.",
      "2.0.0": "The composite is stored as its foreground's bounding box (composite_crop, "
               "composite_box) and rebuilt on decoding; real is the photo's own JPEG/PNG "
               "bytes where they decode to it. Examples decode to the same features.",
      "2.1.0": "sample: 8 more photos, 4 more objects and 3 random blob regions per "
               "training photo (train 306 -> 956 composites, 20 variants per region "
               "instead of 34); the test split (coffee, coins) is unchanged.",
  }
  BUILDER_CONFIGS = [
      BuilderConfig(name="sample", source="sample",
                    description="14 embedded public-domain/CC0 photos, 18 objects + 3 "
                    "random blobs per training photo, 956 train / 60 test composites; "
                    "no download.",
                    variants=(("train", 20), ("test", 12)), max_objects_per_photo=3,
                    min_area=0.0, max_area=1.0, blobs_per_photo=3),
      BuilderConfig(name="coco", source="coco",
                    description="COCO 2017 objects (1% to 80% of the image, no crowds), "
                    "reference from the same category.", max_objects_per_photo=2),
      BuilderConfig(name="folder", source="folder",
                    description="Your photos (images/) and masks (masks/), matching stems.",
                    max_size=1024),
  ]
  # The version in every example's seed: 2.0.0 changed how examples are stored, not
  # what they are, so it repeats 1.0.0's draws (method, strength, parameters); 2.1.0
  # added objects, and keeps the draws of the old ones (the sample test split is
  # byte-identical to 2.0.0's).
  DRAWS_VERSION = "1.0.0"
  DEFAULT_CONFIG_NAME = "sample"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  coco: a folder with COCO 2017 train2017/, val2017/ and annotations/instances_train2017.json,
  annotations/instances_val2017.json (https://cocodataset.org/#download).
  folder: a folder with images/ (photos) and masks/ (one mask per photo, same stem).
  The sample config needs no manual dir.
  """

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.summary = Summary()
    self._beam = False
    self._issues_dir: str | None = None

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        # Decodes to the shared features (composite, real, mask, ...): see record.py.
        features=record.CompositeFeatures({
            # The photo's own JPEG/PNG bytes where they decode to it, else a PNG.
            "real": tfds.features.Image(shape=(None, None, 3)),
            record.CROP: tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
            record.BOX: tfds.features.Tensor(shape=(4,), dtype=np.int32),
            "mask": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
            "name": tfds.features.Text(),
            "transfer": tfds.features.Text(),
            "category": tfds.features.Text(),
        }),
        supervised_keys=None,  # README.md and CITATIONS.bib are read from this folder.
    )

  def _download_and_prepare(self, dl_manager, download_config=None):
    # Beam is used exactly when the caller passed a runner or options.
    self._beam = bool(download_config and (download_config.beam_runner
                                           or download_config.beam_options))
    return super()._download_and_prepare(dl_manager, download_config)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    config = self.builder_config
    self.summary = Summary()
    if config.source == "sample":
      objects = sources.sample_objects(config, self.summary)
    elif config.source == "coco":
      objects = sources.coco_objects(dl_manager.manual_dir, config, self.summary)
    else:
      objects = sources.folder_objects(dl_manager.manual_dir, config, self.summary)
    jobs = _jobs(objects, config, self.DRAWS_VERSION, self.summary)
    if self._beam:
      # Under the data dir (not /tmp) so that remote workers can write there too.
      issues = epath.Path(self._data_dir_root) / f".issues_{self.name}_{config.name}_{os.getpid()}"
      issues.mkdir(parents=True, exist_ok=True)
      self._issues_dir = os.fspath(issues)
      return {split: _beam_generate(jobs[split], config, self._issues_dir, split)
              for split in SPLITS}
    return {split: self._generate_examples(jobs[split], split) for split in SPLITS}

  def _generate_examples(self, jobs: list[compose.Job], split: str
                         ) -> Iterator[tuple[str, dict[str, Any]]]:
    config = self.builder_config

    def make(job):
      found = Summary()
      return found, compose.make_example(job, config, found)

    # Threads: numpy, zlib and XLA release the GIL, so 2 cores make ~1.5x the
    # examples. Windows keep memory bounded; map keeps the order (and every
    # example is seeded from its key anyway).
    with concurrent.futures.ThreadPoolExecutor(max_workers=_THREADS) as pool:
      for start in range(0, len(jobs), _WINDOW):
        for found, example in pool.map(make, jobs[start:start + _WINDOW]):
          self.summary.merge(found)
          if example is not None:
            self.summary.examples[split] += 1
            yield example

  def collect_summary(self) -> Summary:
    """The build's summary; after a Beam build, merges what the workers found."""
    if self._issues_dir:
      issues = epath.Path(self._issues_dir)
      for path in sorted(issues.glob("*")):
        if path.name.startswith("issues-"):
          for line in path.read_text().splitlines():
            if line.strip():
              self.summary.merge(Summary.from_json(line))
        path.unlink()
      issues.rmdir()
      self._issues_dir = None
      if self.info.splits:
        for split in SPLITS:
          if split in self.info.splits:
            self.summary.examples[split] = self.info.splits[split].num_examples
    return self.summary
