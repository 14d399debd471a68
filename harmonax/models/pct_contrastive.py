"""PCT-Net's contrastive term (official `SCS_CR_loss`, iharm/model/losses.py).

What the official code does (rakutentech/PCT-Net-Image-Harmonization):
- iharm/engine/PCTNet_trainer.py `add_loss('contrastive_loss', ...)` calls it
  on the LOW-RESOLUTION tensors: pred = the network's 256 output `images`,
  gt = `target_images`, mask = `masks`, composition = the input `images`, all in
  the model's normalised space (CNN: ImageNet mean/std; ViT: mean 0, std 1);
  models/PCTNet_{CNN,ViT}.py weight it 0.01.
- Features: torchvision `vgg16(pretrained=True).features[:23]`, i.e. up to
  relu4_3, fed the masked tensors as they are (no further normalisation):
  f = V(pred m), f+ = V(gt m), f-_k = V(neg_k m), b+ = V(gt (1 - m)).
- D = nn.L1Loss (mean absolute difference over the whole batch).
  SS-CR = D(f, f+) / (D(f, f+) + sum_k D(f, f-_k) + 1e-8); CS-CR is the same
  ratio on Gram matrices G(x) = x_n^T b+_n per image ([HW, HW]: `view(512, -1).T
  @ view(512, -1)`). The loss is SS-CR + CS-CR. The negatives' distances go
  through `torch.tensor([...])`, which DETACHES them: only D(f, f+) (numerator
  and denominator) carries gradient. `ratio` below keeps that.
- k = min(5, batch - 1) negatives per image: the composite itself and k - 1
  re-colourings of the ground truth's foreground (`create_negative_samples`,
  no gradient): gt -> inverse ImageNet normalisation (also for the ViT, whose
  inputs are not ImageNet-normalised: a quirk kept) -> x^2.2 -> kornia Lab ->
  L stretched to its 5-95 % range x 100 (`color_transfer.pre_process`) ->
  a, b from the Monge-Kantorovich linear transfer of the whole image's Lab
  covariance (diagonal floor 7.5, `transfer_chrom`) towards another image of
  the batch, L from `transfer_lum` (an arctan tone curve fitted to 32
  luminance quantiles) -> kornia Lab -> RGB (clipped) -> x^(1/2.2) ->
  normalised with mean 0.5, std 0.5 (not the model's normalisation: a quirk
  kept) -> pasted on the gt background. The partners are drawn without
  replacement among the other images of the batch.
Deviation: `transfer_lum` fits its two curve parameters with scipy's
Nelder-Mead from a random start; here a deterministic two-level grid search
over the same bounds minimises the same objective (jit-able, no host calls).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

_GAMMA = 2.2
_WHITE = np.array([0.95047, 1.0, 1.08883], np.float32)
_RGB_TO_XYZ = np.array([[0.412453, 0.357580, 0.180423],
                        [0.212671, 0.715160, 0.072169],
                        [0.019334, 0.119193, 0.950227]], np.float32)
_XYZ_TO_RGB = np.array([[3.2404813432005266, -1.5371515162713185, -0.4985363261688878],
                        [-0.9692549499965682, 1.8759900014898907, 0.0415559265582928],
                        [0.0556466391351772, -0.2040413383665112, 1.0573110696453443]],
                       np.float32)
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
_LUM_SAMPLES, _LUM_BINS, _LUM_TAU = 32, 256, 0.4  # transfer_lum's defaults.


def rgb_to_lab(rgb: jax.Array) -> jax.Array:
  """kornia.color.rgb_to_lab on [..., 3] sRGB in [0, 1]."""
  lin = jnp.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
  xyz = lin @ _RGB_TO_XYZ.T / _WHITE
  f = jnp.where(xyz > 0.008856, jnp.maximum(xyz, 0.008856) ** (1 / 3), 7.787 * xyz + 4 / 29)
  x, y, z = f[..., 0], f[..., 1], f[..., 2]
  return jnp.stack([116.0 * y - 16.0, 500.0 * (x - y), 200.0 * (y - z)], -1)


def lab_to_rgb(lab: jax.Array) -> jax.Array:
  """kornia.color.lab_to_rgb (clip=True) on [..., 3]."""
  fy = (lab[..., 0] + 16.0) / 116.0
  f = jnp.stack([lab[..., 1] / 500.0 + fy, fy, jnp.maximum(fy - lab[..., 2] / 200.0, 0.0)], -1)
  xyz = jnp.where(f > 0.2068966, f ** 3, (f - 4 / 29) / 7.787) * _WHITE
  lin = xyz @ _XYZ_TO_RGB.T
  rgb = jnp.where(lin > 0.0031308,
                  1.055 * jnp.maximum(lin, 0.0031308) ** (1 / 2.4) - 0.055, 12.92 * lin)
  return jnp.clip(rgb, 0.0, 1.0)


def stretch_luminance(lum: jax.Array) -> jax.Array:
  """color_transfer.pre_process: L [N] clipped to its sorted[5 %] and
  sorted[N - 5 %] values and stretched to [0, 100]."""
  n = lum.shape[0]
  cut = int(n * 0.05)
  s = jnp.sort(lum)
  lo, hi = s[cut], s[min(n - cut, n - 1)]
  return (jnp.clip(lum, lo, hi) - lo) / (hi - lo) * 100.0


def transfer_chrom(inp: jax.Array, src: jax.Array) -> jax.Array:
  """color_transfer.transfer_chrom on pixels [N, 3]: the linear map taking the
  (floored) covariance of `inp` to that of `src`, plus the mean shift."""
  def cov(x):  # torch.cov: unbiased. The floor is elementwise (off-diagonals >= 0).
    d = x - x.mean(0)
    return jnp.maximum(d.T @ d / (x.shape[0] - 1), 7.5 * jnp.eye(3))

  s_i, s_s = cov(inp), cov(src)
  w_i, v_i = jnp.linalg.eigh(s_i)
  da = jnp.sqrt(jnp.maximum(w_i, 0.0) + 1e-10)
  c = (da[:, None] * v_i.T) @ s_s @ (v_i * da[None, :])
  w_c, v_c = jnp.linalg.eigh(c)
  dc = jnp.sqrt(jnp.maximum(w_c, 0.0) + 1e-10)
  t = (v_i / da) @ (v_c * dc) @ v_c.T @ (v_i / da).T
  return (inp - inp.mean(0)) @ t.T + src.mean(0)


def _quantiles(x: jax.Array) -> jax.Array:
  """color_transfer.hist_sampler: the left bin edges (of 256 between min and
  max) where the cumulative histogram reaches k / 32, k = 1..32."""
  lo, hi = x.min(), x.max()
  width = jnp.where(hi > lo, hi - lo, 1.0)
  idx = jnp.clip(jnp.floor((x - lo) / width * _LUM_BINS), 0, _LUM_BINS - 1).astype(jnp.int32)
  cdf = jnp.cumsum(jnp.zeros(_LUM_BINS).at[idx].add(1.0)) / x.shape[0]
  at = jnp.searchsorted(cdf, jnp.arange(1, _LUM_SAMPLES + 1) / _LUM_SAMPLES, side="left")
  return jnp.linspace(lo, hi, _LUM_BINS + 1)[jnp.minimum(at, _LUM_BINS)]


def tone_curve(p0: jax.Array, p1: jax.Array, x: jax.Array) -> jax.Array:
  """color_transfer.transfer_func: an arctan curve with f(0) = 0, f(1) = 1."""
  t = jnp.arctan(p0 / p1)
  return (t + jnp.arctan((x - p0) / p1)) / (t + jnp.arctan((1.0 - p0) / p1))


def fit_tone_curve(x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
  """argmin over p0 in [0, 1], p1 in (0, 1] of ||tone_curve(p, x) - y||^2, by
  a 33 x 33 grid (p1 log-spaced from 1e-3) refined once on a finer grid
  around the best point (the official uses Nelder-Mead from a random start)."""
  def best(g0, g1):
    err = jnp.sum((tone_curve(g0[:, None, None], g1[None, :, None], x) - y) ** 2, -1)
    i = jnp.argmin(err)
    return g0[i // g1.shape[0]], g1[i % g1.shape[0]]

  n = 33
  p0, p1 = best(jnp.linspace(0.0, 1.0, n), jnp.geomspace(1e-3, 1.0, n))
  step = math.log(1e3) / (n - 1)  # one coarse log-step of p1
  p0, p1 = best(jnp.clip(p0 + jnp.linspace(-1, 1, n) / (n - 1), 0.0, 1.0),
                jnp.clip(p1 * jnp.exp(jnp.linspace(-step, step, n)), 1e-10, 1.0))
  return p0, p1


def transfer_lum(inp: jax.Array, src: jax.Array) -> jax.Array:
  """color_transfer.transfer_lum on luminance [N]: a tone curve mapping inp's
  quantiles towards src's, moved by tau / min(tau, max |difference|)."""
  top = inp.max()
  q_i = _quantiles(inp / (top + 1e-10))
  q_s = _quantiles(src / (src.max() + 1e-10))
  d = q_s - q_i
  dist = jnp.max(jnp.abs(d))
  # The official divides by dist unguarded; identical quantiles keep inp's.
  target = q_i + d * jnp.where(dist > 0, _LUM_TAU / jnp.minimum(_LUM_TAU, dist), 0.0)
  p0, p1 = fit_tone_curve(q_i, target)
  return jnp.maximum(tone_curve(p0, p1, inp / top), 0.0) * top


