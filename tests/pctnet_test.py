"""PCT-Net: key lists and parameter counts, the colour transform, bicubic
upsampling, the fused full-resolution path, the Sobel loss, schedules, and
end-to-end parity with PyTorch forwards written from the official code."""

import importlib

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from harmonax import checkpoint
from harmonax import image_io
from harmonax import inference
from harmonax import torch_import
from harmonax import train
from harmonax import variables
from harmonax.models import layers
from harmonax.models import pct_contrastive
from harmonax.models import pct_ops
from harmonax.models import pctnet
from harmonax.models import vgg
from convert_test import read_key_list
from convert_test import torch_ssam
import fake_family
from models_dih_test import random_state_dict

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _config(variant, arg="runlocal", **model):
  config = importlib.import_module(f"configs.pctnet_{variant}").get_config(arg)
  config.model.update(model)
  return config


def _abstract(config):
  return nnx.eval_shape(lambda: pctnet.create_networks(config, variables.rngs(0)))


@pytest.mark.parametrize("variant, count", [("cnn", 2_185_736), ("vit", 4_809_896)])
def test_module_tree_and_parameter_count_equal_official(variant, count):
  net = _abstract(_config(variant, ""))["generator"]
  official = {k: s for k, s in read_key_list(f"pctnet_{variant}").items()
              if not k.endswith("num_batches_tracked")}
  assert torch_import.expected_shapes(net) == official
  params = nnx.to_flat_state(nnx.state(net, nnx.Param))
  assert sum(int(np.prod(v.shape)) for _, v in params) == count


# ----------------------------------------------------------------------------- transform


def _identity_map(variant, shape):
  """Parameters whose transform returns the [0, 1] input: M = diag(std), b = mean
  for the ImageNet-normalised CNN input, M = I, b = 0 for the ViT."""
  mean, std = pctnet._norm(variant)
  p = np.zeros(shape[:-1] + (12,), np.float32)
  for i in range(3):
    p[..., 4 * i] = std[i]
    p[..., 9 + i] = mean[i]
  return p


@pytest.mark.parametrize("variant", ["cnn", "vit"])
def test_identity_parameters_return_the_input(variant):
  rng = np.random.default_rng(0)
  config = _config(variant, chunk_pixels=64)
  image = rng.uniform(0, 1, (2, 19, 23, 3)).astype(np.float32)
  mask = rng.uniform(0, 1, (2, 19, 23, 1)).astype(np.float32)
  params = _identity_map(variant, (2, 8, 8, 3))
  attention = rng.uniform(0, 1, (2, 8, 8, 1)).astype(np.float32) if variant == "cnn" else None
  out = pctnet.full_resolution(config, jnp.asarray(params), attention, image, mask)
  np.testing.assert_allclose(out, image, atol=2e-6)


@pytest.mark.parametrize("variant", ["cnn", "vit"])
def test_identity_init_returns_the_composite_untrained(variant):
  # runlocal's identity_init: get_params starts as the identity transform (and
  # the CNN's attention map, which weights the transformed image, at 0.0025), so
  # the untrained model returns its input where the official init recolors it.
  assert not _config(variant, "").model.identity_init
  config = _config(variant)
  assert config.model.identity_init
  rng = np.random.default_rng(2)
  inputs = {"composite": jnp.asarray(rng.uniform(0, 1, (2, 96, 80, 3)), jnp.float32),
            "mask": jnp.asarray(rng.uniform(0, 1, (2, 96, 80, 1)) > 0.5, jnp.float32)}
  # Jitted: eagerly, each op of the initialisation and the forward pass would compile.
  predict = nnx.jit(lambda n, i: pctnet.predict(config, n, i))

  def create():
    nets = nnx.jit(lambda: pctnet.create_networks(config, variables.rngs(0)))()
    nets["generator"].eval()
    return nets

  nets = create()
  params, attention = nnx.jit(lambda g, c, m: pctnet.parameter_maps(config, g, c, m))(
      nets["generator"], inputs["composite"], inputs["mask"])
  np.testing.assert_allclose(params, _identity_map(variant, params.shape[:-1] + (3,)),
                             atol=1e-7)
  if variant == "cnn":
    assert 0.001 < np.asarray(attention).min() and np.asarray(attention).max() < 0.005
  np.testing.assert_allclose(predict(nets, inputs), inputs["composite"], atol=2e-6)
  config.model.identity_init = False
  official = predict(create(), inputs)
  assert np.abs(np.asarray(official) - np.asarray(inputs["composite"])).max() > 0.1


