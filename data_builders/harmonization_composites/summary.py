"""What happened to the inputs of a build: skipped, converted and rejected, with files."""

import collections
import dataclasses
import json

# Kinds of input problems. SKIPPED kinds drop a photo or an object; CONVERTED
# kinds were fixed on the fly and the input was used.
SKIPPED = {
    "unreadable": "not a readable image (or missing / too large)",
    "truncated": "truncated or corrupt image data",
    "size_mismatch": "mask size differs from the photo's",
    "empty_mask": "mask without foreground pixels",
    "missing_mask": "photo without a mask of the same stem",
    "missing_image": "mask without a photo of the same stem",
    "duplicate_stem": "another file of the folder has the same stem (a.jpg, a.png): "
                      "which one pairs is ambiguous",
    "area_filtered": "object area outside the configured fraction of the photo",
    "crowd": "COCO crowd annotation",
    "no_reference": "no reference object in the split",
}
CONVERTED = {
    "grayscale": "grayscale photo converted to RGB",
    "alpha": "photo with an alpha channel (RGBA/LA/PA): alpha dropped",
    "16bit": "16-bit RGB image (photo or mask) read at 8 bits",
    "palette": "palette photo converted to RGB",
    "cmyk": "CMYK photo converted to RGB",
    "exif_rotated": "EXIF orientation applied (photo or mask)",
    "mask_converted": "mask not 8-bit grayscale 0/255: binarized",
    "resized": "photo larger than max_size: downscaled",
}
# Composite attempts that the fMSE bounds rejected, and objects given up on.
REJECTED = {
    "rejected_small_change": "foreground change below min_fmse",
    "rejected_large_change": "foreground change above max_fmse",
    "dropped_object_variant": "every attempt rejected: no example",
}
KINDS = {**SKIPPED, **CONVERTED, **REJECTED}
# How many file names the text summary lists per kind.
_MAX_LISTED = 10


@dataclasses.dataclass
class Summary:
  """Counts per kind (distinct files for input problems, events for rejections)."""
  files: dict[str, set[str]] = dataclasses.field(
      default_factory=lambda: collections.defaultdict(set))
  events: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  examples: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  # data_builders.datasets.build: the dataset was there already and left as it was.
  already_built: bool = False

  def add(self, kind: str, file: str) -> None:
    """Records one occurrence of `kind` for `file` (an input file or an example key)."""
    if kind not in KINDS:
      raise ValueError(f"Unknown summary kind {kind!r}; valid: {sorted(KINDS)}")
    if kind in REJECTED:
      self.events[kind] += 1
    self.files[kind].add(str(file))

  def count(self, kind: str) -> int:
    """Distinct files of an input kind; occurrences of a rejection kind."""
    return self.events[kind] if kind in REJECTED else len(self.files.get(kind, ()))

  def merge(self, other: "Summary") -> None:
    for kind, files in other.files.items():
      self.files[kind] |= files
    self.events.update(other.events)
    self.examples.update(other.examples)

  def to_json(self) -> str:
    return json.dumps({"files": {k: sorted(v) for k, v in self.files.items() if v},
                       "events": dict(self.events), "examples": dict(self.examples)},
                      sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> "Summary":
    data = json.loads(text)
    out = cls()
    for kind, files in data["files"].items():
      out.files[kind].update(files)
    out.events.update(data["events"])
    out.examples.update(data["examples"])
    return out

  def format(self) -> str:
    """Human-readable report: examples per split, then each kind with file names."""
    lines = ["examples: " + (", ".join(f"{s}={n}" for s, n in sorted(self.examples.items()))
                             or "none generated")]
    for title, kinds in (("skipped", SKIPPED), ("converted", CONVERTED),
                         ("rejected", REJECTED)):
      for kind, what in kinds.items():
        n = self.count(kind)
        if not n:
          continue
        names = sorted(self.files[kind])
        listed = ", ".join(names[:_MAX_LISTED])
        more = f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else ""
        lines.append(f"{title} {kind} ({what}): {n}: {listed}{more}")
    return "\n".join(lines)