def negatives(real: jax.Array, composite: jax.Array, mask: jax.Array, rng: jax.Array,
              k: int) -> jax.Array:
  """create_negative_samples: [k, B, H, W, 3] in the model's normalised space
  (`real`, `composite` normalised as the model's input; mask in [0, 1]):
  the composite, then k - 1 re-colourings of real's foreground."""
  b, h, w, _ = real.shape
  if k == 1:
    return jax.lax.stop_gradient(composite[None])
  pixels = real.reshape(b, h * w, 3) * _IMAGENET_STD + _IMAGENET_MEAN
  lab = rgb_to_lab(jnp.maximum(pixels, 0.0) ** _GAMMA)
  lab = lab.at[..., 0].set(jax.vmap(stretch_luminance)(lab[..., 0]))
  # Partners: k - 1 other images per image, without replacement.
  keys = jax.random.uniform(rng, (b, b)) + jnp.eye(b) * 2.0
  partners = jnp.argsort(keys, axis=1)[:, :k - 1]  # [B, k - 1]

  def recolour(n, n2):
    chrom = transfer_chrom(lab[n], lab[n2])
    lum = transfer_lum(lab[n, :, 0], lab[n2, :, 0])
    return jnp.concatenate([lum[:, None], chrom[:, 1:]], -1)

  rows = jnp.repeat(jnp.arange(b)[:, None], k - 1, 1)
  new = jax.vmap(jax.vmap(recolour))(rows, partners)  # [B, k - 1, HW, 3]
  new = (lab_to_rgb(new) ** (1 / _GAMMA) - 0.5) / 0.5
  new = jnp.moveaxis(new.reshape(b, k - 1, h, w, 3), 1, 0)
  new = (1.0 - mask) * real + mask * new
  return jax.lax.stop_gradient(jnp.concatenate([composite[None], new], 0))