def test_affine_transform_is_row_major_m_then_bias():
  rng = np.random.default_rng(1)
  p = rng.standard_normal((5, 12)).astype(np.float32)
  x = rng.standard_normal((5, 3)).astype(np.float32)
  expected = np.einsum("nij,nj->ni", p[:, :9].reshape(5, 3, 3), x) + p[:, 9:]
  np.testing.assert_allclose(pct_ops.affine_transform(p, x), expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- bicubic


def _numpy_bicubic_1d(x, n_out, a=-0.75):
  """Independent reading of torch's bicubic along axis 0: Keys' kernel with
  a = -0.75 evaluated at the 4 distances, border indices clamped."""
  def kernel(d):
    d = abs(d)
    if d <= 1:
      return (a + 2) * d ** 3 - (a + 3) * d ** 2 + 1
    if d < 2:
      return a * d ** 3 - 5 * a * d ** 2 + 8 * a * d - 4 * a
    return 0.0
  n_in = x.shape[0]
  out = np.zeros((n_out,) + x.shape[1:])
  for i in range(n_out):
    src = (i + 0.5) * n_in / n_out - 0.5
    base = int(np.floor(src))
    for k in range(base - 1, base + 3):
      out[i] += kernel(src - k) * x[min(max(k, 0), n_in - 1)]
  return out


@pytest.mark.parametrize("src, dst", [((6, 9), (17, 31)), ((16, 12), (5, 7)), ((8, 8), (8, 8))])
def test_bicubic_equals_numpy_kernel_and_torch(src, dst):
  x = np.random.default_rng(2).standard_normal((2,) + src + (3,)).astype(np.float32)
  ours = np.asarray(pct_ops.resize_bicubic(jnp.asarray(x), dst))
  ref = _numpy_bicubic_1d(np.moveaxis(x, 1, 0), dst[0])
  ref = np.moveaxis(_numpy_bicubic_1d(np.moveaxis(ref, 2, 0), dst[1]), 0, 2)
  np.testing.assert_allclose(ours, np.moveaxis(ref, 0, 1), atol=1e-5)
  theirs = F.interpolate(torch.from_numpy(x.transpose(0, 3, 1, 2)), size=dst, mode="bicubic",
                         align_corners=False).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_jax_cubic_differs_from_torch_bicubic():
  # Why pct_ops has its own resize: jax.image.resize's 'cubic' is a = -0.5.
  x = jnp.asarray(np.random.default_rng(3).standard_normal((1, 6, 6, 1)), jnp.float32)
  ours = pct_ops.resize_bicubic(x, (15, 15))
  assert np.abs(jax.image.resize(x, (1, 15, 15, 1), "cubic") - ours).max() > 1e-2


@pytest.mark.parametrize("chunk_pixels", [10_000, 3 * 23, 5 * 23])
def test_fused_full_resolution_equals_upsample_then_apply(chunk_pixels):
  rng = np.random.default_rng(4)
  config = _config("cnn", chunk_pixels=chunk_pixels)  # one chunk; 3 rows; 5 rows (shifted last)
  image = rng.uniform(0, 1, (2, 21, 23, 3)).astype(np.float32)
  mask = rng.uniform(0, 1, (2, 21, 23, 1)).astype(np.float32)
  params = rng.normal(0, 0.5, (2, 8, 8, 12)).astype(np.float32)
  attention = rng.uniform(0, 1, (2, 8, 8, 1)).astype(np.float32)
  out = jax.jit(lambda p, a, x, m: pctnet.full_resolution(config, p, a, x, m))(
      params, attention, image, mask)
  up = np.asarray(pct_ops.resize_bicubic(jnp.asarray(params), (21, 23)))
  a = np.asarray(pct_ops.resize_bicubic(jnp.asarray(attention), (21, 23)))
  y = np.clip(np.einsum("bhwij,bhwj->bhwi", up[..., :9].reshape(2, 21, 23, 3, 3),
                        np.asarray(layers.imagenet_normalize(image))) + up[..., 9:], 0, 1)
  np.testing.assert_allclose(out, a * y + (1 - a) * image, atol=1e-5)


# ----------------------------------------------------------------------------- losses


def test_sobel_matches_kornia_definition():
  x = np.random.default_rng(5).standard_normal((2, 7, 9, 3)).astype(np.float32)
  kx = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float64) / 8
  p = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
  gx, gy = np.zeros(x.shape), np.zeros(x.shape)
  for i in range(7):
    for j in range(9):
      window = p[:, i:i + 3, j:j + 3]  # cross-correlation, as conv2d
      gx[:, i, j] = np.einsum("bhwc,hw->bc", window, kx)
      gy[:, i, j] = np.einsum("bhwc,hw->bc", window, kx.T)
  expected = np.sqrt(gx ** 2 + gy ** 2 + 1e-6)
  np.testing.assert_allclose(pct_ops.sobel_magnitude(x), expected, rtol=1e-5, atol=1e-6)


