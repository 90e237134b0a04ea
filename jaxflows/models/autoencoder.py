"""A convolutional autoencoder for latent generative models (task ``jaxflows.models.autoencoder``).

Two modes (``config.model.mode``):

* ``'ae'``: a plain, deterministic autoencoder, ``z = E(x)`` (``kl_weight`` must be 0);
* ``'kl'``: a KL-regularised autoencoder (the "KL-VAE" of latent diffusion: Rombach et al. 2022,
  "High-Resolution Image Synthesis with Latent Diffusion Models", arXiv 2112.10752): the encoder
  gives a diagonal Gaussian posterior ``N(mu, diag(exp(logvar)))`` (``logvar`` clipped to
  ``[-30, 20]`` as in LDM), the decoder sees one sample ``z = mu + sigma eps``, and a small
  ``kl_weight`` (LDM: 1e-6) multiplies ``KL(q(z|x) || N(0, I))``.

**Latent grid.** Each stride-2 level halves the image side: with ``channels = (32, 64)`` a
28 x 28 MNIST digit becomes a 7 x 7 x 4 latent. That is the MNIST-scale analogue of the f8, four-
channel SD autoencoder used by latent diffusion and STARFlow: SD's f8 grid at 256 px
(32 x 32 x 4) is itself too small for MNIST (a 28-px digit would get 3.5 positions a side), so we
keep the *spatial* compression of the latent grid at 16x (784 pixels -> 49 positions, each
covering a 4 x 4 patch, f4) and SD's 4 channels; the latent has 196 numbers for 784 pixels
(4x fewer values; SD's f8 keeps 48x fewer of 3 x 256^2).

**Loss** (per image; pixels mapped to ``x in [-1, 1]``, LDM's convention):

    rec = mean_pixels (D(z) - x)^2,       kl = 0.5 sum_latent (mu^2 + sigma^2 - 1 - log sigma^2),
    loss = rec + kl_weight * kl / P  [+ perceptual_weight * perceptual]  [+ align.weight * L_align]

with ``P = H W C``: LDM sums the reconstruction error over pixels and the KL over latent entries
(both per image); dividing both by ``P`` keeps LDM's ratio, so ``kl_weight = 1e-6`` means what it
means there. Metrics: ``rec_loss``, ``kl``, ``mse`` (per-pixel MSE in ``[0, 1]`` units, the
decoder output clipped to ``[0, 1]`` in evaluation) and ``psnr`` (per image
``10 log10(1 / mse)``, averaged over images).

**Perceptual and adversarial terms** (off by default; :mod:`jaxflows.models.autoencoder_losses`
has the definitions). ``perceptual_weight > 0`` adds ``perceptual_weight * perceptual(D(z), x)``,
LPIPS's stand-in: the relative squared error of frozen DigitCNN activations (layers
``perceptual_layers``; default ``Conv_1``, ``Conv_2`` and the 128-d penultimate ``features``),
averaged over the layers, the classifier's params read from
``perceptual_classifier`` (a msgpack file of
:func:`jaxflows.eval.classifier.save_classifier_params`, or an Orbax params checkpoint) and held
outside the trainable tree; metric ``perceptual``. ``gan_weight > 0`` adds a PatchGAN
discriminator (params subtree ``discriminator``, widths ``disc_channels``) and, from step
``gan_start_step`` on, ``gan_weight * g + d`` with hinge losses, the two players separated by
``stop_gradient`` inside the one loss (:func:`jaxflows.models.autoencoder_losses.gan_objective`):
the decoder's gradient comes from ``g`` only, the discriminator's from ``d`` only. In training
``loss`` then includes ``d``; ``ae_loss`` is the autoencoder's own objective, and ``g_loss``,
``d_loss``, ``logits_real``, ``logits_fake`` are logged. Evaluation leaves the GAN out (its
``loss`` is the rest of the objective).

**Flow-prior alignment** (Li et al. 2025, "Aligning Latent Spaces with Flow Priors", arXiv
2506.05240). With ``config.model.align`` (:func:`jaxflows.align.default_align_config`) the loss
gains ``weight * L_align`` of the latent the decoder sees, under a frozen flow-matching prior
(:class:`jaxflows.align.FlowPriorAlignment`). ``config.model.align_layout`` says what a latent
vector is:

* ``'tokens'`` (default): every spatial position is a token, ``[B, h w, c]`` (MNIST: 49 tokens of
  4 dimensions), scored by a per-token, unconditional prior of dimension ``c``. This is the
  paper's own choice (its tokenizer aligns 64 tokens x 32 dims per token with an unconditional
  per-token flow) transposed to a spatial grid, and the layout a latent generator that models
  positions as tokens (TarFlow, STARFlow, MAR) sees;
* ``'flat'``: the whole latent as one vector ``[B, h w c]`` (196-d), for image-level targets.

**Latent scale.** :func:`latent_scale` is ``1 / std`` of the encoder's latents over training
images (one scalar, like SD's 0.18215); generators model ``z * scale``.
:func:`save_latent_scale` / :func:`load_latent_scale` keep it in ``WORKDIR/latent_scale.json``
next to the checkpoint.

**Decoder fine-tuning on noisy latents** (STARFlow, arXiv 2506.06276, Sec. 3.3: the generator
models ``z * scale + sigma eps``). ``config.model.latent_noise_std = sigma > 0`` decodes
``z + (sigma / config.model.latent_scale) eps`` in training (noise of std ``sigma`` in the scaled
units; ``latent_scale`` must then be the autoencoder's own scale, see *Latent scale*, and a
value ``<= 0`` is refused); combine it with ``config.init_from`` (a trained workdir) and
``config.optim.freeze = ('encoder/.*',)`` to fine-tune the decoder only, and with the
perceptual (and GAN) terms above for STARFlow's ``L2 + LPIPS + GAN`` recipe
(``experiments/configs/autoencoder_mnist.py:finetune_decoder``,
``experiments/starflow_decoder_finetune.py``). Evaluation then also reports ``noisy_mse``,
``noisy_psnr`` and ``noisy_loss`` (the evaluation objective of the noisy decode; the eval rng is
fixed per batch, so it is comparable between evaluations); ``mse`` stays the clean
reconstruction.

**Network** (:class:`ConvAutoencoder`): encoder ``conv3x3(channels[0])``, then per level a
stride-2 ``conv3x3(channels[i])``, each followed by SiLU and ``res_blocks`` residual blocks
``h + conv3x3(SiLU(conv3x3(SiLU(h))))`` at the lowest resolution, then ``conv3x3`` to
``latent_channels`` (``2 x`` in KL mode: mean and log-variance). The decoder mirrors it with
nearest-neighbour upsampling followed by ``conv3x3`` and a linear output. Convolution weights are
replicated over the mesh (no logical axis names: the model is small).

Config keys (``config.model``, see :func:`default_model_config`): ``mode``, ``channels``,
``res_blocks``, ``latent_channels``, ``kl_weight``, ``align`` and ``align_layout``,
``latent_noise_std``, ``latent_scale``, ``perceptual_weight``, ``perceptual_classifier``,
``perceptual_layers``, ``gan_weight``, ``gan_start_step``, ``disc_channels``. ``config.dtype`` is
the convolution dtype; losses are float32.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxflows.align import FlowPriorAlignment
from jaxflows.errors import ConfigError, UserError
from jaxflows.models.autoencoder_losses import (
    DEFAULT_PERCEPTUAL_LAYERS,
    PatchDiscriminator,
    PerceptualLoss,
    gan_objective,
)
from jaxflows.train.task import (
    DataInfo,
    ElementSpec,
    Metrics,
    PyTree,
    Task,
    image_element_spec,
    masked_mean,
)
from jaxflows.train.xla_options import full_backend_optimization

MODES = ("ae", "kl")
LAYOUTS = ("tokens", "flat")
LOGVAR_RANGE = (-30.0, 20.0)  # LDM's DiagonalGaussianDistribution clamp
SCALE_FILE = "latent_scale.json"
AE_TREES = ("encoder", "decoder")  # the autoencoder's params subtrees (not the discriminator)


def default_model_config() -> ml_collections.ConfigDict:
    """``config.model`` of this task with its defaults (the MNIST autoencoder)."""
    from jaxflows.align import default_align_config

    m = ml_collections.ConfigDict()
    m.name = "jaxflows.models.autoencoder"
    m.mode = "ae"  # ae (deterministic) | kl (diagonal Gaussian posterior)
    m.channels = (32, 64)  # one stride-2 level each: 28 x 28 -> 7 x 7
    m.res_blocks = 0  # residual blocks at the lowest resolution (encoder and decoder)
    m.latent_channels = 4
    m.kl_weight = 0.0  # LDM: 1e-6 (kl mode only)
    m.align = default_align_config()  # weight 0 / no prior workdir: off
    m.align_layout = "tokens"  # tokens ([B, h*w, c]) | flat ([B, h*w*c])
    m.latent_noise_std = 0.0  # > 0: decode noisy latents in training (decoder fine-tuning)
    m.latent_scale = 1.0  # the scale the noise std is measured in (see latent_scale())
    m.perceptual_weight = 0.0  # > 0: the perceptual term on a frozen DigitCNN
    m.perceptual_classifier = ""  # its params: save_classifier_params file / Orbax params dir
    m.perceptual_layers = DEFAULT_PERCEPTUAL_LAYERS  # of Conv_0, Conv_1, Conv_2, features
    m.gan_weight = 0.0  # > 0: hinge PatchGAN (ml-starflow: 0.1)
    m.gan_start_step = 0  # the GAN terms are on from this step
    m.disc_channels = (32, 64)  # discriminator widths, one 2x average-pool level each
    return m


def to_signed(images: jax.Array) -> jax.Array:
    """uint8 ``[..., H, W, C]`` in 0..255 -> float32 in ``[-1, 1]``."""
    return jnp.asarray(images).astype(jnp.float32) / 127.5 - 1.0


def to_unit(x: jax.Array) -> jax.Array:
    """``[-1, 1]`` pixels -> ``[0, 1]`` (clipped)."""
    return jnp.clip((x.astype(jnp.float32) + 1.0) * 0.5, 0.0, 1.0)


def gaussian_kl(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """``KL(N(mean, exp(logvar)) || N(0, 1))`` summed over all but the first axis -> ``[B]``."""
    kl = 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
    return jnp.sum(kl.reshape(kl.shape[0], -1), axis=-1)


class ResBlock(nn.Module):
    """``h + conv3x3(SiLU(conv3x3(SiLU(h))))`` on ``h: [B, H, W, C]``."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        c = h.shape[-1]
        y = nn.Conv(c, (3, 3), dtype=self.dtype, param_dtype=jnp.float32)(jax.nn.silu(h))
        y = nn.Conv(c, (3, 3), dtype=self.dtype, param_dtype=jnp.float32)(jax.nn.silu(y))
        return h + y.astype(h.dtype)


