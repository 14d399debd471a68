"""Deep Image Compositing family, its baselines, the boundary evaluator, the
compositing library and compositing datasets through the input pipeline."""

import importlib
import io
import logging
import os

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from data_builders import datasets
from harmonax import blending
from harmonax import checkpoint
from harmonax import compositing
from harmonax import evaluation
from harmonax import input_pipeline
from harmonax import self_taught_lib as self_taught
from harmonax import torch_import
from harmonax import train
from harmonax.evaluators import boundary
from harmonax.models import deep_compositing as dc


def _config(variant="network", **model):
  config = importlib.import_module("configs.deep_compositing").get_config("runlocal")
  config.model.variant = variant
  config.model.update(model)
  return config


def _inputs(h=37, w=50, b=2, seed=0):
  rng = np.random.default_rng(seed)
  mask = np.zeros((b, h, w, 1), np.float32)
  mask[:, h // 4:3 * h // 4, w // 4:3 * w // 4] = 1.0
  return {"foreground": rng.uniform(0, 1, (b, h, w, 3)).astype(np.float32),
          "background": rng.uniform(0, 1, (b, h, w, 3)).astype(np.float32), "mask": mask}


@pytest.fixture(name="nets", scope="module")
def _nets():
  return dc.create_networks(_config(), nnx.Rngs(0))


def test_fusion_shapes_and_dense_multiscale_wiring(nets):
  config = _config()
  channels = config.model.assumption_fusion_channels  # (8, 16, 32)
  fusion = dc.FusionNet(channels, True, nnx.Rngs(0), zero_heads=True)
  # Level i fuses both streams (2 c_i) with every coarser decoder output.
  for i, c in enumerate(channels):
    assert fusion.decoder[i][0].in_features == 2 * c + sum(channels[i + 1:])
  sparse = dc.FusionNet(channels, dense=False, rngs=nnx.Rngs(0))
  assert [sparse.decoder[i][0].in_features for i in range(3)] == [2 * 8 + 16, 2 * 16 + 32, 64]
  x = _inputs()
  features = fusion.fg_encoder(jnp.concatenate([x["foreground"], x["mask"]], -1))
  assert [f.shape[1:] for f in features] == [(37, 50, 8), (19, 25, 16), (10, 13, 32)]
  # Zero-initialised band heads: the untrained network is alpha blending.
  out = nnx.jit(lambda f, a: f(a["foreground"], a["background"], a["mask"]))(fusion, x)
  np.testing.assert_allclose(np.asarray(out), blending.alpha_blend(
      x["foreground"], x["background"], x["mask"]), atol=1e-6)
  # The coarsest band reaches the full-resolution output, upsampled (smooth).
  coarse = dc.FusionNet(channels, True, nnx.Rngs(0), zero_heads=True)
  coarse.heads[2].bias[...] = jnp.ones(3)
  delta = np.asarray(coarse(x["foreground"], x["background"], x["mask"]) - out)
  np.testing.assert_allclose(delta, 1.0, atol=1e-5)


def test_alpha_head_softens_the_mask_it_blends_with():
  channels = _config().model.assumption_fusion_channels
  fusion = dc.FusionNet(channels, True, nnx.Rngs(0), zero_heads=True, alpha_head=True)
  x = _inputs()
  run = nnx.jit(lambda f, a: f(a["foreground"], a["background"], a["mask"]))
  alpha = lambda m: blending.alpha_blend(x["foreground"], x["background"], m)
  # Zero-initialised: no correction, the untrained network is alpha blending.
  np.testing.assert_allclose(np.asarray(run(fusion, x)), alpha(x["mask"]), atol=1e-6)
  fusion.alpha_head.bias[...] = jnp.full((1,), -0.25)  # alpha = clip(mask - 0.25, 0, 1).
  np.testing.assert_allclose(np.asarray(run(fusion, x)), alpha(x["mask"] * 0.75), atol=1e-5)
  assert _config().model.assumption_alpha_head  # The recipe's default.
  assert dc.FusionNet(channels, True, nnx.Rngs(0)).alpha_head is None


def test_predict_uses_given_mask_else_the_segmentation(nets):
  config = _config()
  x = _inputs()
  predict = nnx.jit(lambda n, i: dc.predict(config, n, i))
  given = np.asarray(predict(nets, x))
  compose = lambda m: np.asarray(dc.compose_with_mask(config, nets, x["foreground"],
                                                      x["background"], m))
  np.testing.assert_allclose(given, compose(x["mask"]), atol=1e-5)
  refined = jax.nn.sigmoid(dc.mask_logits(nets, jnp.asarray(x["foreground"]))[1])
  absent = np.asarray(predict(nets, {k: x[k] for k in ("foreground", "background")}))
  np.testing.assert_allclose(absent, compose(refined), atol=1e-5)
  assert np.abs(absent - given).max() > 1e-3
  mixed = dict(x)
  mixed["mask"] = x["mask"].copy()
  mixed["mask"][1] = -1.0  # Image 1 has no mask: predicted; image 0 keeps its own.
  out = np.asarray(predict(nets, mixed))
  np.testing.assert_allclose(out[0], given[0], atol=1e-6)
  np.testing.assert_allclose(out[1], absent[1], atol=1e-5)


def test_losses_train_each_network_and_freeze_by_config(nets):
  config = _config()
  x = _inputs(32, 32)
  x["real"] = np.clip(x["foreground"] * 0.5 + 0.2, 0, 1)
  losses, metrics, outputs = dc.compute_losses(config, nets, x, None)
  assert set(losses) == {"segmentation", "refinement", "fusion"}
  assert all(np.isfinite(float(v)) for v in (*losses.values(), *metrics.values()))
  assert outputs["harmonized"].shape == (2, 32, 32, 3)
  assert "perceptual" not in metrics  # No VGG weights: the term is off.
  assert set(dc.make_optimizers(config, 10)) == {"segmentation", "refinement", "fusion"}
  config.model.trained = ("fusion",)
  assert set(dc.make_optimizers(config, 10)) == {"fusion"}
  config.model.trained = ("decoder",)
  with pytest.raises(ValueError, match="valid"):
    dc.make_optimizers(config, 10)


def test_perceptual_loss_with_vgg_weights_from_config_init(tmp_path):
  torch = pytest.importorskip("torch")
  config = _config()
  config.init.vgg = os.fspath(tmp_path / "vgg16.pth")
  nets = dc.create_networks(config, nnx.Rngs(0))
  rng = np.random.default_rng(0)
  shapes = torch_import.expected_shapes(nets["vgg"])
  state = {k: torch.tensor(rng.normal(0, 0.05, s).astype(np.float32)) for k, s in shapes.items()}
  state["classifier.0.weight"] = torch.zeros(2, 2)  # Unused torchvision keys are dropped.
  torch.save(state, config.init.vgg)
  dc.load_pretrained(config, nets, dict(config.init))
  np.testing.assert_array_equal(np.asarray(nets["vgg"].features["0"].kernel[...]),
                                np.transpose(state["features.0.weight"].numpy(), (2, 3, 1, 0)))
  x = _inputs(32, 32)
  x["real"] = x["background"]
  _, metrics, _ = dc.compute_losses(config, nets, x, None)
  assert float(metrics["perceptual"]) > 0


def test_perceptual_term_off_without_vgg_weights_says_so(caplog):
  config = _config()
  assert config.loss.perceptual > 0 and not config.init.get("vgg")
  with caplog.at_level(logging.WARNING):
    dc.make_optimizers(config, 10)
  assert "perceptual term is OFF" in caplog.text and "--config.init.vgg" in caplog.text
  with pytest.raises(ValueError, match=r"deep_compositing: config.init names 'backbone'"):
    dc.load_pretrained(config, {}, {"backbone": "x.pth"})
  with pytest.raises(ValueError, match=r"only 'vgg'"):  # The term is off: no VGG network.
    dc.load_pretrained(config, dc.create_networks(config, nnx.Rngs(0)), {"vgg": "x.pth"})


@pytest.mark.parametrize("variant", blending.BLENDS)
def test_blend_variants_have_no_networks_and_say_so(variant):
  config = _config(variant)
  assert dc.create_networks(config, nnx.Rngs(0)) == {}
  with pytest.raises(ValueError, match="no networks to train"):
    dc.make_optimizers(config, 10)
  x = _inputs()
  out = dc.predict(config, {}, x)
  expected = blending.blend(variant, x["foreground"], x["background"], x["mask"],
                            feather_sigma=config.model.feather_sigma,
                            levels=config.model.pyramid_levels)
  np.testing.assert_allclose(np.asarray(out), np.asarray(expected), atol=1e-6)
  with pytest.raises(ValueError, match="give a mask"):
    dc.predict(config, {}, {k: x[k] for k in ("foreground", "background")})


def test_boundary_band_and_error():
  mask = np.zeros((1, 20, 20, 1), np.float32)
  mask[:, 5:15, 5:15] = 1.0
  b = np.asarray(boundary.band(mask, 2))[0, ..., 0]
  # Dilated 14x14 minus eroded 6x6 (k = 2, square element).
  assert b.sum() == 14 * 14 - 6 * 6 and b[10, 10] == 0 and b[5, 5] == 1 and b[0, 0] == 0
  real = np.full((1, 20, 20, 3), 100.0, np.float32)
  pred = real.copy()
  pred[:, 0, 0] = 0.0  # Outside the band: no boundary error.
  np.testing.assert_allclose(boundary.boundary_mse(pred, real, mask, 2), 0.0, atol=1e-9)
  pred[:, 5, 5] += 10.0  # One band pixel, all channels: 100 / 160 band pixels.
  np.testing.assert_allclose(boundary.boundary_mse(pred, real, mask, 2), 100 / 160, rtol=1e-5)


def _matting_folder(root):
  rng = np.random.default_rng(0)
  for sub in ("fg", "alpha", "bg"):
    os.makedirs(root / sub)
  for i in range(6):
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(
        root / "fg" / f"p{i}.png")
    matte = np.zeros((40, 48), np.uint8)
    matte[8:32, 10:36] = 255
    Image.fromarray(matte).save(root / "alpha" / f"p{i}.png")
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(
        root / "bg" / f"b{i}.png")


@pytest.fixture(name="data_config", scope="module")
def _data_config(tmp_path_factory):
  root = tmp_path_factory.mktemp("dic")
  _matting_folder(root / "manual")
  datasets.build("compositing_triplets/folder", os.fspath(root / "tfds"), os.fspath(root / "manual"))
  config = _config()
  config.data.name = "compositing_triplets/folder"
  config.data.data_dir = os.fspath(root / "tfds")
  config.data.image_size = 32
  return config.data


def test_input_pipeline_reads_the_families_image_keys(data_config):
  batch = next(input_pipeline.make_train_iterator(data_config, 2, 0))
  assert set(batch) == {"foreground", "background", "real", "mask"}
  assert batch["foreground"].shape == (2, 32, 32, 3) and batch["mask"].shape == (2, 32, 32, 1)
  assert batch["real"].dtype == np.uint8
  # real = alpha * fg + (1 - alpha) * bg survives the shared crop (hard matte
  # here): inside the mask the target is the foreground, up to resize rounding.
  m = batch["mask"] >= 255
  diff = np.abs(batch["foreground"].astype(int) - batch["real"].astype(int))
  assert m.any() and np.where(m, diff, 0).max() <= 2
  batches = list(input_pipeline.make_eval_iterator(data_config, 4))
  assert {"foreground", "background", "real", "mask", "valid", "name"} <= set(batches[0])
  assert "composite" not in batches[0]


def test_baselines_and_network_evaluate_through_the_same_path(data_config, tmp_path, nets):
  protocol = evaluation.protocol_of(_config())
  assert protocol.metrics == ("boundary",)
  results = {}
  for variant in ("alpha", "laplacian"):
    config = compositing.baseline_config(variant)
    config.data = data_config
    compositing.save_baseline(tmp_path / variant, config)
    loaded_config, networks = checkpoint.load_networks(tmp_path / variant)
    assert networks == {} and loaded_config.model.variant == variant
    records = list(evaluation.iterate_records(loaded_config, networks, data_config, "test", 4,
                                              protocol))
    assert records and all(np.isfinite(r["boundary_mse"]) for r in records)
    results[variant] = records
  # The identity ('composite_') row is the alpha blend with the given mask.
  assert all(abs(r["boundary_mse"] - r["composite_boundary_mse"]) < 1e-3
             for r in results["alpha"])
  config = _config()
  config.data = data_config
  records = list(evaluation.iterate_records(config, nets, data_config, "test", 4, protocol))
  assert {"mse", "psnr", "ssim", "boundary_mse", "composite_mse"} <= set(records[0])
  # The harmonization evaluator alone, without a 'composite' in the batch.
  alone = evaluation.protocol_of(config, metrics=("harmonization",))
  rec = next(evaluation.iterate_records(config, nets, data_config, "test", 4, alone))
  assert "mse" in rec and "composite_mse" not in rec


def test_compose_any_size_with_and_without_mask(nets):
  config = _config()
  rng = np.random.default_rng(3)
  fg = rng.integers(0, 256, (30, 41, 3), dtype=np.uint8)
  bg = rng.integers(0, 256, (25, 33, 3), dtype=np.uint8)
  mask = np.zeros((30, 41), bool)
  mask[5:20, 10:30] = True
  out = compositing.compose(nets, fg, bg, mask, config=config)
  assert out.shape == (25, 33, 3) and out.dtype == np.uint8
  assert compositing.compose(nets, fg, bg, config=config).shape == (25, 33, 3)
  lap = compositing.compose({}, fg, bg / 255.0, mask, config=compositing.baseline_config(
      "laplacian"))
  assert lap.dtype == np.float32 and lap.shape == (25, 33, 3)
  with pytest.raises(ValueError, match="does not match"):
    compositing.compose(nets, fg, bg, mask[:10], config=config)


def test_harmonize_command_composes_two_photos_with_a_soft_matte(tmp_path):
  from harmonax import image_io  # pylint: disable=g-import-not-at-top
  import fake_family  # pylint: disable=g-import-not-at-top
  config = compositing.baseline_config("laplacian")
  compositing.save_baseline(str(tmp_path / "laplacian"), config)
  rng = np.random.default_rng(5)
  fg = rng.integers(0, 256, (30, 41, 3), dtype=np.uint8)
  bg = rng.integers(0, 256, (25, 33, 3), dtype=np.uint8)
  matte = np.zeros((30, 41), np.uint8)
  matte[5:20, 10:30] = 255
  matte[5:20, 8:10] = 100  # A soft edge: kept as alpha 100/255, not thresholded.
  for name, image in (("fg.png", fg), ("bg.png", bg), ("matte.png", matte)):
    Image.fromarray(image).save(tmp_path / name)
  args = [f"--checkpoint={tmp_path / 'laplacian'}", f"--foreground={tmp_path / 'fg.png'}",
          f"--background={tmp_path / 'bg.png'}", f"--output={tmp_path / 'out.png'}"]
  proc = fake_family.run_cli("harmonize", args + [f"--mask={tmp_path / 'matte.png'}"],
                             register_fake=False)
  assert proc.returncode == 0, proc.stderr
  want = compositing.compose({}, fg, bg, matte.astype(np.float32) / 255.0, config=config)
  np.testing.assert_array_equal(image_io.read_image(tmp_path / "out.png"), want)
  assert not np.array_equal(want, compositing.compose({}, fg, bg, matte >= 128, config=config))
  # A blend has no segmentation network to predict the mask (in process: the
  # command's exit status for this ValueError is checked with the last case);
  # composites are for the harmonization families; the mask must be the
  # foreground photo's.
  with pytest.raises(ValueError, match="no segmentation network: give --mask"):
    compositing.compose_file(config, {}, str(tmp_path / "fg.png"), str(tmp_path / "bg.png"),
                             None, str(tmp_path / "unused.png"))
  assert not (tmp_path / "unused.png").exists()
  proc = fake_family.run_cli("harmonize", args + [f"--composite={tmp_path / 'bg.png'}"],
                             register_fake=False)
  assert proc.returncode != 0 and "give --foreground and --background" in proc.stderr
  Image.fromarray(matte[:20]).save(tmp_path / "small.png")
  proc = fake_family.run_cli("harmonize", args + [f"--mask={tmp_path / 'small.png'}"],
                             register_fake=False)
  assert proc.returncode == 1 and "small.png: mask is 41x20 but foreground" in proc.stderr


def test_read_matte_keeps_soft_values_in_every_mode():
  from data_builders import image_modes  # pylint: disable=g-import-not-at-top
  a = np.array([[0, 64, 128, 255]], np.uint8)
  want = (a / 255.0).astype(np.float32)[..., None]
  np.testing.assert_allclose(image_modes.mask_to_alpha(Image.fromarray(a)), want, atol=1e-6)
  np.testing.assert_allclose(image_modes.mask_to_alpha(Image.fromarray(a.astype(np.uint16) * 257)),
                             want, atol=1e-6)
  rgba = np.zeros((1, 4, 4), np.uint8)
  rgba[..., 3] = a
  np.testing.assert_allclose(image_modes.mask_to_alpha(Image.fromarray(rgba)), want, atol=1e-6)
  np.testing.assert_allclose(image_modes.mask_to_alpha(Image.fromarray(np.stack([a] * 3, -1))),
                             want, atol=1e-6)
  np.testing.assert_allclose(
      image_modes.mask_to_alpha(Image.fromarray(a.astype(np.float32) / 255.0)), want, atol=1e-6)


def _records(directory, split):
  builder = input_pipeline.get_builder(self_taught.DATASET, os.fspath(directory))
  return [dict(r) for r in builder.as_data_source(split=split)]


def _png(data):
  array = np.asarray(Image.open(io.BytesIO(data)))
  return array[..., None] if array.ndim == 2 else array


def test_self_taught_round_writes_harder_triplets_and_the_next_round_trains(
    data_config, tmp_path):
  config = _config()
  config.data = data_config.copy_and_resolve_references()
  round0 = dc.create_networks(config, nnx.Rngs(7))  # Not the trainer's seed-0 init.
  checkpoint.save_networks(tmp_path / "r0", config, round0)
  harder = ("mask", "foreground")
  info = self_taught.write_round(tmp_path / "r0", tmp_path / "r1", harder, bucket=32,
                                 max_examples=8)
  assert info["round"] == 1 and info["harder"] == list(harder)
  source = input_pipeline.get_builder(data_config.name, data_config.data_dir)
  raw = {s: [dict(r) for r in source.as_data_source(split=s)] for s in ("train", "test")}
  raw["train"] = raw["train"][:8]  # max_examples: the first eight (one batch).
  got = {s: sorted(_records(tmp_path / "r1", s), key=lambda r: r["name"]) for s in raw}
  assert info["examples"] == {s: len(raw[s]) for s in raw} == {s: len(got[s]) for s in raw}
  # The held-back test split is the source's, unchanged and in its order.
  by_name = lambda rows: sorted(rows, key=lambda r: r["name"])
  assert [r["name"] for r in _records(tmp_path / "r1", "test")] == [r["name"] for r in raw["test"]]
  for a, b in zip(by_name(raw["test"]), got["test"]):
    assert all(np.array_equal(a[k], b[k]) for k in ("foreground", "mask", "real", "alpha"))
  # Train: targets and backgrounds unchanged; the mask is the round-0 model's
  # refined mask and the foreground its composite with that mask (binarized).
  forward = nnx.jit(lambda n, fg, bg: (
      jax.nn.sigmoid(dc.mask_logits(n, fg)[1]),
      dc.compose_with_mask(config, n, fg, bg, (jax.nn.sigmoid(dc.mask_logits(n, fg)[1])
                                                >= 0.5).astype(jnp.float32))))
  for a, b in zip(by_name(raw["train"])[:3], got["train"][:3]):
    assert a["name"] == b["name"]
    for k in ("real", "alpha", "background"):
      np.testing.assert_array_equal(a[k], b[k])
    fg, bg = (a[k][None].astype(np.float32) / 255.0 for k in ("foreground", "background"))
    h, w = fg.shape[1:3]
    pad = lambda x: np.pad(x, ((0, 0), (0, -h % 32), (0, -w % 32), (0, 0)), mode="edge")
    mask, composite = (np.asarray(x)[0, :h, :w] * 255.0 for x in forward(round0, pad(fg), pad(bg)))
    assert np.abs(b["mask"].astype(float) - mask).max() <= 1.0
    assert np.abs(b["foreground"].astype(float) - composite).max() <= 1.0
    assert not np.array_equal(a["mask"], b["mask"])
  # Deterministic: a second write holds the same triplets.
  self_taught.write_round(tmp_path / "r0", tmp_path / "r1b", harder, bucket=32, max_examples=8)
  again = sorted(_records(tmp_path / "r1b", "train"), key=lambda r: r["name"])
  assert all(np.array_equal(a[k], b[k]) for a, b in zip(got["train"], again)
             for k in ("foreground", "mask", "real"))
  # The next round: the config points at the round's data, starts from round
  # 0's networks and trains the fusion network (one step of the real trainer).
  next_config = importlib.import_module("configs.deep_compositing").get_config(
      f"runlocal,self_taught={tmp_path / 'r1'}")
  assert next_config.data.name == self_taught.DATASET and next_config.model.trained == ["fusion"]
  assert self_taught.source_data(next_config) == (data_config.name, data_config.data_dir, 1)
  next_config.data.update(image_size=32, num_workers=0, max_eval_examples=4)
  next_config.update(total_steps=1, eval_every=0, checkpoint_every=1, log_every=1,
                     image_every=0)
  state = jax.device_get(train.train_and_evaluate(next_config, os.fspath(tmp_path / "w1")))
  assert int(state["step"]) == 1
  start = checkpoint.network_states(round0, nnx.Param)
  for name in ("segmentation", "refinement"):  # Frozen at round 0's.
    jax.tree.map(np.testing.assert_array_equal, state["params"][name], start[name])
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), state["params"]["fusion"],
                       start["fusion"])
  assert 0 < max(jax.tree.leaves(moved)) < 0.01  # One small step from round 0's.


def test_self_taught_refuses_bad_inputs_in_one_line(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    self_taught.write_round(tmp_path / "missing", tmp_path / "out")
  compositing.save_baseline(tmp_path / "alpha", compositing.baseline_config("alpha"))
  with pytest.raises(ValueError, match="need a deep_compositing 'network' model"):
    self_taught.write_round(tmp_path / "alpha", tmp_path / "out")
  with pytest.raises(ValueError, match="name one or more of"):
    self_taught.write_round(tmp_path / "alpha", tmp_path / "out", ("edges",))
  with pytest.raises(FileNotFoundError, match="not a self-taught round"):
    self_taught.read_round(tmp_path)
  with pytest.raises(FileNotFoundError, match="no self_taught.json"):
    importlib.import_module("configs.deep_compositing").get_config(f"self_taught={tmp_path}")
  import fake_family  # pylint: disable=g-import-not-at-top
  proc = fake_family.run_cli("self_taught", [f"--workdir={tmp_path / 'alpha'}",
                                             f"--output={tmp_path / 'out'}"],
                             register_fake=False)
  assert proc.returncode == 1, proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in proc.stderr