def test_compute_losses_is_fn_mse_plus_smoothness():
  config = _config("vit", low_res=16, dim=16, ffn=16, num_layers=1)
  nets = _abstract(config)
  torch_import.load_into(nets["generator"], random_state_dict(
      torch_import.expected_shapes(nets["generator"]), 6))
  nets["generator"].eval()
  rng = np.random.default_rng(7)
  batch = {k: rng.uniform(0, 1, (2, 24, 24, 1 if k == "mask" else 3)).astype(np.float32)
           for k in ("composite", "mask", "real")}
  losses, metrics, outputs = pctnet.compute_losses(config, nets, batch, jax.random.key(0))
  pred = np.asarray(pctnet.predict(config, nets, batch))
  np.testing.assert_allclose(outputs["harmonized"], pred, atol=1e-6)
  params, _ = pctnet.parameter_maps(config, nets["generator"], batch["composite"], batch["mask"])
  area = np.maximum(batch["mask"].sum((1, 2, 3)), 1000.0)
  full = np.asarray(pctnet.full_resolution(config, params, None, batch["composite"],
                                           batch["mask"]))
  fn_mse = np.mean(((full - batch["real"]) ** 2).sum((1, 2, 3)) / (3 * area))
  np.testing.assert_allclose(metrics["fn_mse"], fn_mse, rtol=1e-5)
  smooth = np.mean(pct_ops.sobel_magnitude(params))
  np.testing.assert_allclose(losses["generator"], fn_mse + 0.1 * smooth, rtol=1e-5)
  assert "contrastive" not in metrics  # No config.init.vgg: the term is off.


def test_vit_schedule_is_constant_then_linear_per_epoch():
  config = _config("vit", "")
  config.batch_size = 32  # lr x 2
  opt = pctnet.make_optimizers(config, steps_per_epoch=10)["generator"]
  state = opt.init({"w": jnp.zeros(())})
  lrs = []  # lrs[i]: the rate of update i.
  for _ in range(1000):
    _, state = opt.update({"w": jnp.ones(())}, state)
    lrs.append(float(state.hyperparams["learning_rate"]))
  np.testing.assert_allclose([lrs[0], lrs[499], lrs[500], lrs[509], lrs[510], lrs[999]],
                             [2e-4, 2e-4, 2e-4, 2e-4, 2e-4 * 0.98, 2e-4 * 0.02], rtol=1e-5)


def test_contrastive_term_is_off_without_vgg_weights(caplog):
  config = _config("cnn")
  assert config.loss.contrastive == 0.01 and not config.init.vgg
  assert set(pctnet.make_optimizers(config, 10)) == {"generator"}
  assert "contrastive term is OFF" in caplog.text
  assert set(_abstract(config)) == {"generator"}


# ----------------------------------------------------------------------------- contrastive


