"""Spectral normalization (Miyato et al., ICLR 2018) as a layer wrapper.

`flax.nnx.SpectralNorm` does not fit here: it writes the normalized weight back
into the wrapped layer's `nnx.Param`, so the parameter the optimizer updates is
no longer the raw weight and every call divides again. This wrapper keeps the
raw weight as the parameter (PyTorch's `weight_orig`) and passes the
normalized weight to the layer for the call only. The power-iteration vectors
`u` and `v` are `nnx.BatchStat` variables (`variables.Statistic`): non-Param state
that the trainer carries alongside batch-norm statistics.

Matches `torch.nn.utils.spectral_norm` (one power iteration per training
call, eps 1e-12; in eval mode sigma comes from the stored u and v). The
weight is flattened as PyTorch does, [out, in * kh * kw], so `u` and `v`
import unchanged.
"""

from flax import nnx
import jax
import jax.numpy as jnp

from harmonax import torch_import
from harmonax import variables


def _l2_normalize(x: jax.Array, eps: float) -> jax.Array:
  return x / jnp.maximum(jnp.linalg.norm(x), eps)


def weight_matrix(kernel: jax.Array) -> jax.Array:
  """Kernel in NNX layout -> PyTorch's [out, rest] matrix for the power iteration."""
  if kernel.ndim == 4:  # conv [kh, kw, in, out] -> [out, in, kh, kw]
    kernel = jnp.transpose(kernel, (3, 2, 0, 1))
  elif kernel.ndim == 2:  # linear [in, out] -> [out, in]
    kernel = kernel.T
  else:
    raise ValueError(f"Spectral norm needs a 2D or 4D kernel, got shape {kernel.shape}")
  return kernel.reshape(kernel.shape[0], -1)


def power_iteration(w: jax.Array, u: jax.Array, v: jax.Array, n_steps: int,
                    eps: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """n_steps of power iteration on w [out, in]; returns (sigma, u, v).

  sigma = u . (w v) estimates the largest singular value of w; it is
  differentiable in w, while u and v are treated as constants (as in PyTorch).
  """
  for _ in range(n_steps):
    v = _l2_normalize(w.T @ u, eps)
    u = _l2_normalize(w @ v, eps)
  u, v = jax.lax.stop_gradient(u), jax.lax.stop_gradient(v)
  return u @ (w @ v), u, v


class SpectralNorm(nnx.Module):
  """Wraps a layer with a `kernel` Param whose `__call__` takes `kernel=`.

  `wrapper(*args, **kwargs)` calls `layer(*args, kernel=kernel / sigma, **kwargs)`.
  In training mode (`use_running_average=False`, set by `net.train()`) it runs
  `n_steps` power iterations and stores the new `u`, `v`; in eval mode it uses
  them as stored.
  """

  def __init__(self, layer: nnx.Module, *, n_steps: int = 1, eps: float = 1e-12,
               rngs: nnx.Rngs):
    self.layer = layer
    self.n_steps = n_steps
    self.eps = eps
    self.use_running_average = False
    w = weight_matrix(layer.kernel[...])
    ku, kv = jax.random.split(rngs.params())
    self.u = variables.Statistic(_l2_normalize(jax.random.normal(ku, (w.shape[0],)), eps))
    self.v = variables.Statistic(_l2_normalize(jax.random.normal(kv, (w.shape[1],)), eps))

  def normalized_kernel(self, update_stats: bool | None = None) -> jax.Array:
    """The layer's kernel divided by its estimated largest singular value."""
    update = not self.use_running_average if update_stats is None else update_stats
    kernel = self.layer.kernel[...]
    w = weight_matrix(kernel)
    sigma, u, v = power_iteration(w, self.u[...], self.v[...],
                                  self.n_steps if update else 0, self.eps)
    if update:
      self.u[...] = u
      self.v[...] = v
    return kernel / sigma

  def __call__(self, *args, update_stats: bool | None = None, **kwargs):
    return self.layer(*args, kernel=self.normalized_kernel(update_stats), **kwargs)


# PyTorch names a spectrally normalized layer's raw weight `weight_orig` next to
# `weight_u`/`weight_v`; families rename `<p>.weight_orig`/`<p>.bias` to
# `<p>.layer.weight`/`<p>.layer.bias` (see `torch_names_to_wrapper`).
torch_import.register_rules(SpectralNorm, (
    torch_import.Rule("weight_u", "u"),
    torch_import.Rule("weight_v", "v"),
))


def _join(*parts: str) -> str:
  return ".".join(p for p in parts if p)


def torch_names_to_wrapper(state_dict: dict) -> dict:
  """Renames PyTorch spectral-norm keys to this wrapper's module paths."""
  prefixes = {k.rpartition(".")[0] for k in state_dict if k.rpartition(".")[2] == "weight_orig"}
  out = {}
  for key, value in state_dict.items():
    prefix, _, name = key.rpartition(".")
    if prefix in prefixes and name in ("weight_orig", "bias"):
      key = _join(prefix, "layer", "weight" if name == "weight_orig" else "bias")
    out[key] = value
  return out


def wrapper_names_to_torch(state_dict: dict) -> dict:
  """Inverse of `torch_names_to_wrapper`."""
  prefixes = {k.rpartition(".")[0] for k in state_dict if k.rpartition(".")[2] == "weight_u"}
  out = {}
  for key, value in state_dict.items():
    head, _, name = key.rpartition(".")
    prefix, _, layer = head.rpartition(".") if "." in head else ("", "", head)
    if layer == "layer" and prefix in prefixes and name in ("weight", "bias"):
      key = _join(prefix, "weight_orig" if name == "weight" else "bias")
    out[key] = value
  return out