def _l1(a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.mean(jnp.abs(a - b))


def ratio(anchor: jax.Array, positive: jax.Array, negatives_: list[jax.Array]) -> jax.Array:
  """D(a, p) / (D(a, p) + sum_k D(a, n_k) + 1e-8), the negatives' distances
  detached (the official `torch.tensor([...])`)."""
  pos = _l1(anchor, positive)
  neg = sum(jax.lax.stop_gradient(_l1(anchor, n)) for n in negatives_)
  return pos / (pos + neg + 1e-8)


def gram(x: jax.Array, y: jax.Array) -> jax.Array:
  """Per image x_n y_n^T over positions: [B, HW, HW] from [B, H, W, C]."""
  b, c = x.shape[0], x.shape[-1]
  return jnp.einsum("bpc,bqc->bpq", x.reshape(b, -1, c), y.reshape(b, -1, c))


def from_features(f: jax.Array, f_plus: jax.Array, f_minus: list[jax.Array],
                  b_plus: jax.Array) -> jax.Array:
  """SS-CR + CS-CR from VGG features [B, H, W, C]."""
  ss = ratio(f, f_plus, f_minus)
  cs = ratio(gram(f, b_plus), gram(f_plus, b_plus), [gram(n, b_plus) for n in f_minus])
  return ss + cs


def loss(vgg, pred: jax.Array, real: jax.Array, mask: jax.Array, composite: jax.Array,
         rng: jax.Array, k: int) -> jax.Array:
  """The official SCS_CR_loss on normalised low-resolution tensors [B,h,w,3]
  (mask [B,h,w,1]); `vgg` returns [relu4_3]. k = min(k, B - 1) negatives."""
  k = min(k, pred.shape[0] - 1)
  if k < 1:
    raise ValueError("the contrastive term needs a batch of at least 2 images")
  def feat(x):
    return jax.lax.stop_gradient(vgg(x)[0])

  f = vgg(pred * mask)[0]
  f_plus, b_plus = feat(real * mask), feat(real * (1.0 - mask))
  negs = negatives(real, composite, mask, rng, k)
  return from_features(f, f_plus, [feat(n * mask) for n in negs], b_plus)