def _torch_scs_cr(f, f_plus, f_minus, b_plus):
  """The official SCS_CR_loss.forward from its features (NCHW), as written."""
  d = torch.nn.L1Loss()

  def gram(m1, m2):
    c = m1.shape[1]
    return torch.stack([a.view(c, -1).T @ b.view(c, -1) for a, b in zip(m1, m2)])

  ss = d(f, f_plus) / (d(f, f_plus) + torch.sum(torch.tensor([d(f, m) for m in f_minus]))
                       + 1e-8)
  c, c_plus = gram(f, b_plus), gram(f_plus, b_plus)
  c_minus = [gram(m, b_plus) for m in f_minus]
  cs = d(c, c_plus) / (d(c, c_plus) + torch.sum(torch.tensor([d(c, m) for m in c_minus]))
                       + 1e-8)
  return ss + cs


@pytest.mark.filterwarnings("ignore:Converting a tensor")  # The official torch.tensor([...]).
def test_contrastive_from_features_equals_torch_value_and_gradient():
  rng = np.random.default_rng(11)
  f, f_plus, b_plus, *f_minus = (rng.standard_normal((2, 3, 4, 8)).astype(np.float32)
                                 for _ in range(6))
  value, grad = jax.value_and_grad(pct_contrastive.from_features)(f, f_plus, f_minus, b_plus)
  tf = _nchw(f).requires_grad_()
  theirs = _torch_scs_cr(tf, _nchw(f_plus), [_nchw(m) for m in f_minus], _nchw(b_plus))
  theirs.backward()  # The negatives' distances are detached (torch.tensor).
  np.testing.assert_allclose(value, theirs.item(), rtol=1e-5)
  np.testing.assert_allclose(grad, tf.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-9)


def _torch_transfer_chrom(inp, src):
  """color_transfer.transfer_chrom as written (device calls dropped), [3, N]."""
  m_i, m_s = inp.mean(1), src.mean(1)
  s_i = torch.maximum(torch.cov(inp), 7.5 * torch.eye(3, dtype=inp.dtype))
  s_s = torch.maximum(torch.cov(src), 7.5 * torch.eye(3, dtype=inp.dtype))
  w_i, v_i = torch.linalg.eigh(s_i)
  w_i[w_i < 0] = 0
  da = torch.diag(torch.sqrt(w_i + 1e-10))
  c = da @ v_i.T @ s_s @ v_i @ da
  w_c, v_c = torch.linalg.eigh(c)
  w_c[w_c < 0] = 0
  dc = torch.diag(torch.sqrt(w_c + 1e-10))
  da_inv = torch.diag(1 / torch.diag(da))
  t = v_i @ da_inv @ v_c @ dc @ v_c.T @ da_inv @ v_i.T
  return t @ (inp - m_i[:, None]) + m_s[:, None]


def test_negative_colour_transfers_equal_official_definitions():
  rng = np.random.default_rng(12)
  rgb = rng.uniform(0, 1, (2, 300, 3)).astype(np.float32)
  to_lab = jax.jit(pct_contrastive.rgb_to_lab)  # jit: eager dispatch is slower here.
  lab = np.asarray(to_lab(rgb))
  np.testing.assert_allclose(jax.jit(pct_contrastive.lab_to_rgb)(lab), rgb, atol=2e-4)
  np.testing.assert_allclose(to_lab(np.ones((2, 300, 3), np.float32))[0, 0], [100, 0, 0],
                             atol=1e-2)  # kornia's matrix rows sum to D65 within 5e-3.
  skimage_color = pytest.importorskip("skimage.color")
  np.testing.assert_allclose(lab, skimage_color.rgb2lab(rgb.astype(np.float64)), atol=0.05)
  ours = jax.jit(pct_contrastive.transfer_chrom)(lab[0], lab[1])
  theirs = _torch_transfer_chrom(torch.from_numpy(lab[0].T.astype(np.float64)),
                                 torch.from_numpy(lab[1].T.astype(np.float64)))
  np.testing.assert_allclose(ours, theirs.numpy().T, rtol=1e-3, atol=1e-2)
  # The grid fit of the tone curve is at least as good as the official Nelder-Mead.
  scipy_optimize = pytest.importorskip("scipy.optimize")
  x = np.sort(rng.uniform(0, 1, 32)).astype(np.float32)
  y = np.clip(x ** 0.6 + 0.02 * rng.standard_normal(32), 0, 1).astype(np.float32)
  p0, p1 = jax.jit(pct_contrastive.fit_tone_curve)(x, y)

  def objective(p):  # color_transfer.np_transfer_func's least squares.
    t = np.arctan(p[0] / p[1])
    curve = (t + np.arctan((x - p[0]) / p[1])) / (t + np.arctan((1 - p[0]) / p[1]))
    return float(np.sum((curve - y) ** 2))

  official = min(scipy_optimize.minimize(objective, r, method="Nelder-Mead",
                                         bounds=((0, 1), (1e-10, 1))).fun
                 for r in np.random.default_rng(0).random((5, 2)))
  assert objective((p0, p1)) <= official * 1.05 + 1e-6


