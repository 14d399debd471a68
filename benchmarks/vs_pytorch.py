r"""harmonax against PyTorch, side by side: train step and inference per model.

  python benchmarks/vs_pytorch.py                      # every model, 1 and 2 threads
  python benchmarks/vs_pytorch.py --quick              # batch 4, 256 and 1024 only
  python benchmarks/vs_pytorch.py --models=issam --threads=2 --batches=4 --sizes=256

For each model and thread count, one child process builds the harmonax
family's networks (the full-size config, random weights) and a PyTorch twin
with the same architecture and loss (`benchmarks/torch_models/`), loads the
harmonax weights into the twin, checks that both predict the same image, and
then alternates harmonax, PyTorch, harmonax, ... : the trainer's jitted update
step (forward, gradients, Adam) against `loss.backward(); adam.step()` for each
batch size at 256x256 (PCT-Net and CDTNet: at their recipe's full-resolution
crop size, config.data.image_size, from which they make their low-resolution
view; --train_size overrides both), and the family's jitted `predict` against
the twin's forward pass (no grad) at each size, batch 1. Times are medians of `--repeats`
calls after one warm-up call (plus compilation), each call after `--pause` seconds of
sleep (see `alternate`). Both frameworks get the same
threads: the process is pinned to that many cores, `torch.set_num_threads`,
and XLA's CPU thread pool follows the affinity. XLA runs with the flags
harmonax's CLIs use (`harmonax.xla_setup`: oneDNN where supported).

Ratio = harmonax time / PyTorch time: below 1 means harmonax is faster. The
1-minute load average is recorded before and after every child: a ratio is
only meaningful on a quiet machine (an oversubscribed 2-thread PyTorch stalls).
Appends the table to benchmarks/results/vs_pytorch.md (--output), after the earlier runs.
"""

import argparse
import datetime
import importlib
import importlib.util
import inspect
import json
import os
import platform
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "vs_pytorch.md")
MODELS = ("idih", "issam", "harmonizer", "dovenet", "bargainnet", "pctnet_cnn", "pctnet_vit",
          "cdtnet", "hrnet_idih")
TWINS = {"idih": "dih", "issam": "dih", "harmonizer": "harmonizer",
         "dovenet": "gan", "bargainnet": "gan", "pctnet_cnn": "pctnet", "pctnet_vit": "pctnet",
         "cdtnet": "cdtnet", "hrnet_idih": "hrnet"}
# Families whose networks see a low-resolution view of full-resolution training
# crops: by default their train step runs at the recipe's crop size
# (config.data.image_size: PCT-Net 512, CDTNet 1024), not at 256.
FULL_RES_TRAIN = ("pctnet_cnn", "pctnet_vit", "cdtnet")


