r"""Harmonizes a photo through an exported ONNX file with onnxruntime alone (no JAX).

  python -m harmonax.export --checkpoint=/tmp/issam_official --format=onnx \
      --output=/tmp/issam_256x256_uint8.onnx --height=256 --width=256 --input_dtype=uint8
  python benchmarks/onnx_harmonize.py /tmp/issam_256x256_uint8.onnx photo.jpg mask.png out.png

Needs only numpy, Pillow and onnxruntime. The composite and mask are resized to
the file's fixed size (a dynamic file takes them as they are); prints the
median latency of --repeats runs after one warm-up.
"""

import argparse
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort
from PIL import Image


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("model")
  parser.add_argument("composite")
  parser.add_argument("mask")
  parser.add_argument("output")
  parser.add_argument("--repeats", type=int, default=10)
  args = parser.parse_args()

  session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
  spec = session.get_inputs()[0]
  _, height, width, _ = spec.shape
  uint8 = spec.type == "tensor(uint8)"
  composite = Image.open(args.composite).convert("RGB")
  mask = Image.open(args.mask).convert("L")
  if isinstance(height, int):  # A fixed-size file.
    composite = composite.resize((width, height), Image.BILINEAR)
    mask = mask.resize((width, height), Image.NEAREST)
  comp = np.asarray(composite)[None]
  msk = np.asarray(mask)[None, ..., None]
  if not uint8:
    comp, msk = comp.astype(np.float32) / 255.0, msk.astype(np.float32) / 255.0
  feeds = {"composite": comp, "mask": msk}
  out = session.run(None, feeds)[0]  # Warm-up.
  times = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    out = session.run(None, feeds)[0]
    times.append(time.perf_counter() - start)
  image = out[0] if uint8 else np.round(out[0] * 255.0).astype(np.uint8)
  Image.fromarray(image).save(args.output)
  assert "jax" not in sys.modules, "this example must not need JAX"
  print(f"{comp.shape[2]}x{comp.shape[1]}: median {statistics.median(times) * 1e3:.1f} ms "
        f"over {args.repeats} runs (onnxruntime {ort.__version__}, CPU)")


if __name__ == "__main__":
  main()