class ConvEncoder(nn.Module):
    """``x: [B, H, W, C]`` in ``[-1, 1]`` -> ``[B, H / 2^L, W / 2^L, out]`` (``L = len(channels)``;
    ``out = latent_channels``, or ``2 x`` that for a Gaussian posterior's mean and log-variance)."""

    channels: Sequence[int]
    out: int
    res_blocks: int = 0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = lambda c, s=1: nn.Conv(c, (3, 3), strides=(s, s), dtype=self.dtype,  # noqa: E731
                                      param_dtype=jnp.float32)
        h = jax.nn.silu(conv(self.channels[0])(x.astype(self.dtype)))
        for c in self.channels:
            h = jax.nn.silu(conv(c, 2)(h))
        for _ in range(self.res_blocks):
            h = ResBlock(self.dtype)(h)
        return conv(self.out)(jax.nn.silu(h) if self.res_blocks else h).astype(jnp.float32)


class ConvDecoder(nn.Module):
    """``z: [B, h, w, c]`` -> ``[B, h 2^L, w 2^L, out]`` (linear output, ``[-1, 1]`` scale)."""

    channels: Sequence[int]
    out: int
    res_blocks: int = 0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        conv = lambda c: nn.Conv(c, (3, 3), dtype=self.dtype,  # noqa: E731
                                 param_dtype=jnp.float32)
        h = jax.nn.silu(conv(self.channels[-1])(z.astype(self.dtype)))
        for _ in range(self.res_blocks):
            h = ResBlock(self.dtype)(h)
        widths = list(self.channels[:-1])[::-1] + [self.channels[0]]
        for c in widths:
            h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest-neighbour x2
            h = jax.nn.silu(conv(c)(h))
        return conv(self.out)(h).astype(jnp.float32)


