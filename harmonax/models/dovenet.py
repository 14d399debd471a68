"""DoveNet (Cong et al., CVPR 2020): attention U-Net + domain verification GAN.

Networks: 'generator' (attention U-Net, 4 input channels: composite and mask
in [-1, 1] / [0, 1]) and 'discriminator' (spectrally normalized partial
convolutions: a global stream, plus foreground and background streams whose
product is scored by the domain verification head).

Losses follow the official training script (`--gan_mode wgangp`, which in
DoveNet's code is a hinge loss plus gradient penalty):
  D: relu(1 + D(fake)) + relu(1 - D(real)) on the global and verification
     heads, + 10 * (||grad D_gp(interp)|| - 1)^2 with D_gp = (global + verif) / 2;
  G: -D_global(fake) - D_verification(fake) + 100 * L1(output, real).
As in the official code, the discriminator sees the raw generator output (not
blended with the background), in [-1, 1].
"""

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from harmonax import torch_import
from harmonax import variables
from harmonax.models import attention_unet
from harmonax.models import layers
from harmonax.models import partial_conv
from harmonax.models import spectral_norm

INPUTS = ("composite", "mask")
PRESERVES_BACKGROUND = True
# Official checkpoint file of each network: latest_net_<G|D>.pth.
TORCH_NAMES = {"generator": "G", "discriminator": "D"}


def _sn_conv(i: int, o: int, k: int, stride: int, use_bias: bool, rngs: nnx.Rngs
             ) -> spectral_norm.SpectralNorm:
  conv = partial_conv.PartialConv2d(i, o, k, stride=stride, padding=0, use_bias=use_bias,
                                    rngs=rngs)
  return spectral_norm.SpectralNorm(conv, rngs=rngs)


class StreamEncoder(nnx.Module):
  """The official `OrgDiscriminator`: conv1..convN (global) and conv1f..convNf
  (shared by the masked foreground and background streams); 3x3, no padding,
  stride 2 except the last; norms after conv2..conv(N-1)."""

  def __init__(self, in_features: int = 3, ndf: int = 64, num_strided: int = 6, *,
               norm: str = "instance", rngs: nnx.Rngs):
    use_bias = norm == "instance"
    self.num_convs = num_strided + 1
    prev = in_features
    for i in range(1, self.num_convs + 1):
      out = ndf * min(2 ** (i - 1), 8)
      stride = 2 if i <= num_strided else 1
      bias = True if i == 1 else use_bias
      for suffix in ("", "f"):
        setattr(self, f"conv{i}{suffix}", _sn_conv(prev, out, 3, stride, bias, rngs))
        if 1 < i < self.num_convs:
          setattr(self, f"norm{i}{suffix}", attention_unet.make_norm(norm, out, rngs))
      prev = out
    self.out_features = prev

  def stream(self, x: jax.Array, mask: jax.Array | None, suffix: str) -> jax.Array:
    for i in range(1, self.num_convs + 1):
      x, mask = getattr(self, f"conv{i}{suffix}")(x, mask)
      if i < self.num_convs:
        if i > 1:
          x = getattr(self, f"norm{i}{suffix}")(x)
        x = jax.nn.leaky_relu(x, 0.2)
    return x

  def __call__(self, x: jax.Array, mask: jax.Array):
    """Returns (global, foreground, background) features [B, h, w, C]."""
    return (self.stream(x, None, ""), self.stream(x, mask, "f"),
            self.stream(x, 1.0 - mask, "f"))


