r"""Draws docs/demo_grid.png: unseen sample test composites before/after a demo model.

  python docs/demo_grid.py --workdir=./workdirs/harmonizer_demo --output=docs/demo_grid.png

Rows are every `--every`-th example of the sample test split (coffee, coins:
photos the model never saw), not picked by result; columns are the composite,
the model's output and the real photo at the model's evaluation size, with
each row's foreground MSE (0..255) before and after.
"""

from absl import app
from absl import flags
import numpy as np
from PIL import Image
from PIL import ImageDraw

_WORKDIR = flags.DEFINE_string("workdir", None, "Trained workdir.", required=True)
_OUTPUT = flags.DEFINE_string("output", "docs/demo_grid.png", "The PNG written.")
_EVERY = flags.DEFINE_integer("every", 8, "Draw every n-th test example.")
_SCALE = flags.DEFINE_integer("scale", 2, "Upscale of each image (nearest).")


def fmse(image: np.ndarray, real: np.ndarray, mask: np.ndarray) -> float:
  """Foreground MSE on 0..255 pixels (over foreground pixels and channels)."""
  fg = mask[..., 0] > 0.5
  diff = image.astype(np.float64) - real.astype(np.float64)
  return float(np.mean(np.square(diff[fg]))) if fg.any() else 0.0


def main(argv: list[str]) -> None:
  del argv
  from harmonax import checkpoint  # pylint: disable=g-import-not-at-top
  from harmonax import evaluation  # pylint: disable=g-import-not-at-top
  from harmonax import inference  # pylint: disable=g-import-not-at-top
  from harmonax import input_pipeline  # pylint: disable=g-import-not-at-top
  config, networks = checkpoint.load_networks(_WORKDIR.value)
  (data, split, _), = evaluation.eval_sets(config).values()
  data.max_eval_examples = -1
  rows, index = [], 0
  for batch in input_pipeline.make_eval_iterator(data, 8, split):
    out = inference.harmonize(networks, batch["composite"], batch["mask"], config=config)
    for i in range(len(batch["composite"])):
      if batch["valid"][i] and index % _EVERY.value == 0:
        rows.append((str(batch["name"][i]), batch["composite"][i], out[i], batch["real"][i],
                     batch["mask"][i]))
      index += int(batch["valid"][i])
  s = _SCALE.value
  h, w = rows[0][1].shape[:2]
  label_h, gap = 14, 4
  grid = Image.new("RGB", (3 * w * s + 2 * gap, len(rows) * (h * s + label_h) + label_h),
                   "white")
  draw = ImageDraw.Draw(grid)
  for c, title in enumerate(("composite", "demo model", "real")):
    draw.text((c * (w * s + gap) + 2, 1), title, fill="black")
  for r, (name, comp, pred, real, mask) in enumerate(rows):
    y = label_h + r * (h * s + label_h)
    for c, image in enumerate((comp, pred, real)):
      tile = Image.fromarray(np.asarray(image, np.uint8)).resize((w * s, h * s), Image.NEAREST)
      grid.paste(tile, (c * (w * s + gap), y))
    draw.text((2, y + h * s + 1), f"{name.split('/v')[0]}: fMSE {fmse(comp, real, mask):.0f}"
              f" -> {fmse(pred, real, mask):.0f}", fill="black")
  grid.save(_OUTPUT.value, optimize=True)
  print(f"Wrote {_OUTPUT.value}: {len(rows)} rows")


if __name__ == "__main__":
  app.run(main)