def test_negatives_are_the_composite_then_recoloured_foregrounds():
  rng = np.random.default_rng(13)
  real, composite = (rng.uniform(-1, 1, (4, 12, 12, 3)).astype(np.float32) for _ in range(2))
  mask = np.zeros((4, 12, 12, 1), np.float32)
  mask[:, 3:9, 2:10] = 1.0
  negs = np.asarray(jax.jit(pct_contrastive.negatives, static_argnums=4)(
      real, composite, mask, jax.random.key(0), 3))
  assert negs.shape == (3, 4, 12, 12, 3) and np.isfinite(negs).all()
  np.testing.assert_array_equal(negs[0], composite)
  background = np.broadcast_to(mask == 0, negs[1:].shape)
  np.testing.assert_allclose(negs[1:][background], np.broadcast_to(real, negs[1:].shape)[
      background], atol=1e-6)
  fg = (1 - background).astype(bool)
  assert np.abs(negs[1:][fg]).max() <= 1.0 + 1e-6  # (rgb - 0.5) / 0.5 of clipped RGB.
  assert not np.allclose(negs[1:][fg], np.broadcast_to(real, negs[1:].shape)[fg])


def _torch_vgg_features(sd, x, last=21):
  """torchvision vgg16().features[:last + 2] from a state dict (NCHW)."""
  for i, _, _ in vgg.CONVS:
    if i > last:
      break
    x = F.relu(F.conv2d(x, sd[f"features.{i}.weight"], sd[f"features.{i}.bias"], padding=1))
    if i in (2, 7, 14):
      x = F.max_pool2d(x, 2, 2)
  return x


def test_vgg16_relu4_3_loads_torchvision_state_dict_and_matches_torch(tmp_path):
  config = _config("vit", low_res=16, dim=16, ffn=16, num_layers=1)
  config.init.vgg = str(tmp_path / "vgg16.pth")
  nets = pctnet.create_networks(config, nnx.Rngs(0))
  rng = np.random.default_rng(14)
  shapes = {f"features.{i}.{k}": (o, c, 3, 3) if k == "weight" else (o,)
            for i, c, o in vgg.CONVS for k in ("weight", "bias")}  # All 13 convs.
  state = {k: torch.from_numpy(rng.normal(0, 0.05, s).astype(np.float32))
           for k, s in shapes.items()}
  state["classifier.0.weight"] = torch.zeros(4, 4)  # Unused torchvision keys are dropped.
  torch.save(state, config.init.vgg)
  pctnet.load_pretrained(config, nets, dict(config.init))
  assert set(torch_import.expected_shapes(nets["vgg"])) == {
      k for k in shapes if int(k.split(".")[1]) <= 21}
  x = rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  (ours,) = nets["vgg"](x)
  theirs = _torch_vgg_features(state, _nchw(x)).numpy().transpose(0, 2, 3, 1)
  assert ours.shape == (2, 4, 4, 512)
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def test_contrastive_train_step_updates_the_generator_not_vgg():
  config = _config("vit", low_res=32, dim=16, ffn=16, num_layers=1)
  config.init.vgg = "vgg16.pth"  # Switches the term on; the file is read by load_pretrained.
  config.batch_size = 3
  fns = train.make_train_fns(config, steps_per_epoch=10)
  assert fns.trained == ["generator"] and "vgg" in fns.networks
  rng = np.random.default_rng(15)
  batch = {k: rng.uniform(0, 1, (3, 40, 40, 1 if k == "mask" else 3)).astype(np.float32)
           for k in ("composite", "mask", "real")}
  state = jax.jit(fns.init_state)()
  before = jax.tree.map(np.asarray, state["params"])
  state, metrics = jax.jit(fns.train_step)(state, batch)
  assert bool(metrics["finite"]) and 0 < float(metrics["contrastive"]) < 2
  jax.tree.map(np.testing.assert_array_equal, before["vgg"], state["params"]["vgg"])
  moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), before["generator"],
                       state["params"]["generator"])
  assert any(jax.tree.leaves(moved))