class Discriminator(nnx.Module):
  """DoveNet's discriminator: global score and domain verification score maps."""

  def __init__(self, in_features: int = 3, ndf: int = 64, num_strided: int = 6, *,
               norm: str = "instance", rngs: nnx.Rngs):
    self.D = StreamEncoder(in_features, ndf, num_strided, norm=norm, rngs=rngs)
    c = self.D.out_features
    self.convl1 = _sn_conv(c, c, 1, 1, True, rngs)
    self.convl2 = _sn_conv(c, c, 1, 1, True, rngs)
    init = attention_unet.KERNEL_INIT
    self.convl3 = nnx.Conv(c, 1, (1, 1), kernel_init=init, rngs=rngs)
    self.convg3 = nnx.Conv(c, 1, (1, 1), kernel_init=init, rngs=rngs)

  def __call__(self, image: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """image [B, H, W, 3] in [-1, 1] (H, W >= 255 at full size), mask [B, H, W, 1].

    Returns (global score map, verification score map), each [B, h, w, 1].
    """
    x, xf, xb = self.D(image, mask)
    sim = jax.nn.leaky_relu(self.convl1(xf * xb)[0], 0.2)
    sim = jax.nn.leaky_relu(self.convl2(sim)[0], 0.2)
    return self.convg3(x), self.convl3(sim)


def hinge_d_loss(real: jax.Array, fake: jax.Array) -> jax.Array:
  """mean(relu(1 - real)) + mean(relu(1 + fake))."""
  return jnp.mean(jax.nn.relu(1.0 - real)) + jnp.mean(jax.nn.relu(1.0 + fake))


def gradient_penalty(score_fn, real: jax.Array, fake: jax.Array, key: jax.Array,
                     weight: float = 10.0) -> jax.Array:
  """WGAN-GP on per-sample interpolations, as the official cal_gradient_penalty.

  weight * mean_b (|| d sum(score_fn(x)) / dx_b + 1e-16 ||_2 - 1)^2 with
  x = alpha * real + (1 - alpha) * fake, alpha ~ U(0, 1) per sample.
  """
  alpha = jax.random.uniform(key, (real.shape[0],) + (1,) * (real.ndim - 1))
  interp = alpha * real + (1.0 - alpha) * jax.lax.stop_gradient(fake)
  grads = jax.grad(lambda z: jnp.sum(score_fn(z)))(interp)
  norms = jnp.linalg.norm((grads + 1e-16).reshape(grads.shape[0], -1), axis=1)
  return weight * jnp.mean(jnp.square(norms - 1.0))


def create_networks(config: ml_collections.ConfigDict, rngs: nnx.Rngs
                    ) -> dict[str, nnx.Module]:
  """{'generator': AttentionUNet, 'discriminator': Discriminator}."""
  m = config.model
  return {
      "generator": attention_unet.AttentionUNet(
          4, 3, num_downs=m.num_downs, ngf=m.ngf, norm=m.norm,
          use_dropout=m.use_dropout, identity_init=m.get("identity_init", False), rngs=rngs),
      "discriminator": Discriminator(3, m.ndf, m.d_num_strided, norm=m.norm, rngs=rngs),
  }


def linear_decay_schedule(lr: float, epochs_constant: int, epochs_decay: int,
                          steps_per_epoch: int) -> optax.Schedule:
  """pix2pix 'linear' policy: lr for `epochs_constant` epochs, then linearly
  towards 0 over `epochs_decay` epochs (factor 1 - max(0, e + 1 - n) / (d + 1))."""
  steps_per_epoch = max(int(steps_per_epoch), 1)

  def schedule(count):
    epoch = count // steps_per_epoch
    return lr * (1.0 - jnp.maximum(0, epoch + 1 - epochs_constant) / (epochs_decay + 1.0))
  return schedule


def make_optimizers(config: ml_collections.ConfigDict, steps_per_epoch: int
                    ) -> dict[str, optax.GradientTransformation]:
  """Adam(2e-4, 0.5, 0.999) for G and D with the same linear decay."""
  o = config.optim
  schedule = linear_decay_schedule(o.lr, o.epochs_constant, o.epochs_decay, steps_per_epoch)
  # inject_hyperparams: the trainer logs the current rate from the state.
  adam = optax.inject_hyperparams(optax.adam)
  return {name: adam(learning_rate=schedule, b1=o.b1, b2=o.b2)
          for name in ("generator", "discriminator")}


def compute_losses(config: ml_collections.ConfigDict, networks: dict[str, nnx.Module],
                   batch: dict[str, jax.Array], rng: jax.Array):
  """(losses {'generator', 'discriminator'}, metrics, outputs {'harmonized', 'output'}).

  Weights in config.loss: l1 (lambda_L1, 100) and gp (lambda_gp, 10).
  """
  batch = layers.floats(batch)
  gen, disc = networks["generator"], networks["discriminator"]
  comp, mask = batch["composite"] * 2.0 - 1.0, batch["mask"]
  real = batch["real"] * 2.0 - 1.0
  dropout_key, gp_key = jax.random.split(rng)
  output = gen(jnp.concatenate([comp, mask], -1), variables.rngs(dropout=dropout_key))

  # One D pass on the fake serves both losses: the trainer pulls the D loss
  # back into D's params only and the G loss into G's params only.
  fake_g, fake_v = disc(output, mask)
  real_g, real_v = disc(real, mask)
  d_global = hinge_d_loss(real_g, fake_g)
  d_verif = hinge_d_loss(real_v, fake_v)
  # The penalty differentiates D w.r.t. its input; a functional copy keeps the
  # inner trace from writing spectral-norm vectors into the module.
  graphdef, state = nnx.split(disc)
  state = state.to_pure_dict()  # Plain arrays: merge makes fresh variables.

  def gp_score(z):
    g, v = nnx.merge(graphdef, state)(z, mask)
    return (g + v) * 0.5
  d_gp = gradient_penalty(gp_score, real, output, gp_key, config.loss.gp)

  g_global, g_verif = -jnp.mean(fake_g), -jnp.mean(fake_v)
  l1 = jnp.mean(jnp.abs(output - real))
  g_loss = g_global + g_verif + config.loss.l1 * l1
  d_loss = d_global + d_verif + d_gp
  metrics = {"l1": l1, "g_global": g_global, "g_verification": g_verif,
             "d_global": d_global, "d_verification": d_verif, "d_gp": d_gp,
             "d_real": jnp.mean(real_g), "d_fake": jnp.mean(fake_g)}
  return ({"generator": g_loss, "discriminator": d_loss}, metrics,
          {"harmonized": to_unit(output), "output": output})


def to_unit(output: jax.Array) -> jax.Array:
  """Generator output in [-1, 1] (tanh) -> [0, 1], as the official tensor2im."""
  return jnp.clip((output + 1.0) * 0.5, 0.0, 1.0)


def predict(config: ml_collections.ConfigDict, networks: dict[str, nnx.Module],
            inputs: dict[str, jax.Array]) -> jax.Array:
  """The generator's image [B, H, W, 3] in [0, 1] for any H, W (reflect-padded
  to 2**num_downs and cropped back). Not background-pasted: the official test
  script saves and scores this image."""
  del config
  gen = networks["generator"]
  composite, mask = layers.to_float(inputs["composite"]), layers.to_float(inputs["mask"])
  x = jnp.concatenate([composite * 2.0 - 1.0, mask], -1)
  x, crop = layers.pad_to_multiple(x, 2 ** gen.num_downs, mode="reflect")
  return to_unit(layers.crop_to(gen(x), crop))


def norm_of_state_dict(state_dict: dict) -> str:
  """'batch' if a generator state dict holds batch-norm statistics, else 'instance'
  (PyTorch's InstanceNorm2d(affine=False) has no tensors)."""
  return "batch" if any(k.endswith("running_mean") for k in state_dict) else "instance"


def adapt_config(config: ml_collections.ConfigDict, state_dicts: dict
                 ) -> ml_collections.ConfigDict:
  """config with model.norm set from the generator checkpoint's keys (convert).

  The official README's released generator and its training command differ in
  the norm; the keys say which one a file holds.
  """
  sd = state_dicts.get("G", state_dicts.get("generator", state_dicts.get("default")))
  if sd is None:
    return config
  norm = norm_of_state_dict(sd)
  if norm == config.model.norm:
    return config
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.norm = norm
  return config


def _strip_prefix(state_dict: dict, prefix: str) -> dict:
  if state_dict and all(k.startswith(prefix) for k in state_dict):
    return {k[len(prefix):]: v for k, v in state_dict.items()}
  return dict(state_dict)


def convert_torch(state_dicts: dict[str, dict[str, np.ndarray]],
                  config: ml_collections.ConfigDict) -> dict[str, nnx.State]:
  """Official DoveNet state dicts -> network states.

  Args:
    state_dicts: keyed by 'G'/'D' (the official `latest_net_G.pth` /
      `latest_net_D.pth`) or by 'generator'/'discriminator'; keys as in the
      official files (a leading 'G.'/'D.' is tolerated). 'D' is optional; a
      lone 'default' entry (harmonax.convert with one file) is the generator.
    config: a DoveNet config; `config.model.norm` must match the weights
      (`adapt_config` sets it from the keys; harmonax.convert calls it).

  Raises:
    torch_import.StateDictMismatchError: on missing, unexpected or mis-shaped keys.
    ValueError: if no generator state dict is given.
  """
  return convert_networks(config, create_networks, state_dicts, TORCH_NAMES)


def convert_networks(config: ml_collections.ConfigDict, create, state_dicts: dict,
                     torch_names: dict[str, str]) -> dict[str, nnx.State]:
  """Loads each given state dict into its network and returns their states.

  The networks are built abstractly (no random init of ~70M parameters): every
  variable must come from the state dicts, which load_into enforces.
  """
  networks = nnx.eval_shape(lambda: create(config, variables.rngs(0)))
  if "default" in state_dicts and len(state_dicts) == 1:
    state_dicts = {"generator": state_dicts["default"]}  # one unnamed file: the generator
  if not any(k in state_dicts for k in ("generator", torch_names["generator"])):
    raise ValueError(f"No generator weights among state dicts {sorted(state_dicts)}; "
                     f"expected one of {sorted(torch_names.items())}")
  states = {}
  for name, short in torch_names.items():
    sd = state_dicts.get(short, state_dicts.get(name))
    if sd is None:
      continue
    sd = spectral_norm.torch_names_to_wrapper(_strip_prefix(sd, short + "."))
    torch_import.load_into(networks[name], sd, context=f"{short} ({name})")
    states[name] = nnx.state(networks[name])
  return states


def to_torch(network: nnx.Module) -> dict[str, np.ndarray]:
  """A network's variables as an official-format PyTorch state dict (numpy)."""
  return spectral_norm.wrapper_names_to_torch(torch_import.to_state_dict(network))
