"""STARFlow: deep-shallow Transformer autoregressive flows on latents (Gu et al. 2025,
"STARFlow: Scaling Latent Normalizing Flows for High-resolution Image Synthesis"), following
apple/ml-starflow (``transformer_flow.py``, ``misc/pe.py``).

The flow works on a latent grid ``[B, H, W, C]`` (cut into ``p x p`` patches, ``p = 1`` by
default, patch vectors ordered ``(ph, pw, c)`` as the official ``patchify``) or directly on
tokens ``[B, N, D]``. It shares TarFlow's block, :class:`jaxflows.models.tarflow.MetaBlock`, with
STARFlow's options switched on:

* ``shift='sos'``: a learned input token ``sos_embed [1, 1, D]``; the input sequence is
  ``[sos, x_0 .. x_{N-2}]``, so every token (token 0 included) is transformed;
* ``scale='softplus'``: ``sigma = softplus(a + log(e - 1))``, ``z = (x - mu) / sigma``, log-det
  ``-log sigma`` per element, where ``(a, mu)`` are the halves of ``proj_out``'s output after
  the soft clip ``4 tanh(out / 4)``;
* a final RMSNorm ``(1 + w)`` before ``proj_out``; RoPE positions (rows, columns and, in a
  conditional model, a prefix axis; :mod:`jaxflows.nn.rope`);
* ``l(N)-d`` layout: ``layers_per_block = (2, 2, 2, 2, 2, 18)`` are ``N - 1`` shallow blocks and
  one **deep block, last in the data -> noise direction** (first when sampling);
* permutations (``seq_order='L2R'``, official): shallow block ``i`` reverses the token order
  when ``i`` is even and the deep block when the number of blocks is odd (``perms[(i+1) % 2]``,
  ``perms[num_blocks % 2]`` with ``perms = [identity, flip]``); ``'R2L'`` alternates starting
  with the identity;
* conditioning is a prefix in the deep block only (``cond_top_only``): text features
  ``[B, T, E]``, or a class label as the one-hot row ``eye(K + 1)[y]`` (``[B, 1, K + 1]``; the
  null label is ``K``, and ``-1`` is read as ``K`` too), projected by ``proj_txt`` and prepended
  under one causal mask.

Loss (official ``get_loss`` plus ``train.py``'s latent-norm penalty): per example
``0.5 * mean(z^2) - sum_t mean(logdet_t)``, averaged over the batch, plus
``1e-4 * sum_t mean(x_t^2)`` over the flow's intermediate latents (the input and the shallow
blocks' outputs, not ``z``).

Deviation: per-block log-dets come back in natural token order (the official ones are in each
block's permuted order); the loss is unchanged.

Sampling and guidance live in :mod:`jaxflows.models.starflow_sampling`.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxflows.errors import ConfigError
from jaxflows.models.tarflow import MetaBlock
from jaxflows.nn.patches import check_patch_size, patchify, unpatchify

Dtype = Any

#: ``StarFlowModel.seq_order`` values
SEQ_ORDERS = ("L2R", "R2L")
#: weight of the latent-norm penalty in the official training script
LATENT_NORM_WEIGHT = 1e-4


class StarFlowModel(nn.Module):
    """The STARFlow flow (see the module docstring).

    ``__call__(x, cond)`` maps data to noise: ``x: [B, H, W, C]`` (or ``[B, N, D]``) ->
    ``(z, logdets, outputs)`` with ``z`` shaped like ``x``, ``logdets`` one ``[B, N, D]`` array
    per block (``-log sigma``, natural token order) and ``outputs`` the token sequences
    ``[B, N, D]`` before the first block and after each block (``num_blocks + 1`` of them, the
    last being ``z``'s tokens).

    Attributes:
      input_shape: ``(H, W, C)`` latent grid or ``(N, D)`` tokens.
      width: Transformer width ``C``.
      layers_per_block: layers of each block, data -> noise order; the last is the deep block.
      patch_size: ``p`` for grids (1 = one token per latent pixel).
      head_dim, mlp_ratio: Transformer layout.
      num_classes: ``K > 0``: class-conditional via a one-hot prefix ``[B, 1, K + 1]``.
      prefix_len, prefix_dim: ``T, E`` of a feature prefix (text); exclusive with classes.
      token_grid: ``(rows, cols)`` of token inputs for RoPE (``None`` = ``(1, N)``); grids use
        ``(H/p, W/p)``.
      seq_order: one of :data:`SEQ_ORDERS`.
      positions, shift, scale, soft_clip, final_norm: :class:`MetaBlock` options (STARFlow's by
        default; TarFlow's ``'learned'``, ``'output'``, ``'exp'``, 0, False are allowed).
      rope_ref_len: RoPE reference length (0 = ``sqrt(rows * cols)``).
      dtype, remat, attention_impl, unroll_layers: as
        :class:`jaxflows.models.tarflow.TarFlowModel`.
    """

    input_shape: tuple[int, ...]
    width: int
    layers_per_block: tuple[int, ...]
    patch_size: int = 1
    head_dim: int = 64
    mlp_ratio: int = 4
    num_classes: int = 0
    prefix_len: int = 0
    prefix_dim: int = 0
    token_grid: tuple[int, int] | None = None
    seq_order: str = "L2R"
    positions: str = "rope"
    shift: str = "sos"
    scale: str = "softplus"
    soft_clip: float = 4.0
    final_norm: bool = True
    rope_ref_len: float = 0.0
    dtype: Dtype = jnp.float32
    remat: bool | str = False
    attention_impl: str = "einsum"
    unroll_layers: bool = True

    # --- shapes

    @property
    def is_grid(self) -> bool:
        """Whether inputs are grids ``[B, H, W, C]`` (else tokens ``[B, N, D]``)."""
        return len(self.input_shape) == 3

    @property
    def num_blocks(self) -> int:
        """Number of flow blocks (shallow ones plus the deep one)."""
        return len(self.layers_per_block)

    @property
    def num_tokens(self) -> int:
        """``N``."""
        if self.is_grid:
            h, w, _ = self.input_shape
            return (h // self.patch_size) * (w // self.patch_size)
        return self.input_shape[0]

    @property
    def token_dim(self) -> int:
        """``D`` (``p*p*C`` for grids)."""
        if self.is_grid:
            return self.patch_size**2 * self.input_shape[2]
        return self.input_shape[1]

    @property
    def grid(self) -> tuple[int, int]:
        """``(rows, cols)`` of the tokens (RoPE positions)."""
        if self.is_grid:
            h, w, _ = self.input_shape
            return h // self.patch_size, w // self.patch_size
        return tuple(self.token_grid) if self.token_grid else (1, self.num_tokens)

    @property
    def cond_shape(self) -> tuple[int, int]:
        """``(T, E)`` of the deep block's prefix (``(0, 0)`` for an unconditional model)."""
        if self.num_classes:
            return 1, self.num_classes + 1
        return self.prefix_len, self.prefix_dim

    @property
    def conditional(self) -> bool:
        """Whether the deep block takes a prefix."""
        return self.cond_shape[0] > 0

    def block_flip(self, t: int) -> bool:
        """Whether block ``t`` (data -> noise order) reverses the token order."""
        last = self.num_blocks - 1
        if self.seq_order == "L2R":
            return bool((self.num_blocks if t == last else t + 1) % 2)
        return bool((last if t == last else t) % 2)

    def block_prefix_len(self, t: int) -> int:
        """Prefix tokens of block ``t`` (only the deep block has them)."""
        return self.cond_shape[0] if t == self.num_blocks - 1 else 0

    def check(self) -> None:
        """Raises :class:`ConfigError` for inconsistent options (called by ``setup``)."""
        if len(self.input_shape) not in (2, 3):
            raise ConfigError(f"input_shape {self.input_shape} must be (H, W, C) or (N, D)")
        if self.is_grid:
            h, w, _ = self.input_shape
            try:
                check_patch_size(h, w, self.patch_size)
            except ValueError as e:
                raise ConfigError(str(e)) from None
        elif self.patch_size != 1:
            raise ConfigError("patch_size applies to grid inputs (H, W, C) only")
        if not self.layers_per_block or min(self.layers_per_block) < 1:
            raise ConfigError(f"layers_per_block {self.layers_per_block} needs at least one "
                              "block, each with at least one layer")
        if self.seq_order not in SEQ_ORDERS:
            raise ConfigError(f"seq_order={self.seq_order!r}; use one of {', '.join(SEQ_ORDERS)}")
        if self.num_classes < 0:
            raise ConfigError(f"num_classes={self.num_classes} must be >= 0")
        if self.num_classes and (self.prefix_len or self.prefix_dim):
            raise ConfigError("num_classes and a feature prefix (prefix_len, prefix_dim) are "
                              "exclusive")
        rows, cols = self.grid
        if rows * cols != self.num_tokens:
            raise ConfigError(f"token_grid {rows}x{cols} does not hold {self.num_tokens} tokens")

    def setup(self):
        """Declares ``blocks_0 .. blocks_{T-1}`` (the last one deep, with the prefix)."""
        self.check()
        blocks = []
        for t, layers in enumerate(self.layers_per_block):
            t_len = self.block_prefix_len(t)
            blocks.append(MetaBlock(
                self.token_dim, self.width, self.num_tokens, layers, self.head_dim,
                self.mlp_ratio, flip=self.block_flip(t), dtype=self.dtype, remat=self.remat,
                attention_impl=self.attention_impl, shift=self.shift, scale=self.scale,
                soft_clip=self.soft_clip, final_norm=self.final_norm, positions=self.positions,
                grid=self.grid, rope_prefix_axis=self.conditional, rope_ref_len=self.rope_ref_len,
                prefix_len=t_len, prefix_dim=self.cond_shape[1] if t_len else 0,
                unroll_layers=self.unroll_layers, name=f"blocks_{t}"))
        self.blocks = blocks

    # --- layout and conditioning

    def to_tokens(self, x: jax.Array) -> jax.Array:
        """Inputs ``[B, *input_shape]`` -> float32 tokens ``[B, N, D]``."""
        self.check()
        x = jnp.asarray(x, jnp.float32)
        if tuple(x.shape[1:]) != tuple(self.input_shape):
            raise ValueError(f"input of shape {x.shape[1:]}; the model takes {self.input_shape}")
        return patchify(x, self.patch_size) if self.is_grid else x

    def from_tokens(self, tokens: jax.Array) -> jax.Array:
        """Tokens ``[B, N, D]`` -> ``[B, *input_shape]``."""
        if self.is_grid:
            return unpatchify(tokens, self.patch_size, tuple(self.input_shape))
        return tokens

    def cond_prefix(self, cond: jax.Array | None) -> jax.Array | None:
        """The deep block's prefix ``[B, T, E]`` float32, or ``None`` (unconditional model).

        ``cond``: int labels ``[B]`` in ``0 .. K`` (``K`` or ``-1`` = null, also used for
        ``cond=None``) for a class-conditional model -> ``eye(K + 1)[y]`` ``[B, 1, K + 1]``;
        features ``[B, T, E]`` for a prefix model (required).
        """
        if not self.conditional:
            if cond is not None:
                raise ValueError("this STARFlow model is unconditional; pass cond=None")
            return None
        if self.num_classes:
            if cond is None:
                raise ValueError("pass labels [B] (the null label is num_classes or -1)")
            y = jnp.asarray(cond)
            if y.ndim != 1 or not jnp.issubdtype(y.dtype, jnp.integer):
                raise ValueError(f"class labels must be int [B], got {y.dtype} {y.shape}")
            y = jnp.where(y < 0, self.num_classes, y)
            return jax.nn.one_hot(y, self.num_classes + 1, dtype=jnp.float32)[:, None, :]
        if cond is None:
            raise ValueError(f"pass the prefix features [B, {self.prefix_len}, "
                             f"{self.prefix_dim}] (the caller's null features for none)")
        return jnp.asarray(cond, jnp.float32)

    def null_cond(self, batch: int) -> jax.Array:
        """Null labels ``[batch]`` (id ``K``) of a class-conditional model."""
        if not self.num_classes:
            raise ValueError("only a class-conditional model has a built-in null condition")
        return jnp.full((batch,), self.num_classes, jnp.int32)

    # --- forward

    def forward_tokens(
        self, x: jax.Array, cond: jax.Array | None = None
    ) -> tuple[jax.Array, list[jax.Array], list[jax.Array]]:
        """Data -> noise on tokens ``x: [B, N, D]`` -> ``(z [B, N, D], logdets, outputs)``
        (see the class docstring)."""
        prefix = self.cond_prefix(cond)
        x = jnp.asarray(x, jnp.float32)
        outputs, logdets = [x], []
        for t, blk in enumerate(self.blocks):
            x, ld = blk.forward_elementwise(
                x, None, prefix if self.block_prefix_len(t) else None)
            outputs.append(x)
            logdets.append(ld)
        return x, logdets, outputs

    def __call__(
        self, x: jax.Array, cond: jax.Array | None = None
    ) -> tuple[jax.Array, list[jax.Array], list[jax.Array]]:
        """Data -> noise: ``x: [B, *input_shape]`` -> ``(z [B, *input_shape], logdets,
        outputs)``; ``cond`` as :meth:`cond_prefix`."""
        z, logdets, outputs = self.forward_tokens(self.to_tokens(x), cond)
        return self.from_tokens(z), logdets, outputs


def loss_terms(
    z: jax.Array, logdets: list[jax.Array], outputs: list[jax.Array] | None = None,
    latent_norm_weight: float = LATENT_NORM_WEIGHT,
) -> dict[str, jax.Array]:
    """STARFlow's training loss and its parts (scalars).

    ``z: [B, ...]``, ``logdets``: per-block ``[B, ...]``, ``outputs``: the forward's token
    sequences (the last, ``z``, is not penalised). ``nll = mean_B(0.5 * mean(z^2) -
    sum_t mean(logdet_t))`` (per dimension, up to ``0.5 log 2 pi``), ``latent_norm =
    sum_{t < T} mean(outputs_t^2)``, ``loss = nll + latent_norm_weight * latent_norm``.
    """
    axes = tuple(range(1, z.ndim))
    loss_z = 0.5 * jnp.mean(jnp.square(z.astype(jnp.float32)), axis=axes)
    loss_ld = -sum(jnp.mean(ld, axis=tuple(range(1, ld.ndim))) for ld in logdets)
    nll = jnp.mean(loss_z + loss_ld)
    reg = sum(jnp.mean(jnp.square(o)) for o in (outputs or [])[:-1])
    reg = jnp.asarray(reg, jnp.float32)
    return {"loss": nll + latent_norm_weight * reg, "nll": nll, "loss_z": jnp.mean(loss_z),
            "loss_logdet": jnp.mean(loss_ld), "latent_norm": reg}


def example_cond(model: StarFlowModel, batch: int = 1) -> jax.Array | None:
    """A placeholder condition of the right kind (null labels, zero features, or None)."""
    if model.num_classes:
        return model.null_cond(batch)
    if model.conditional:
        return jnp.zeros((batch, model.prefix_len, model.prefix_dim), jnp.float32)
    return None


def init_shapes(model: StarFlowModel) -> Any:
    """The model's ``params`` as ``jax.ShapeDtypeStruct`` s (``jax.eval_shape``, nothing
    allocated, partitioning metadata removed)."""
    x = jnp.zeros((1, *model.input_shape), jnp.float32)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x, example_cond(model))
    return nn.unbox(shapes)["params"]


def count_params(model: StarFlowModel) -> int:
    """Number of parameters of ``model`` via ``jax.eval_shape`` (nothing is allocated)."""
    return int(sum(math.prod(a.shape) for a in jax.tree.leaves(init_shapes(model))))