# ----------------------------------------------------------------------------- torch parity


def _torch_pct(params, attention, image, mean, std):
  """The official full-resolution branch: bicubic map, Linear_PCT on the
  normalised input, clamp, normalise, blend (attention map or mask)."""
  n, _, h, w = image.shape
  mean, std = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]
  x = (image - mean) / std
  p = F.interpolate(params, size=(h, w), mode="bicubic")
  a = F.interpolate(attention, size=(h, w), mode="bicubic") if attention.shape[-1] != w \
      else attention
  xs = x.movedim(1, -1).reshape(n, -1, 3, 1)
  m = p[:, :9].movedim(1, -1).reshape(n, -1, 3, 3)
  y = (m @ xs + p[:, 9:].movedim(1, -1).reshape(n, -1, 3, 1)).reshape(n, h, w, 3).movedim(-1, 1)
  y = (torch.clamp(y, 0, 1) - mean) / std
  out = y * a + x * (1 - a)
  return torch.clamp(out * std + mean, 0, 1)


def _inputs(h, w, seed):
  rng = np.random.default_rng(seed)
  image = rng.uniform(0, 1, (2, h, w, 3)).astype(np.float32)
  mask = np.zeros((2, h, w, 1), np.float32)
  mask[:, h // 4:3 * h // 4, w // 3:] = 1.0
  return image, mask


def _nchw(x):
  return torch.from_numpy(x.transpose(0, 3, 1, 2))


def test_cnn_matches_torch_forward():
  config = _config("cnn", low_res=32, chunk_pixels=200)
  nets = _abstract(config)
  state = random_state_dict(torch_import.expected_shapes(nets["generator"]), 8)
  (graph_state,) = pctnet.convert_torch({"default": state}, config).values()
  nnx.update(nets["generator"], graph_state)
  nets["generator"].eval()
  image, mask = _inputs(40, 52, 9)
  ours = nnx.jit(lambda n, x, m: pctnet.predict(config, n, {"composite": x, "mask": m}))(
      nets, image, mask)
  sd = {k: torch.from_numpy(v) for k, v in state.items()}
  lr_image = F.interpolate(_nchw(image), size=(32, 32), mode="bilinear")
  lr_mask = F.interpolate(_nchw(mask), size=(32, 32), mode="bilinear")
  normed = (lr_image - torch.tensor(layers.IMAGENET_MEAN)[:, None, None]) / torch.tensor(
      layers.IMAGENET_STD)[:, None, None]
  feats = torch_ssam(sd, normed, lr_mask, features=True)
  params = F.conv2d(feats, sd["get_params.weight"], sd["get_params.bias"])
  attention = torch.sigmoid(3 * F.conv2d(feats, sd["decoder.conv_attention.weight"],
                                         sd["decoder.conv_attention.bias"]))
  theirs = _torch_pct(params, attention, _nchw(image), layers.IMAGENET_MEAN, layers.IMAGENET_STD)
  np.testing.assert_allclose(ours, theirs.numpy().transpose(0, 2, 3, 1), atol=2e-4)


def test_vit_matches_torch_forward():
  einops_torch = pytest.importorskip("einops.layers.torch")
  config = _config("vit", low_res=16, dim=32, heads=2, num_layers=2, ffn=64)
  torch.manual_seed(0)
  p = 4
  encoder = torch.nn.Module()
  encoder.patch_to_embedding = torch.nn.Sequential(
      einops_torch.Rearrange("b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=p, p2=p),
      torch.nn.Linear(p * p * 4, 32))
  encoder.transformer_enc = torch.nn.TransformerEncoder(
      torch.nn.TransformerEncoderLayer(32, nhead=2, dim_feedforward=64, activation="gelu"),
      num_layers=2, enable_nested_tensor=False)
  encoder.dec = torch.nn.Sequential(torch.nn.ConvTranspose2d(32, 12, p, stride=p), torch.nn.Tanh())
  model = torch.nn.Module()
  model.encoder, model.get_params = encoder, torch.nn.Conv2d(12, 12, 1)
  model.eval()
  state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  nets = _abstract(config)
  nnx.update(nets["generator"], pctnet.convert_torch({"generator": state}, config)["generator"])
  nets["generator"].eval()
  image, mask = _inputs(24, 20, 10)
  ours = nnx.jit(lambda n, x, m: pctnet.predict(config, n, {"composite": x, "mask": m}))(
      nets, image, mask)
  with torch.no_grad():
    x = torch.cat([F.interpolate(_nchw(image), size=(16, 16), mode="bilinear"),
                   F.interpolate(_nchw(mask), size=(16, 16), mode="bilinear")], 1)
    emb = encoder.patch_to_embedding(x)
    content = encoder.transformer_enc(emb.permute(1, 0, 2))
    grid = content.permute(1, 2, 0).reshape(2, 32, 4, 4)
    params = model.get_params(encoder.dec(grid))
    theirs = _torch_pct(params, _nchw(mask), _nchw(image), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
  np.testing.assert_allclose(ours, theirs.numpy().transpose(0, 2, 3, 1), atol=2e-5)


@pytest.mark.parametrize("n,block", [(64, 16), (48, 16), (12, 16), (40, 16)])
def test_blockwise_attention_equals_whole_softmax_attention(n, block):
  # Blocks of queries (n = 64, 48), and the whole product where blocks do not fit
  # (12 <= block) or divide (40): the same values, on a batch-sharded input.
  from harmonax import sharding  # pylint: disable=g-import-not-at-top
  from harmonax.models import pctnet_vit  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(n)
  q, k, v = (rng.normal(0, 2, (8, n, 2, 8)).astype(np.float32) for _ in range(3))
  logits = np.einsum("bqhc,bkhc->bhqk", q, k) / np.sqrt(8)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  expected = np.einsum("bhqk,bkhc->bqhc", weights / weights.sum(-1, keepdims=True), v)
  mesh = sharding.make_mesh()
  with jax.set_mesh(mesh):
    q, k, v = (sharding.global_batch({"x": x}, mesh)["x"] for x in (q, k, v))
    ours = jax.jit(lambda *a: pctnet_vit.blockwise_attention(*a, block=block))(q, k, v)
  np.testing.assert_allclose(np.asarray(ours), expected, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- command line


def test_harmonize_command_line_runs_the_full_resolution_path(tmp_path):
  # 600x400 through the 32 view and the fused full-resolution apply; the 4K
  # run of the same command is in BENCHMARKS.md.
  config = _config("vit", low_res=32, dim=16, ffn=16, num_layers=1, chunk_pixels=1 << 15,
                   identity_init=False)  # A random map: the output must change.
  checkpoint.save_networks(tmp_path / "ckpt", config,
                           pctnet.create_networks(config, nnx.Rngs(0)))
  rng = np.random.default_rng(16)
  composite = rng.integers(0, 256, (400, 600, 3), np.uint8)
  mask = np.zeros((400, 600), np.uint8)
  mask[100:300, 150:500] = 255
  image_io.write_image(tmp_path / "c.png", composite)
  image_io.write_image(tmp_path / "m.png", mask[..., None].repeat(3, -1))
  result = fake_family.run_cli("harmonize", [
      f"--checkpoint={tmp_path / 'ckpt'}", f"--composite={tmp_path / 'c.png'}",
      f"--mask={tmp_path / 'm.png'}", f"--output={tmp_path / 'out.png'}"], register_fake=False)
  assert result.returncode == 0, result.stderr[-3000:]
  out = image_io.read_image(tmp_path / "out.png")
  loaded_config, nets = checkpoint.load_networks(tmp_path / "ckpt")
  np.testing.assert_array_equal(out, inference.harmonize(nets, composite, mask,
                                                         config=loaded_config))
  np.testing.assert_array_equal(out[mask == 0], composite[mask == 0])
  assert np.abs(out[mask > 0].astype(int) - composite[mask > 0]).max() > 0