class ConvAutoencoder(nn.Module):
    """Encoder + decoder (parameter subtrees ``encoder`` and ``decoder``)."""

    image_channels: int
    channels: Sequence[int] = (32, 64)
    latent_channels: int = 4
    res_blocks: int = 0
    gaussian: bool = False
    dtype: Any = jnp.float32

    def setup(self):
        out = self.latent_channels * (2 if self.gaussian else 1)
        self.encoder = ConvEncoder(tuple(self.channels), out, self.res_blocks, self.dtype)
        self.decoder = ConvDecoder(tuple(self.channels), self.image_channels, self.res_blocks,
                                   self.dtype)

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        """``x: [B, H, W, C]`` in ``[-1, 1]`` -> ``(mean [B, h, w, c], logvar or None)``."""
        h = self.encoder(x)
        if not self.gaussian:
            return h, None
        mean, logvar = jnp.split(h, 2, axis=-1)
        return mean, jnp.clip(logvar, *LOGVAR_RANGE)

    def decode(self, z: jax.Array) -> jax.Array:
        """``z: [B, h, w, c]`` -> pixels ``[B, H, W, C]`` in ``[-1, 1]`` units (not clipped)."""
        return self.decoder(z)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Deterministic reconstruction (the posterior mean decoded)."""
        return self.decode(self.encode(x)[0])


@functools.partial(jax.jit, static_argnums=(0, 4))
def _encode_jit(model: ConvAutoencoder, params, images, rng, sample: bool):
    mean, logvar = model.apply({"params": params}, to_signed(images),
                               method=ConvAutoencoder.encode)
    if sample and logvar is not None:
        return mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape)
    return mean


@functools.partial(jax.jit, static_argnums=(0,))
def _decode_jit(model: ConvAutoencoder, params, z):
    return to_unit(model.apply({"params": params}, z, method=ConvAutoencoder.decode))


class AutoencoderTask(Task):
    """The autoencoder task (``config.model.name = 'jaxflows.models.autoencoder'``); see the
    module docstring for the modes, the loss, the alignment hook and the metrics."""

    best_metric = "loss"

    def compiler_options(self) -> dict[str, Any]:
        """Convolution gradients compile at XLA's full backend level
        (:func:`jaxflows.train.xla_options.full_backend_optimization`)."""
        return full_backend_optimization()

    def __init__(self, config: ml_collections.ConfigDict, data_info: DataInfo):
        super().__init__(config, data_info)
        mc = config.model
        self.mode = str(mc.get("mode", "ae"))
        if self.mode not in MODES:
            raise ConfigError(f"config.model.mode={self.mode!r}; valid: {', '.join(MODES)}")
        self.kl_weight = float(mc.get("kl_weight", 0.0))
        if self.kl_weight < 0 or (self.mode == "ae" and self.kl_weight != 0):
            raise ConfigError(f"config.model.kl_weight={self.kl_weight} must be >= 0, and 0 in "
                              "mode 'ae'", hint="use mode 'kl' for a KL-regularised autoencoder")
        self.channels = tuple(int(c) for c in mc.get("channels", (32, 64)))
        if not self.channels or min(self.channels) < 1:
            raise ConfigError(f"config.model.channels must be positive widths, got "
                              f"{mc.get('channels')}")
        self.latent_channels = int(mc.get("latent_channels", 4))
        self.res_blocks = int(mc.get("res_blocks", 0))
        if self.latent_channels < 1 or self.res_blocks < 0:
            raise ConfigError("config.model.latent_channels must be >= 1 and res_blocks >= 0")
        self.image_shape = tuple(data_info.image_shape)
        h, w, c = self.image_shape
        f = 2 ** len(self.channels)
        if h % f or w % f:
            raise ConfigError(f"images {h}x{w} are not divisible by 2^{len(self.channels)} "
                              f"= {f} (one halving per entry of config.model.channels)")
        self.latent_shape = (h // f, w // f, self.latent_channels)
        self.num_pixels = h * w * c
        self.layout = str(mc.get("align_layout", "tokens"))
        if self.layout not in LAYOUTS:
            raise ConfigError(f"config.model.align_layout={self.layout!r}; valid: "
                              f"{', '.join(LAYOUTS)}")
        self.noise_std = float(mc.get("latent_noise_std", 0.0))
        self.noise_scale = float(mc.get("latent_scale", 1.0))
        if self.noise_std < 0 or not self.noise_scale > 0:
            raise ConfigError(
                f"config.model.latent_noise_std={self.noise_std} must be >= 0 and "
                f"latent_scale={self.noise_scale} > 0",
                hint="set latent_scale to the autoencoder's scale, the latent_scale.json of its "
                     "workdir (jaxflows.models.autoencoder.latent_scale)")
        self.perceptual = PerceptualLoss.from_config(mc, self.image_shape)
        self.gan_weight = float(mc.get("gan_weight", 0.0))
        self.gan_start_step = int(mc.get("gan_start_step", 0))
        disc_channels = tuple(int(v) for v in mc.get("disc_channels", (32, 64)) or ())
        if self.gan_weight < 0 or self.gan_start_step < 0:
            raise ConfigError(f"config.model.gan_weight={self.gan_weight} and gan_start_step="
                              f"{self.gan_start_step} must be >= 0")
        if not disc_channels or min(disc_channels) < 1:
            raise ConfigError(f"config.model.disc_channels must be positive widths, got "
                              f"{mc.get('disc_channels')}")
        self.disc = (PatchDiscriminator(disc_channels) if self.gan_weight > 0 else None)
        self.align = FlowPriorAlignment.from_config(mc.get("align"))
        if self.align is not None and self.align.dim != self.token_dim:
            raise ConfigError(
                f"the alignment prior models {self.align.dim}-d vectors but the latent's "
                f"{self.layout} layout has {self.token_dim} per vector",
                hint="align_layout 'tokens' needs a prior of latent_channels dims, 'flat' one "
                     "of h*w*latent_channels")
        self.model = ConvAutoencoder(
            image_channels=c, channels=self.channels, latent_channels=self.latent_channels,
            res_blocks=self.res_blocks, gaussian=self.mode == "kl",
            dtype=jnp.dtype(config.get("dtype", "float32")))

    # --- helpers -------------------------------------------------------------------------
    @property
    def token_dim(self) -> int:
        """Dimension of one aligned latent vector: ``c`` (tokens) or ``h w c`` (flat)."""
        return (self.latent_channels if self.layout == "tokens"
                else int(np.prod(self.latent_shape)))

    def tokens(self, z: jax.Array) -> jax.Array:
        """The latent ``z: [B, h, w, c]`` in the alignment layout: ``[B, h w, c]`` or
        ``[B, h w c]``."""
        if self.layout == "tokens":
            return z.reshape(z.shape[0], -1, z.shape[-1])
        return z.reshape(z.shape[0], -1)

    @staticmethod
    def ae_params(params: PyTree) -> PyTree:
        """The autoencoder's subtrees ``{'encoder', 'decoder'}`` of ``params`` (unboxed; without
        the discriminator)."""
        params = nn.unbox(params)
        return {k: params[k] for k in AE_TREES}

    def _apply(self, params: PyTree, *args, **kwargs):
        return self.model.apply({"params": self.ae_params(params)}, *args, **kwargs)

    def encode(self, params: PyTree, images, *, sample: bool = False,
               rng: jax.Array | None = None) -> jax.Array:
        """Latents of uint8 ``images: [B, H, W, C]`` -> float32 ``[B, h, w, c]`` (jitted): the
        posterior mean, or a posterior sample (``sample=True``, KL mode, needs ``rng``)."""
        if sample and self.mode == "kl" and rng is None:
            raise ValueError("a posterior sample needs an rng")
        rng = jax.random.key(0) if rng is None else rng
        return _encode_jit(self.model, self.ae_params(params), jnp.asarray(images), rng,
                           bool(sample))

    def decode(self, params: PyTree, z) -> jax.Array:
        """Images in ``[0, 1]`` (clipped) ``[B, H, W, C]`` of latents ``z: [B, h, w, c]``
        (jitted)."""
        return _decode_jit(self.model, self.ae_params(params), jnp.asarray(z, jnp.float32))

    def _recon_terms(self, recon: jax.Array, x: jax.Array) -> dict[str, jax.Array]:
        """``rec_loss`` (``[B]``, mean squared error in ``[-1, 1]`` units), ``perceptual``
        (``[B]``, unweighted; when on) and ``objective`` (``rec + perceptual_weight *
        perceptual``) of ``recon`` against ``x`` (both ``[B, H, W, C]`` in ``[-1, 1]``)."""
        b = x.shape[0]
        out = {"rec_loss": jnp.mean(jnp.square(recon - x).reshape(b, -1), axis=-1)}
        out["objective"] = out["rec_loss"]
        if self.perceptual is not None:
            out["perceptual"] = self.perceptual.per_example(recon, x)
            out["objective"] = out["objective"] + self.perceptual.weight * out["perceptual"]
        return out

    def _terms(self, params, image, rng, *, train: bool) -> dict[str, jax.Array]:
        """Per-example terms ``[B]`` of uint8 ``image: [B, H, W, C]``: ``loss``, ``rec_loss``,
        ``kl``, ``perceptual`` (when on), ``align_loss`` (aligned), and ``z`` (the latent the
        loss used), ``recon``, ``x`` (the input in ``[-1, 1]``).

        ``train``: the decoder sees a posterior sample (KL mode) plus the latent noise
        (``latent_noise_std > 0``). Otherwise it sees the posterior mean, and with latent noise
        a second decode of the noisy mean gives ``noisy_recon`` and ``noisy_loss``.
        """
        x = to_signed(image)
        mean, logvar = self._apply(params, x, method=ConvAutoencoder.encode)
        k_post, k_noise, k_align = jax.random.split(rng, 3)
        z = mean
        if logvar is not None and train:
            z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(k_post, mean.shape)
        noisy = None
        if self.noise_std > 0:
            noisy = z + (self.noise_std / self.noise_scale) * jax.random.normal(k_noise, z.shape)
        recon = self._apply(params, noisy if train and noisy is not None else z,
                            method=ConvAutoencoder.decode)
        b = x.shape[0]
        kl = (gaussian_kl(mean, logvar) if logvar is not None
              else jnp.zeros((b,), jnp.float32))
        reg = self.kl_weight * kl / self.num_pixels
        terms = self._recon_terms(recon, x)
        out = {"z": z, "recon": recon, "x": x, "kl": kl, "loss": terms.pop("objective") + reg,
               **terms}
        if noisy is not None and not train:
            out["noisy_recon"] = self._apply(params, noisy, method=ConvAutoencoder.decode)
            out["noisy_loss"] = self._recon_terms(out["noisy_recon"], x)["objective"] + reg
        if self.align is not None:
            out["align_loss"] = self.align.per_example(self.tokens(z), k_align)
            for key in ("loss", "noisy_loss"):
                if key in out:
                    out[key] = out[key] + self.align.weight * out["align_loss"]
        return out

    @staticmethod
    def _pixel_metrics(recon: jax.Array, image: jax.Array, prefix: str = "") -> Metrics:
        """Per-image ``mse`` (``[0, 1]`` units, clipped output) and ``psnr`` ([B] each)."""
        err = jnp.square(to_unit(recon) - jnp.asarray(image).astype(jnp.float32) / 255.0)
        mse = jnp.mean(err.reshape(err.shape[0], -1), axis=-1)
        psnr = -10.0 * jnp.log10(jnp.maximum(mse, 1e-10))
        return {f"{prefix}mse": mse, f"{prefix}psnr": psnr}

    # --- Task contract -------------------------------------------------------------------
    def example_spec(self) -> ElementSpec:
        """``{'image': uint8 [H, W, C]}`` (labels are not used)."""
        return image_element_spec(self.image_shape)

    def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> PyTree:
        """Params ``{'encoder', 'decoder'}`` (and ``'discriminator'`` when ``gan_weight > 0``)
        for images shaped like ``batch['image']`` (traced on one image: params depend only on
        the shape)."""
        x = to_signed(batch["image"][:1])
        params = dict(self.model.init({"params": rng}, x)["params"])
        if self.disc is not None:
            params["discriminator"] = self.disc.init(jax.random.fold_in(rng, 1), x)["params"]
        return params

    def loss(self, params: PyTree, batch: dict[str, jax.Array], rng: jax.Array,
             step: jax.Array) -> tuple[jax.Array, Metrics]:
        """Mean over the batch of ``rec + kl_weight kl / P [+ perceptual_weight perceptual]
        [+ weight L_align]`` with a posterior sample (KL mode) and, when
        ``latent_noise_std > 0``, a noisy latent for the decoder; with ``gan_weight > 0`` and
        ``step >= gan_start_step`` plus ``gan_weight g + d`` (see
        :func:`jaxflows.models.autoencoder_losses.gan_objective`).

        Metrics: ``rec_loss``, ``kl``, ``mse``, ``psnr`` (unclipped decoder output in training),
        ``perceptual``, ``align_loss`` when on; with the GAN ``ae_loss`` (the loss without it),
        ``g_loss``, ``d_loss``, ``logits_real``, ``logits_fake``.
        """
        t = self._terms(params, batch["image"], rng, train=True)
        mask = batch.get("mask")
        mse = t["rec_loss"] / 4.0  # [-1, 1] -> [0, 1] units
        metrics = {"rec_loss": masked_mean(t["rec_loss"], mask), "kl": masked_mean(t["kl"], mask),
                   "mse": masked_mean(mse, mask),
                   "psnr": masked_mean(-10.0 * jnp.log10(jnp.maximum(mse, 1e-10)), mask)}
        for key in ("perceptual", "align_loss"):  # align: = FlowPriorAlignment.add_to
            if key in t:
                metrics[key] = masked_mean(t[key], mask)
        loss = t["loss"]
        if self.disc is not None:
            gate = (jnp.asarray(step) >= self.gan_start_step).astype(jnp.float32)
            adv, gan_metrics = gan_objective(self.disc, nn.unbox(params)["discriminator"],
                                             t["recon"], t["x"], self.gan_weight, gate)
            metrics["ae_loss"] = masked_mean(loss, mask)
            metrics.update({k: masked_mean(v, mask) for k, v in gan_metrics.items()})
            loss = loss + adv
        return masked_mean(loss, mask), metrics

    def eval_batch(self, params: PyTree, batch: dict[str, jax.Array], rng: jax.Array
                   ) -> Metrics:
        """Per-example ``loss`` (the training objective with the posterior mean, without the
        GAN), ``rec_loss``, ``kl``, ``mse``, ``psnr`` (clipped output), ``perceptual``
        (when on), ``align_loss`` (aligned), ``noisy_mse``, ``noisy_psnr``, ``noisy_loss``
        (``latent_noise_std > 0``) and the posterior mean's ``latent_mean`` and
        ``latent_sq`` (mean of ``z`` and ``z^2`` over its entries; their averages over a split
        give the latent std ``sqrt(latent_sq - latent_mean^2)``)."""
        t = self._terms(params, batch["image"], rng, train=False)
        out = {k: t[k] for k in ("loss", "rec_loss", "kl")}
        out.update(self._pixel_metrics(t["recon"], batch["image"]))
        if "noisy_recon" in t:
            out.update(self._pixel_metrics(t["noisy_recon"], batch["image"], "noisy_"))
            out["noisy_loss"] = t["noisy_loss"]
        for key in ("perceptual", "align_loss"):
            if key in t:
                out[key] = t[key]
        z = t["z"].reshape(t["z"].shape[0], -1)
        out["latent_mean"] = jnp.mean(z, axis=-1)
        out["latent_sq"] = jnp.mean(jnp.square(z), axis=-1)
        return out


TASK = AutoencoderTask


# --- the latent scale factor ---------------------------------------------------------------------

def encode_all(task: AutoencoderTask, params: PyTree, images, batch_size: int = 500
               ) -> np.ndarray:
    """Posterior means of uint8 ``images: [N, H, W, C]`` -> float32 ``[N, h, w, c]``, in
    batches of ``batch_size`` (padded: one compiled shape for any ``N``)."""
    from jaxflows.train.task import map_in_chunks

    return map_in_chunks(lambda part: task.encode(params, part), images,
                         batch_size).astype(np.float32)


def decode_all(task: AutoencoderTask, params: PyTree, z, batch_size: int = 500) -> np.ndarray:
    """Images in ``[0, 1]`` ``[N, H, W, C]`` of latents ``z: [N, h, w, c]`` (batched, padded)."""
    from jaxflows.train.task import map_in_chunks

    return map_in_chunks(lambda part: task.decode(params, part), np.asarray(z, np.float32),
                         batch_size)


def latent_scale(task: AutoencoderTask, params: PyTree, images, batch_size: int = 500) -> float:
    """The latent scale factor ``1 / std`` of the posterior means of ``images: [N, H, W, C]``
    (uint8; pass training images), the std taken over all ``N h w c`` entries about their mean
    (one scalar, as SD's ``scaling_factor``). A generator models ``z * latent_scale``."""
    z = encode_all(task, params, images, batch_size).astype(np.float64)
    std = float(z.std())
    if not std > 0 or not math.isfinite(std):
        raise ValueError(f"the latents have std {std}: no scale factor")
    return 1.0 / std


def save_latent_scale(workdir: str, scale: float, **info: Any) -> str:
    """Writes ``{'latent_scale': scale, **info}`` to ``WORKDIR/latent_scale.json`` (atomic)."""
    from jaxflows.provenance import write_json_atomic

    path = os.path.join(workdir, SCALE_FILE)
    write_json_atomic(path, {"latent_scale": float(scale), **info}, indent=2, sort_keys=True)
    return path


def load_latent_scale(workdir: str) -> float:
    """The scale saved by :func:`save_latent_scale` in ``workdir``."""
    path = os.path.join(workdir, SCALE_FILE)
    if not os.path.exists(path):
        raise UserError(f"{workdir} has no {SCALE_FILE}",
                        hint="compute it with jaxflows.models.autoencoder.latent_scale on the "
                             "training images and save it with save_latent_scale")
    with open(path) as f:
        return float(json.load(f)["latent_scale"])


def load_autoencoder(workdir: str, params: str = "best_params",
                     image_shape: Sequence[int] | None = None
                     ) -> tuple[AutoencoderTask, PyTree]:
    """``(task, params)`` of a trained autoencoder workdir. ``params`` names the tree
    (``best_params`` | ``ema_params`` | ``params``; falls back to ``params`` when absent);
    ``image_shape`` defaults to ``config.data.image_shape`` or the dataset's. The alignment,
    perceptual and GAN terms are switched off (they only matter in training; the classifier
    file need not exist here), and ``params`` holds the ``encoder`` and ``decoder`` only."""
    from jaxflows.data.registry import dataset_info
    from jaxflows.train.loop import load_saved_config
    from jaxflows.train.pretrained import read_tree

    config = load_saved_config(workdir)
    if "align" in config.model:
        config.model.align.weight = 0.0
    for key in ("perceptual_weight", "gan_weight"):
        if key in config.model:
            config.model[key] = 0.0
    if image_shape is None:
        image_shape = tuple(config.data.get("image_shape", ()) or ()) or dataset_info(
            config.data.name, config.data.data_dir or None)["image_shape"]
    info = DataInfo.for_images(tuple(int(d) for d in image_shape), 0, 1)
    task = AutoencoderTask(config, info)
    tree = read_tree(workdir)
    chosen = tree.get(params) or tree["params"]
    return task, jax.tree.map(jnp.asarray, AutoencoderTask.ae_params(chosen))