def load_config(name: str, arg: str = ""):
  """configs/<name>.py's config (full size unless arg, e.g. 'runlocal')."""
  path = os.path.join(ROOT, "configs", f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"config_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg or None)


def predict_fn(family, config):
  """(networks, composite, mask) -> image, for either family contract."""
  if "config" in inspect.signature(family.predict).parameters:
    return lambda nets, c, m: family.predict(config, nets, {"composite": c, "mask": m})
  return lambda nets, c, m: family.predict(nets, c, m)


PAUSE_S = 0.05


def alternate(fns: dict, repeats: int, pause_s: float | None = None) -> dict[str, float]:
  """Median seconds of each no-argument callable, called in turn.

  Sleeps `pause_s` (default PAUSE_S) before each timed call. Without the pause, each call ran
  while the other framework's idle worker threads still spun (PyTorch's libgomp
  threads spin-wait after a parallel region before they sleep) and took a core
  from it: on the 2-core CPU a 5 ms XLA product alternated with torch.bmm took
  7.0-7.9 ms, and 5.3-5.8 ms after a 50 ms pause or in runs of its own calls
  (BENCHMARKS.md). Calls of a second or more lose under 1% to this.
  """
  pause_s = PAUSE_S if pause_s is None else pause_s
  for fn in fns.values():
    fn()  # Warm-up (and compilation).
  times = {k: [] for k in fns}
  for _ in range(repeats):
    for k, fn in fns.items():
      time.sleep(pause_s)
      started = time.perf_counter()
      fn()
      times[k].append(time.perf_counter() - started)
  return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def child(args) -> None:
  """Measures one model at one thread count; prints RESULT lines (JSON)."""
  sys.path.insert(0, ROOT)
  cores = sorted(os.sched_getaffinity(0))[:args.threads]
  os.sched_setaffinity(0, cores)
  from harmonax import xla_setup  # pylint: disable=g-import-not-at-top
  xla_setup.configure()  # The CLIs' XLA flags, before JAX starts.
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from harmonax import inference, models, sharding, train  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(args.threads)
  twin = importlib.import_module(f"benchmarks.torch_models.{TWINS[args.models]}")

  config = load_config(args.models, args.config_arg)
  family = models.get_family(config.model.name)
  mesh = sharding.make_mesh()
  rng = np.random.default_rng(0)

  def batch_of(b, h, w):
    mask = np.zeros((b, h, w, 1), np.float32)
    mask[:, h // 4:3 * h // 4, w // 4:3 * w // 4] = 1.0
    return {"composite": rng.uniform(size=(b, h, w, 3)).astype(np.float32),
            "real": rng.uniform(size=(b, h, w, 3)).astype(np.float32), "mask": mask}

  to_torch = lambda x: torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  report = lambda **row: print("RESULT " + json.dumps(row), flush=True)

  train_size = args.train_size or (config.data.image_size if args.models in FULL_RES_TRAIN
                                   else 256)
  for b in [int(x) for x in args.batches.split(",") if x]:
    config.batch_size = b
    fns = train.make_train_fns(config, steps_per_epoch=1000)
    state = train.initial_state(fns, sharding.replicated(mesh))
    nets = fns.merge(state["params"], state["rest"])
    model = twin.build(config)
    getattr(twin, "load", load_twin)(model, nets)
    optimizers = getattr(twin, "make_optimizers", make_optimizers)(model, config)
    train_step = getattr(twin, "train_step", torch_train_step)
    local = batch_of(b, train_size, train_size)
    with jax.set_mesh(mesh):
      batch = sharding.global_batch(local, mesh)
      step = jax.jit(fns.train_step, donate_argnums=(0,))
      tbatch = {k: to_torch(v) for k, v in local.items()}
      gen = torch.Generator().manual_seed(0)
      model.train()
      holder = {"state": state}

      def jax_step():
        out = step(holder["state"], batch)
        holder["state"] = out[0]
        jax.block_until_ready(out[1])

      def torch_step():
        train_step(twin, model, optimizers, tbatch, gen)
      t = alternate({"harmonax": jax_step, "torch": torch_step}, args.repeats, args.pause)
    report(model=args.models, kind="train", batch=b, size=train_size, threads=args.threads,
           harmonax=t["harmonax"], torch=t["torch"])
    del state
    holder.clear()  # Frees the train state before the next batch size.

  sizes = [int(x) for x in args.sizes.split(",") if x]
  if sizes:
    nets, model = eval_pair(config, twin)
    # As `harmonize` calls it since 2026-12-01: the networks split once, not by
    # nnx.jit on every call (benchmarks/call_overhead.py; rows before then include that).
    predict = inference.jit_networks(predict_fn(family, config))
    for size in sizes:
      local = batch_of(1, size, size)
      comp, mask = jax.numpy.asarray(local["composite"]), jax.numpy.asarray(local["mask"])
      tcomp, tmask = to_torch(local["composite"]), to_torch(local["mask"])
      with torch.inference_mode():
        want = twin.predict(model, tcomp, tmask).numpy().transpose(0, 2, 3, 1)
      got = np.asarray(predict(nets, comp, mask))
      diff = float(np.abs(got - want).max())

      def torch_predict():
        with torch.inference_mode():
          twin.predict(model, tcomp, tmask)
      t = alternate({"harmonax": lambda: jax.block_until_ready(predict(nets, comp, mask)),
                     "torch": torch_predict}, args.repeats, args.pause)
      report(model=args.models, kind="inference", batch=1, size=size, threads=args.threads,
             harmonax=t["harmonax"], torch=t["torch"], max_abs_diff=diff)


def eval_pair(config, twin) -> tuple[dict, object]:
  """(networks, twin module): the trainer's networks for `config` (random
  weights) and the twin holding them, both in eval mode, for inference side by side."""
  from harmonax import train  # pylint: disable=g-import-not-at-top
  fns = train.make_train_fns(config, steps_per_epoch=1000)
  state = train.initial_state(fns)
  nets = fns.merge(state["params"], state["rest"])
  for net in nets.values():
    net.eval()
  model = twin.build(config)
  getattr(twin, "load", load_twin)(model, nets)
  model.eval()
  return nets, model


def load_twin(model, nets: dict) -> None:
  """A one-network family's variables into its twin (official names, strict)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from harmonax import torch_import  # pylint: disable=g-import-not-at-top
  (net,) = nets.values()
  state = {k: torch.from_numpy(np.array(v)) for k, v in torch_import.to_state_dict(net).items()}
  missing, unexpected = model.load_state_dict(state, strict=False)
  missing = [k for k in missing if not k.endswith("num_batches_tracked")]
  if missing or unexpected:
    raise ValueError(f"twin does not match: missing {missing[:5]}, unexpected {unexpected[:5]}")


def make_optimizers(model, config) -> list:
  """Adam with the config's learning rate and betas (one trained network)."""
  import torch  # pylint: disable=g-import-not-at-top
  o = config.optim
  return [torch.optim.Adam(model.parameters(), lr=o.lr, betas=(o.b1, o.b2),
                           eps=o.get("eps", 1e-8))]


def torch_train_step(twin, model, optimizers, batch, gen) -> None:
  """One network, one loss: zero_grad, backward, Adam."""
  (optimizer,) = optimizers
  optimizer.zero_grad(set_to_none=True)
  twin.train_loss(model, batch, gen).backward()
  optimizer.step()


def run_child(args, model: str, threads: int) -> list[dict]:
  command = [sys.executable, os.path.abspath(__file__), "--child", f"--models={model}",
             f"--threads={threads}", f"--batches={args.batches}", f"--sizes={args.sizes}",
             f"--repeats={args.repeats}", f"--train_size={args.train_size}",
             f"--config_arg={args.config_arg}", f"--pause={args.pause}"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  if threads == 1:  # XLA's CPU client: one intra-op thread.
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false "
                        "intra_op_parallelism_threads=1").strip()
  before = os.getloadavg()[0]
  try:
    out = subprocess.run(command, env=env, capture_output=True, text=True,
                         timeout=args.timeout, check=False)
    stdout, stderr = out.stdout, out.stderr
  except subprocess.TimeoutExpired as e:
    stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
    stderr = f"timed out after {args.timeout} s"
  rows = [json.loads(m) for m in re.findall(r"^RESULT (.*)$", stdout, re.M)]
  after = os.getloadavg()[0]
  for row in rows:
    row.update(load_before=before, load_after=after)
  if not rows or "Traceback" in stderr:
    print(f"  {model} {threads} thread(s): {stderr[-3000:]}", file=sys.stderr)
  return rows


def format_table(rows: list[dict], started: str, loads: tuple[float, float], args) -> str:
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from harmonax import xla_setup  # pylint: disable=g-import-not-at-top
  flags = " ".join(f for f in xla_setup.DEFAULT_FLAGS if xla_setup.flag_supported(f)) or "none"
  lines = [
      f"Measured {started} on {os.cpu_count()} CPU cores ({platform.machine()}), no GPU; "
      f"jax {jax.__version__} (XLA flags added by harmonax: `{flags}`), "
      f"PyTorch {torch.__version__}. 1-minute load average {loads[0]:.1f} at the start "
      f"and {loads[1]:.1f} at the end (per row: before/after its process). "
      "Medians after a warm-up, alternating harmonax and PyTorch in one process "
      f"with {args.pause:g} s of sleep before each call; "
      "random weights (the same in both), train = forward + backward + Adam.",
      "",
      "| model | measurement | threads | harmonax s | PyTorch s | ratio | load | "
      "max abs diff |",
      "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    what = (f"train {r['size']}, b{r['batch']}" if r["kind"] == "train"
            else f"inference {r['size']}, b1")
    diff = f"{r['max_abs_diff']:.1e}" if "max_abs_diff" in r else ""
    lines.append(f"| {r['model']} | {what} | {r['threads']} | {r['harmonax']:.3f} | "
                 f"{r['torch']:.3f} | {r['harmonax'] / r['torch']:.2f} | "
                 f"{r['load_before']:.1f}/{r['load_after']:.1f} | {diff} |")
  return "\n".join(lines) + "\n"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", default=",".join(MODELS))
  parser.add_argument("--threads", default="1,2")
  parser.add_argument("--batches", default="1,4,8")
  parser.add_argument("--sizes", default="256,1024,2048")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--train_size", type=int, default=0,
                      help="train crop size; 0: 256, or config.data.image_size for "
                      f"{', '.join(FULL_RES_TRAIN)}")
  parser.add_argument("--config_arg", default="",
                      help="config argument, e.g. 'runlocal' for a tiny smoke run")
  parser.add_argument("--quick", action="store_true",
                      help="batch 4 and sizes 256,1024 only (other flags still apply)")
  parser.add_argument("--pause", type=float, default=PAUSE_S,
                      help="seconds of sleep before each timed call (alternate())")
  parser.add_argument("--timeout", type=int, default=3600, help="seconds per child")
  parser.add_argument("--output", default=RESULTS)
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if ROOT not in sys.path:  # harmonax for format_table, when run as a script.
    sys.path.insert(0, ROOT)
  if args.child:
    args.threads = int(args.threads)
    child(args)
    return
  if args.quick:
    args.batches, args.sizes = "4", "256,1024"
  started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
  load_start = os.getloadavg()[0]
  rows = []
  for model in args.models.split(","):
    for threads in [int(t) for t in args.threads.split(",")]:
      new_rows = run_child(args, model, threads)
      for r in new_rows:
        print(json.dumps(r), flush=True)
      rows += new_rows
  table = format_table(rows, started, (load_start, os.getloadavg()[0]), args)
  print(table)
  from benchmarks import report  # pylint: disable=g-import-not-at-top
  report.append_table(args.output, "# harmonax / PyTorch, side by side", table)


if __name__ == "__main__":
  main()
