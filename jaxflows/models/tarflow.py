"""TarFlow: Transformer autoregressive flows (Zhai et al., "Normalizing Flows are Capable
Generative Models", ICML 2025), following apple/ml-tarflow.

Model (``P-C-T-K``: patch size, width, flow blocks, layers per block):

* the image ``[B, H, W, C]`` in [-1, 1] is cut into ``N`` patch tokens of ``D = p*p*C`` numbers
  (:mod:`jaxflows.nn.patches`);
* ``T`` :class:`MetaBlock` s map data to noise. Block ``t`` works in its own token order
  (identity for even ``t``, reversed for odd ``t``): ``h = proj_in(x) + pos_embed
  [+ class_embed[y]]``, ``K`` causal Transformer layers (:mod:`jaxflows.nn.transformer`), a
  zero-initialised ``proj_out`` giving ``(a, b)`` per token, shifted right by one token (token 0
  gets ``(0, 0)``, the identity), and ``z = (x - b) * exp(-a)``. The per-block log-det is
  ``-mean(a)`` over tokens and channels, i.e. **per dimension**;
* prior ``N(0, I)``; loss ``0.5 * mean(z^2) - mean_B(sum_t logdet_t)`` (= NLL/D up to
  ``0.5 log 2 pi``).

Class conditioning: each block has its own ``class_embed [num_classes, C]`` (init randn*0.01);
label ``-1`` means "no label" and uses the **mean** class embedding (ml-tarflow's null class);
training drops labels with probability ``drop_label``.

Variance-preserving option (``nvp=False``): ``proj_out`` gives only ``b`` (``a = 0``, log-det 0)
and sampling scales the noise by a per-(token, dim) prior std. ml-tarflow learns that variance by
an EMA buffer (``var <- lerp(var, E[z^2], 0.1)``) and keeps training the flow against ``N(0, I)``.
We keep no non-param state: the prior log-variance is a **parameter** ``prior_logvar [N, D]`` fit
by maximum likelihood to ``stop_gradient(z)`` (an extra loss term that touches no other weight;
its minimiser is ``E[z^2]``, the EMA's fixed point). The flow's own loss is unchanged.

Logit preprocessing (``logit_alpha > 0``, uniform dequantisation only; not in ml-tarflow): the
flow models ``logit(alpha + (1 - 2 alpha) (x + 1) / 2)`` of the dequantised pixels, RealNVP's and
MAF's transform for bounded data, with its log-det counted in the likelihood (bits/dim stays the
official formula on pixels); the sampler maps back through the sigmoid. On MNIST it spares the flow
learning ~e^6 contractions of the always-black background before anything else.

The flow arithmetic (proj_in, proj_out, affine maps, log-dets) is float32; Transformer matmuls
run in ``config.dtype``. Sampling lives in :mod:`jaxflows.models.tarflow_sampling`.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxflows.data.transforms import uniform_dequantize
from jaxflows.errors import ConfigError
from jaxflows.models import tarflow_sampling as ts
from jaxflows.models.base import DataInfo, Metrics, PyTree, Task, register
from jaxflows.nn.patches import check_patch_size, patchify, unpatchify
from jaxflows.nn.transformer import Transformer, torch_uniform_init

Dtype = Any
_LOG2PI = math.log(2 * math.pi)


def _lp(init, names):
    return nn.with_logical_partitioning(init, names)


class MetaBlock(nn.Module):
    """One TarFlow flow block on tokens ``[B, N, D]`` (see the module docstring).

    Attributes:
      in_dim: token size ``D``.
      width: Transformer width ``C``.
      num_tokens: ``N``.
      num_layers: Transformer layers ``K``.
      head_dim, mlp_ratio: Transformer layout.
      num_classes: 0 for unconditional.
      nvp: affine (True) or volume-preserving shift-only (False).
      flip: reverse the token order inside this block.
      dtype: Transformer matmul dtype.
      remat: rematerialise Transformer layers in the backward pass.
      attention_impl: see :class:`jaxflows.nn.transformer.TransformerLayer`.
      max_log_scale: > 0 soft-clamps the log-scale, ``a = c tanh(a / c)`` (0 = off, official).
    """

    in_dim: int
    width: int
    num_tokens: int
    num_layers: int
    head_dim: int = 64
    mlp_ratio: int = 4
    num_classes: int = 0
    nvp: bool = True
    flip: bool = False
    dtype: Dtype = jnp.float32
    remat: bool = False
    attention_impl: str = "einsum"
    max_log_scale: float = 0.0

    def setup(self):
        """Declares proj_in, pos_embed, class_embed, the Transformer and proj_out."""
        d, c, n = self.in_dim, self.width, self.num_tokens
        out = 2 * d if self.nvp else d
        self.proj_in_kernel = self.param(
            "proj_in_kernel", _lp(torch_uniform_init(d), ("latent", "embed")), (d, c))
        self.proj_in_bias = self.param(
            "proj_in_bias", _lp(torch_uniform_init(d), ("embed",)), (c,))
        self.pos_embed = self.param(
            "pos_embed", _lp(nn.initializers.normal(0.01), ("seq", "embed")), (n, c))
        if self.num_classes:
            self.class_embed = self.param(
                "class_embed", _lp(nn.initializers.normal(0.01), (None, "embed")),
                (self.num_classes, c))
        self.transformer = Transformer(
            c, self.num_layers, self.head_dim, self.mlp_ratio, self.dtype, remat=self.remat,
            attention_impl=self.attention_impl)
        self.proj_out_kernel = self.param(
            "proj_out_kernel", _lp(nn.initializers.zeros, ("embed", "latent")), (c, out))
        self.proj_out_bias = self.param(
            "proj_out_bias", _lp(torch_uniform_init(c), ("latent",)), (out,))

    def _cond(self, y: jax.Array | None) -> jax.Array | float:
        """Class embedding ``[B, 1, C]`` (label -1 or ``y=None`` -> mean embedding), or 0."""
        if not self.num_classes:
            return 0.0
        mean = jnp.mean(self.class_embed, axis=0)
        if y is None:
            return mean[None, None]
        y = jnp.asarray(y, jnp.int32)
        emb = jnp.where((y >= 0)[:, None], self.class_embed[jnp.clip(y, 0)], mean)
        return emb[:, None, :]

    def _head(self, h: jax.Array) -> tuple[jax.Array, jax.Array]:
        out = h.astype(jnp.float32) @ self.proj_out_kernel + self.proj_out_bias
        if self.nvp:
            a = out[..., : self.in_dim]
            if self.max_log_scale > 0:  # bounded expansion per block: no exp overflow cascade
                a = self.max_log_scale * jnp.tanh(a / self.max_log_scale)
            return a, out[..., self.in_dim :]
        return jnp.zeros_like(out), out

    def affine_params(
        self, xp: jax.Array, y: jax.Array | None = None, attn_temp: float | jax.Array = 1.0
    ) -> tuple[jax.Array, jax.Array]:
        """Full causal pass. ``xp: [B, N, D]`` in this block's order -> ``(a, b)`` each
        ``[B, N, D]`` float32, already shifted so row ``i`` depends on tokens ``< i`` only."""
        pos = ts.permute_tokens(self.pos_embed[None], self.flip)
        h = xp.astype(jnp.float32) @ self.proj_in_kernel + self.proj_in_bias + pos + self._cond(y)
        h, _ = self.transformer(h, attn_temp)
        a, b = self._head(h)
        pad = jnp.zeros_like(a[:, :1])
        return (jnp.concatenate([pad, a[:, :-1]], axis=1),
                jnp.concatenate([pad, b[:, :-1]], axis=1))

    def __call__(self, x: jax.Array, y: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """Data -> noise direction. ``x: [B, N, D]`` (natural order) -> ``(z [B, N, D],
        logdet [B])`` with the log-det per dimension (``-mean(a)``)."""
        xp = ts.permute_tokens(x.astype(jnp.float32), self.flip)
        a, b = self.affine_params(xp, y)
        z = (xp - b) * jnp.exp(-a)
        return ts.permute_tokens(z, self.flip), -jnp.mean(a, axis=(1, 2))

    def step(
        self,
        x_chunk: jax.Array,
        start: jax.Array | int,
        cache: tuple[jax.Array, jax.Array],
        y: jax.Array | None = None,
        attn_temp: float | jax.Array = 1.0,
    ) -> tuple[jax.Array, jax.Array, tuple[jax.Array, jax.Array]]:
        """Cached pass over the tokens at positions ``start .. start+L-1`` (this block's order).

        ``x_chunk: [B, L, D]``; ``cache``: ``(k, v)`` each ``[K, B, N, H, Dh]``. Returns
        ``(a, b)`` each ``[B, L, D]`` -- the parameters of the tokens at ``start+1 .. start+L``
        -- and the updated cache.
        """
        length = x_chunk.shape[1]
        pos = ts.permute_tokens(self.pos_embed[None], self.flip)
        pos = jax.lax.dynamic_slice_in_dim(pos, jnp.asarray(start, jnp.int32), length, axis=1)
        h = (x_chunk.astype(jnp.float32) @ self.proj_in_kernel + self.proj_in_bias + pos
             + self._cond(y))
        h, cache = self.transformer(h, attn_temp, cache, start)
        a, b = self._head(h)
        return a, b, cache


class TarFlowModel(nn.Module):
    """The whole flow on images. ``__call__(x_img [B, H, W, C] in [-1, 1], y)`` ->
    ``(z [B, N, D], logdet [B])`` (log-det summed over blocks, per dimension).

    Attributes:
      image_shape: ``(H, W, C)``.
      patch_size: ``p`` (must divide ``H`` and ``W``).
      width, num_blocks, layers_per_block, head_dim, mlp_ratio: ``C, T, K`` and layout.
      num_classes: 0 for unconditional.
      nvp: affine blocks (True) or volume-preserving with a learned prior variance (False).
      dtype: Transformer matmul dtype.
      remat: rematerialise Transformer layers.
      attention_impl: ``'einsum'`` | ``'xla'`` | ``'cudnn'`` | ``'auto'`` for the parallel pass.
      max_log_scale: soft clamp of every block's log-scale (0 = off, as ml-tarflow).
    """

    image_shape: tuple[int, int, int]
    patch_size: int
    width: int
    num_blocks: int
    layers_per_block: int
    head_dim: int = 64
    mlp_ratio: int = 4
    num_classes: int = 0
    nvp: bool = True
    dtype: Dtype = jnp.float32
    remat: bool = False
    attention_impl: str = "einsum"
    max_log_scale: float = 0.0

    @property
    def num_tokens(self) -> int:
        """``N = (H/p)(W/p)``."""
        h, w, _ = self.image_shape
        return (h // self.patch_size) * (w // self.patch_size)

    @property
    def token_dim(self) -> int:
        """``D = p*p*C``."""
        return self.patch_size**2 * self.image_shape[2]

    def block_flip(self, t: int) -> bool:
        """Whether block ``t`` reverses the token order (odd blocks)."""
        return bool(t % 2)

    def setup(self):
        """Declares the ``T`` blocks (odd ones flipped) and, in VP mode, ``prior_logvar``."""
        h, w, _ = self.image_shape
        check_patch_size(h, w, self.patch_size)
        self.blocks = [
            MetaBlock(self.token_dim, self.width, self.num_tokens, self.layers_per_block,
                      self.head_dim, self.mlp_ratio, self.num_classes, self.nvp,
                      self.block_flip(t), self.dtype, self.remat, self.attention_impl,
                      self.max_log_scale, name=f"blocks_{t}")
            for t in range(self.num_blocks)
        ]
        if not self.nvp:
            self.prior_logvar = self.param(
                "prior_logvar", _lp(nn.initializers.zeros, ("seq", "latent")),
                (self.num_tokens, self.token_dim))

    def __call__(
        self, x_img: jax.Array, y: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """Forward (data -> noise), parallel over tokens."""
        x = patchify(x_img.astype(jnp.float32), self.patch_size)
        logdet = jnp.zeros(x.shape[:1], jnp.float32)
        for blk in self.blocks:
            x, ld = blk(x, y)
            logdet = logdet + ld
        return x, logdet

    def forward_tokens(
        self, x: jax.Array, y: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array, list[jax.Array]]:
        """Forward on tokens ``x: [B, N, D]`` -> ``(z, logdet [B], per-block outputs)``."""
        outs = []
        logdet = jnp.zeros(x.shape[:1], jnp.float32)
        for blk in self.blocks:
            x, ld = blk(x, y)
            logdet = logdet + ld
            outs.append(x)
        return x, logdet, outs

    def prior_var(self) -> jax.Array:
        """Prior variance ``[N, D]``: ones (NVP) or ``exp(prior_logvar)`` (VP)."""
        if self.nvp:
            return jnp.ones((self.num_tokens, self.token_dim), jnp.float32)
        return jnp.exp(self.prior_logvar)

    def prior_log_var(self) -> jax.Array:
        """``log prior_var`` ``[N, D]`` (zeros in NVP mode)."""
        return jnp.log(self.prior_var())


# ------------------------------------------------------------------------------------------
# Pixels


def to_signed_unit(image: jax.Array) -> jax.Array:
    """uint8 pixels ``[..]`` -> float32 in [-1, 1] (``x / 127.5 - 1``, ml-tarflow's Normalize).

    Dequantisation (``noise_type='uniform'`` and the bits/dim eval) uses
    :func:`jaxflows.data.transforms.uniform_dequantize`: ``(x + u) / 256 * 2 - 1``, ml-tarflow's
    convention (bin width 2/256, hence ``- D log 128`` in bits/dim).
    """
    return image.astype(jnp.float32) / 127.5 - 1.0


def logit_bijector(alpha: float) -> distrax.Bijector:
    """Elementwise ``x in [-1, 1] -> logit(alpha + (1 - 2 alpha) (x + 1) / 2)`` (RealNVP's / MAF's
    logit preprocessing, as a distrax chain): ``forward_and_log_det`` gives per-element log-dets,
    ``inverse`` maps flow space back to [-1, 1]."""
    if not 0.0 < alpha < 0.5:
        raise ConfigError(f"config.model.logit_alpha={alpha} must be in (0, 0.5), or 0 (off)")
    scale = (1.0 - 2.0 * alpha) / 2.0
    return distrax.Chain([distrax.Inverse(distrax.Sigmoid()),
                          distrax.ScalarAffine(shift=alpha + scale, scale=scale)])


# ------------------------------------------------------------------------------------------
# Task


def official_recipe_config(learning_rate: float) -> ml_collections.ConfigDict:
    """Engine config with ml-tarflow's recipe: AdamW (0.9, 0.95), weight decay 1e-4, one warmup
    epoch, cosine decay to 1e-6, and the ``layers`` logical axis (scanned Transformer layers)."""
    from jaxflows.train.config import base_config

    c = base_config()
    c.sharding_rules = tuple(c.sharding_rules) + (("layers", None),)
    c.optim.name = "adamw"
    c.optim.b1, c.optim.b2 = 0.9, 0.95
    c.optim.weight_decay = 1e-4
    c.optim.schedule = "warmup_cosine"
    c.optim.warmup_epochs = 1.0
    c.optim.learning_rate = learning_rate
    c.optim.end_lr_factor = 1e-6 / learning_rate
    return c


def default_model_config(**overrides: Any) -> ml_collections.ConfigDict:
    """``config.model`` for TarFlow with every key the task reads (defaults: MNIST notebook
    4-128-4-4, Gaussian noise 0.1, unconditional). Experiment configs override fields."""
    m = ml_collections.ConfigDict(dict(
        name="tarflow",
        patch_size=4,
        channels=128,  # Transformer width C
        num_blocks=4,  # flow blocks T
        layers_per_block=4,  # Transformer layers K per block
        head_dim=64,
        mlp_ratio=4,
        num_classes=0,  # 0 = unconditional; else must equal the data's class count
        drop_label=0.0,  # label dropout (-> mean class embedding) during training
        nvp=True,  # affine blocks; False = volume preserving + learned prior variance
        noise_type="gaussian",  # gaussian | uniform (dequantisation, for bits/dim) | none
        noise_std=0.1,  # sigma of the Gaussian input noise, in [-1, 1] pixel units
        remat=False,  # rematerialise Transformer layers (memory for compute)
        attention="einsum",  # parallel-pass attention: einsum | xla | cudnn (GPU flash) | auto
        sample_guidance=0.0,
        sample_attn_temp=1.0,
        sample_annealed=True,
        jacobi_chunk=0,  # 0 = sequential sampling; L > 0 = Jacobi over chunks of L tokens
        jacobi_max_iters=32,
        jacobi_tol=1e-6,
        sample_batch_size=0,  # 0 = all samples in one call
        logit_alpha=0.0,  # > 0: the flow models logit(alpha + (1-2 alpha) x01) (uniform noise only)
        max_log_scale=0.0,  # > 0: soft-clamp each block's log-scale to (-c, c) (0 = official)
    ))
    for k, v in overrides.items():
        if k not in m:
            raise KeyError(f"unknown TarFlow model key {k!r}")
        m[k] = v
    return m


def model_from_config(config: ml_collections.ConfigDict, image_shape) -> TarFlowModel:
    """Builds :class:`TarFlowModel` from ``config.model`` and ``config.dtype``."""
    m = config.model
    h, w, _ = image_shape
    check_patch_size(h, w, int(m.patch_size))
    width, head_dim = int(m.channels), int(m.get("head_dim", 64))
    if width % head_dim:
        raise ConfigError(
            f"config.model.channels={width} is not a multiple of config.model.head_dim={head_dim}")
    return TarFlowModel(
        image_shape=tuple(int(s) for s in image_shape),
        patch_size=int(m.patch_size),
        width=width,
        num_blocks=int(m.num_blocks),
        layers_per_block=int(m.layers_per_block),
        head_dim=head_dim,
        mlp_ratio=int(m.get("mlp_ratio", 4)),
        num_classes=int(m.get("num_classes", 0)),
        nvp=bool(m.get("nvp", True)),
        dtype=jnp.dtype(config.get("dtype", "float32")),
        remat=bool(m.get("remat", False)),
        attention_impl=str(m.get("attention", "einsum")),
        max_log_scale=float(m.get("max_log_scale", 0.0)),
    )


@register("tarflow")
class TarFlowTask(Task):
    """TarFlow for the training engine (see :mod:`jaxflows.models.base`).

    ``config.model`` keys (see :func:`default_model_config`): ``patch_size, channels,
    num_blocks, layers_per_block, head_dim, mlp_ratio, num_classes`` (0 = unconditional; must
    equal the data's class count otherwise), ``nvp, remat, attention, noise_type`` ('gaussian'
    | 'uniform' | 'none'), ``noise_std, drop_label`` and sampling defaults ``sample_guidance,
    sample_attn_temp, sample_annealed, jacobi_chunk, jacobi_max_iters, jacobi_tol,
    sample_batch_size``.
    """

    def __init__(self, config: ml_collections.ConfigDict, data_info: DataInfo):
        super().__init__(config, data_info)
        m = config.model
        self.noise_type = str(m.get("noise_type", "gaussian"))
        if self.noise_type not in ("gaussian", "uniform", "none"):
            raise ConfigError(
                f"config.model.noise_type={self.noise_type!r}; use gaussian, uniform or none")
        self.noise_std = float(m.get("noise_std", 0.0))
        self.drop_label = float(m.get("drop_label", 0.0))
        if not 0.0 <= self.drop_label < 1.0:
            raise ConfigError(f"config.model.drop_label={self.drop_label} must be in [0, 1)")
        ncls = int(m.get("num_classes", 0))
        if ncls and data_info.num_classes and ncls != data_info.num_classes:
            raise ConfigError(
                f"config.model.num_classes={ncls} but the data has {data_info.num_classes} classes")
        try:
            self.model = model_from_config(config, data_info.image_shape)
        except ValueError as e:
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(str(e)) from None
        self.num_classes = ncls
        self.logit_alpha = float(m.get("logit_alpha", 0.0))
        self._logit = None
        if self.logit_alpha:
            if self.noise_type != "uniform":
                raise ConfigError(
                    "config.model.logit_alpha needs noise_type='uniform' (the logit of "
                    f"Gaussian-noised pixels is undefined), got {self.noise_type!r}")
            self._logit = logit_bijector(self.logit_alpha)
        self.best_metric = "bpd" if self.noise_type == "uniform" else "loss"
        self._jitted: dict = {}

    # ---- helpers ---------------------------------------------------------------------
    def _labels(self, batch) -> jax.Array | None:
        if not self.num_classes:
            return None
        return jnp.asarray(batch["label"], jnp.int32)

    def _apply(self, params, x, y):
        """Flow of pixels ``x`` in [-1, 1] -> ``(z, logdet per dimension [B])``, the logit
        preprocessing (when on) included in the log-det."""
        if self._logit is None:
            return self.model.apply({"params": params}, x, y)
        x, ld_pre = self._logit.forward_and_log_det(x)
        z, logdet = self.model.apply({"params": params}, x, y)
        return z, logdet + jnp.mean(ld_pre, axis=(1, 2, 3))

    def _noisy(self, rng, image):
        if self.noise_type == "uniform":
            return uniform_dequantize(rng, image)
        x = to_signed_unit(image)
        if self.noise_type == "gaussian":
            x = x + self.noise_std * jax.random.normal(rng, x.shape, jnp.float32)
        return x

    # ---- Task API --------------------------------------------------------------------
    def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> PyTree:
        """Params (with logical-partitioning boxes) from a dummy one-example input."""
        h, w, c = self.data_info.image_shape
        x = jnp.zeros((1, h, w, c), jnp.float32)
        y = jnp.zeros((1,), jnp.int32) if self.num_classes else None
        return self.model.init(rng, x, y)["params"]

    def loss(
        self, params: PyTree, batch: dict[str, jax.Array], rng: jax.Array, step: jax.Array
    ) -> tuple[jax.Array, Metrics]:
        """``0.5 mean(z^2) - mean(sum_t logdet_t)`` on noised / dequantised pixels, with label
        dropout (label -> -1, the mean class embedding). VP mode adds the prior-variance fit."""
        del step
        r_noise, r_drop = jax.random.split(rng)
        x = self._noisy(r_noise, batch["image"])
        y = self._labels(batch)
        if y is not None and self.drop_label > 0:
            drop = jax.random.uniform(r_drop, y.shape) < self.drop_label
            y = jnp.where(drop, -1, y)
        z, logdet = self._apply(params, x, y)
        mse = 0.5 * jnp.mean(jnp.square(z))
        flow_loss = mse - jnp.mean(logdet)
        metrics = {"flow_loss": flow_loss, "mse_z": mse, "logdet": jnp.mean(logdet)}
        loss = flow_loss
        if not self.model.nvp:
            logvar = self.model.apply({"params": params}, method="prior_log_var")
            z2 = jax.lax.stop_gradient(jnp.mean(jnp.square(z), axis=0))
            var_fit = 0.5 * jnp.mean(z2 * jnp.exp(-logvar) + logvar)
            loss = loss + var_fit
            metrics["prior_var_fit"] = var_fit
        metrics["loss"] = loss
        return loss, metrics

    def eval_batch(
        self, params: PyTree, batch: dict[str, jax.Array], rng: jax.Array
    ) -> Metrics:
        """Per-example ``{'bpd', 'loss'}`` (plus ``'bpd_cond'`` for conditional models).

        ``bpd``: ml-tarflow's protocol -- one uniform dequantisation sample in float32, no label
        (mean class embedding), ``log p = sum(-0.5 (z^2 + log 2 pi)) - D log 128``,
        ``bpd = (-log p / D - sum_t logdet_t) / ln 2``. ``loss``: the training objective per
        example at the training noise, with the true labels.
        """
        image = batch["image"]
        dim = math.prod(image.shape[1:])
        r_deq, r_noise = jax.random.split(rng)
        x_deq = uniform_dequantize(r_deq, image)

        def bpd_of(z, logdet):
            log_p = -0.5 * jnp.sum(jnp.square(z) + _LOG2PI, axis=(1, 2)) - dim * math.log(128)
            return (-log_p / dim - logdet) / math.log(2)

        y = self._labels(batch)
        out = {}
        uncond_y = None if y is None else -jnp.ones_like(y)
        z, logdet = self._apply(params, x_deq, uncond_y)
        out["bpd"] = bpd_of(z, logdet)
        if self.noise_type == "uniform" and y is None:
            out["loss"] = 0.5 * jnp.mean(jnp.square(z), axis=(1, 2)) - logdet
            return out
        if y is not None:
            zc, ldc = self._apply(params, x_deq, y)
            out["bpd_cond"] = bpd_of(zc, ldc)
            if self.noise_type == "uniform":
                out["loss"] = 0.5 * jnp.mean(jnp.square(zc), axis=(1, 2)) - ldc
                return out
        z, logdet = self._apply(params, self._noisy(r_noise, image), y)
        out["loss"] = 0.5 * jnp.mean(jnp.square(z), axis=(1, 2)) - logdet
        return out

    def final_eval(self, params: PyTree, batches, rng: jax.Array) -> dict[str, Any]:
        """Per-image bits/dim on the test split (one fresh dequantisation sample per image):
        ``bpd_sem`` (standard error of the mean), ``bpd_median``, ``bpd_max`` and
        ``num_bpd_over_8`` (images above 8 bits/dim, i.e. worse than a uniform density: a
        mean can hide a handful of blown-up images), plus ``per_example['bpd']``."""
        if ("eval_batch",) not in self._jitted:
            self._jitted[("eval_batch",)] = jax.jit(self.eval_batch)
        fn = self._jitted[("eval_batch",)]
        vals = []
        for i, batch in enumerate(batches()):
            out = fn(nn.unbox(params), batch, jax.random.fold_in(rng, i))
            keep = np.asarray(batch["mask"]).astype(bool)
            vals.append(np.asarray(out["bpd"])[keep])
        bpd = np.concatenate(vals) if vals else np.zeros((0,))
        if bpd.size == 0:
            return {}
        finite = bpd[np.isfinite(bpd)]
        return {
            "bpd_sem": float(np.std(bpd, ddof=1) / np.sqrt(bpd.size)) if bpd.size > 1 else 0.0,
            "bpd_median": float(np.median(finite)) if finite.size else float("nan"),
            "bpd_max": float(np.max(bpd)),
            "num_bpd_over_8": int(np.sum(~(bpd <= 8.0))),
            "per_example": {"bpd": bpd},
        }

    def _resolve_labels(self, rng, num, class_label):
        if not self.num_classes:
            if class_label is not None:
                raise ValueError("class_label given but the model is unconditional")
            return None
        if class_label is None:
            return jax.random.randint(rng, (num,), 0, self.num_classes, jnp.int32)
        labels = np.asarray(class_label, np.int64)
        if labels.ndim == 0:
            labels = np.full((num,), int(labels))
        if labels.shape != (num,):
            raise ValueError(f"class_label must be an int or have shape ({num},), got "
                             f"{labels.shape}")
        bad = labels[(labels < -1) | (labels >= self.num_classes)]
        if bad.size:
            raise ValueError(f"class id {int(bad[0])} out of range [0, {self.num_classes}) "
                             "(-1 = no label)")
        return jnp.asarray(labels, jnp.int32)

    def sample_options(self, guidance: float | None = None, attn_temp: float | None = None,
                       annealed: bool | None = None, jacobi_chunk: int | None = None,
                       jacobi_max_iters: int | None = None,
                       jacobi_tol: float | None = None) -> ts.SampleOptions:
        """:class:`SampleOptions` from the arguments, falling back on ``config.model``."""
        m = self.config.model
        opts = ts.SampleOptions(
            guidance=float(m.get("sample_guidance", 0.0) if guidance is None else guidance),
            attn_temp=float(m.get("sample_attn_temp", 1.0) if attn_temp is None else attn_temp),
            annealed=bool(m.get("sample_annealed", True) if annealed is None else annealed),
            jacobi_chunk=int(m.get("jacobi_chunk", 0) if jacobi_chunk is None else jacobi_chunk),
            jacobi_max_iters=int(m.get("jacobi_max_iters", 32)
                                 if jacobi_max_iters is None else jacobi_max_iters),
            jacobi_tol=float(m.get("jacobi_tol", 1e-6) if jacobi_tol is None else jacobi_tol),
        )
        if opts.guidance != 0 and not self.num_classes and opts.attn_temp == 1.0:
            raise ValueError(
                "guidance asked of an unconditional model: it needs attn_temp != 1 "
                "(unconditional guidance by attention temperature)")
        if opts.jacobi_chunk > 0 and self.model.num_tokens % opts.jacobi_chunk:
            raise ValueError(f"jacobi_chunk {opts.jacobi_chunk} does not divide the number of "
                             f"tokens {self.model.num_tokens}")
        return opts

    def _sample_fn(self, opts: ts.SampleOptions):
        """Jitted ``(params, z [B, N, D], y) -> images [B, H, W, C]`` in [-1, 1] (unclipped)."""
        key = ("sample", opts)
        if key not in self._jitted:
            model, shape, p = self.model, self.data_info.image_shape, self.model.patch_size

            def fn(params, z, y):
                x = unpatchify(ts.sample_tokens(model, params, z, y, opts), p, shape)
                return x if self._logit is None else self._logit.inverse(x)

            self._jitted[key] = jax.jit(fn)
        return self._jitted[key]

    def _denoise_fn(self, sigma: float):
        key = ("denoise", sigma)
        if key not in self._jitted:
            model = self.model
            self._jitted[key] = jax.jit(
                lambda params, x, y: ts.denoise(model, params, x, y, sigma))
        return self._jitted[key]

    def sample(
        self,
        params: PyTree,
        rng: jax.Array,
        num: int,
        guidance: float | None = None,
        class_label: int | Any | None = None,
        denoise: bool = False,
        attn_temp: float | None = None,
        annealed: bool | None = None,
        jacobi_chunk: int | None = None,
        denoise_sigma: float | None = None,
        batch_size: int | None = None,
        max_retries: int = 3,
        temperature: float = 1.0,
        return_both: bool = False,
        **kwargs,
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """``num`` images ``[num, H, W, C]`` float32 in [0, 1].

        Args:
          guidance: class (or attention-temperature) guidance weight; default
            ``config.model.sample_guidance``.
          class_label: None (random classes for a conditional model), an int, or ``[num]`` ints;
            -1 = the null (mean) class.
          denoise: apply the one-step Tweedie denoiser at ``denoise_sigma`` (default: the
            training ``noise_std``).
          attn_temp, annealed, jacobi_chunk: see :class:`SampleOptions`.
          batch_size: samples per compiled call (default ``config.model.sample_batch_size`` or
            ``num``).
          max_retries: samples containing NaN are redrawn with fresh noise up to this many times.
          temperature: prior temperature ``T``, noise ``z ~ N(0, T^2 I)`` (1 = the model).
          return_both: with ``denoise``, return ``(samples, denoised samples)`` of the same draw.
        """
        if return_both and not denoise:
            raise ValueError("return_both needs denoise=True")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if kwargs:
            logging.info("tarflow.sample ignores %s", sorted(kwargs))
        opts = self.sample_options(guidance, attn_temp, annealed, jacobi_chunk)
        r_lab, r_noise = jax.random.split(rng)
        y = self._resolve_labels(r_lab, num, class_label)
        sigma = 0.0
        if denoise:
            sigma = self.noise_std if denoise_sigma is None else float(denoise_sigma)
            if self._logit is not None:
                raise ValueError("denoise is not defined for a logit-preprocessed model "
                                 "(config.model.logit_alpha > 0)")
            if sigma <= 0:
                raise ValueError("denoise needs a noise level: train with noise_type='gaussian' "
                                 "or pass denoise_sigma")
        fn = self._sample_fn(opts)
        bs = int(batch_size or self.config.model.get("sample_batch_size", 0) or num)
        n, d = self.model.num_tokens, self.model.token_dim
        outs, outs_denoised = [], []
        for i, start in enumerate(range(0, num, bs)):
            cnt = min(bs, num - start)
            yb = None if y is None else y[start:start + cnt]
            key = jax.random.fold_in(r_noise, i)
            z = temperature * jax.random.normal(key, (cnt, n, d), jnp.float32)
            x = fn(params, z, yb)
            for retry in range(max_retries):
                bad = np.asarray(jnp.any(jnp.isnan(x), axis=(1, 2, 3)))
                if not bad.any():
                    break
                logging.warning("tarflow: %d samples with NaN, redrawing (try %d)",
                                int(bad.sum()), retry + 1)
                key = jax.random.fold_in(key, 1000 + retry)
                z_new = temperature * jax.random.normal(key, z.shape, jnp.float32)
                z = jnp.where(jnp.asarray(bad)[:, None, None], z_new, z)
                x = jnp.where(jnp.asarray(bad)[:, None, None, None], fn(params, z, yb), x)
            outs.append(x)
            if sigma > 0:  # the one-step denoiser on the (NaN-free) draw
                outs_denoised.append(self._denoise_fn(sigma)(params, x, yb))

        def to_unit(parts):
            return jnp.clip((jnp.concatenate(parts, axis=0) + 1.0) / 2.0, 0.0, 1.0)

        if return_both:
            return to_unit(outs), to_unit(outs_denoised)
        return to_unit(outs_denoised if sigma > 0 else outs)


def count_params(model: TarFlowModel) -> int:
    """Number of parameters of ``model`` via ``jax.eval_shape`` (nothing is allocated)."""
    h, w, c = model.image_shape
    y = jnp.zeros((1,), jnp.int32) if model.num_classes else None
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, h, w, c)), y)
    shapes = nn.unbox(shapes)
    return int(sum(math.prod(a.shape) for a in jax.tree.leaves(shapes)))
