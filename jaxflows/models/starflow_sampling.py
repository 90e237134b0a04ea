"""STARFlow sampling: the sequential KV-cache inverse, guidance and block-wise Jacobi (Gu et al.
2025, "STARFlow: Scaling Latent Normalizing Flows for High-resolution Image Synthesis";
apple/ml-starflow ``transformer_flow.py``).

All functions take the Flax module ``model`` (a :class:`jaxflows.models.starflow.StarFlowModel`)
and its ``params``; they are pure and jit-able (``model`` and :class:`SampleOptions` static).

**Inverse.** The blocks run in reverse, **deep block first**. Each is inverted in its own token
order by :func:`jaxflows.models.tarflow_sampling.invert_block` (the loop TarFlow uses too): with
the SOS shift, input row 0 is the SOS token and row ``i`` is token ``i - 1``; the cached pass
over row ``i`` gives ``(sigma, mu)`` of token ``i`` and ``x_i = z_i * sigma + mu`` (``N``
steps; TarFlow's output shift takes ``N - 1``). The deep block's prefix is written into its KV
cache (positions ``0 .. T-1``) before the first token.

**Guidance** (``guidance = w > 0``, conditional models, deep block only): the batch is doubled
into ``[cond; uncond]`` (prefix ``[cond; null]``, one cache of ``2B`` rows). Per token the two
heads ``N(mu_c, sigma_c^2)`` and ``N(mu_u, sigma_u^2)`` are combined and the guided token is fed
to both halves. Rules (``rule``):

* ``'gaussian'`` (STARFlow): the Gaussian ``p_c^{1+w} / p_u^w`` with the ratio clipped,
  ``s = min(sigma_c / sigma_u, 1)^2``, ``sigma = sigma_c / sqrt(1 + w - w s)``,
  ``mu = ((1 + w) mu_c - w s mu_u) / (1 + w - w s)`` (:func:`gaussian_guidance`);
* ``'linear'`` (TarFlow, for comparison): ``log sigma`` and ``mu`` extrapolated,
  ``v_c + w (v_c - v_u)`` (the rule of :mod:`jaxflows.models.tarflow_sampling`, on
  ``log sigma``).

The ``'gaussian'`` rule is plain CFG on ``mu`` with the weight :func:`effective_guidance`
lowered wherever the conditional head is sharper; :func:`deep_block_sigma_ratio` measures the
``sigma_c / sigma_u`` it sees on given (e.g. sampled) inputs.

With ``annealed=True`` the weight at input row ``i`` is ``w (i + 1) / S`` with ``S`` the
number of steps (``N``; ``N - 1`` for the output shift); off in the official sampler. The
shallow blocks are unconditional and run unguided on the ``B`` rows.

**Jacobi** (``jacobi_chunk = L > 0``): chunks of ``L`` tokens updated in parallel from the noise
as first guess until ``mean((new - old)^2) / mean(new^2) < jacobi_tol`` (1e-3) or
``jacobi_max_iters`` (32) iterations, the official stopping rule.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax

from jaxflows.errors import ConfigError
from jaxflows.models import tarflow_sampling as ts
from jaxflows.models.tarflow import scale_log_sigma, scale_sigma
from jaxflows.nn.transformer import init_cache

#: ``SampleOptions.rule`` values
RULES = ("gaussian", "linear")


@dataclasses.dataclass(frozen=True)
class SampleOptions:
    """Static sampler settings (hashable, so they can key a jit cache).

    Attributes:
      guidance: guidance weight ``w`` (0 = none).
      rule: one of :data:`RULES`.
      annealed: ramp the weight over the deep block's steps, ``w (i + 1) / S``.
      jacobi_chunk: 0 = sequential; ``L > 0`` = block-wise Jacobi (``L`` divides ``N``).
      jacobi_max_iters: iteration cap per chunk.
      jacobi_tol: relative change below which a chunk stops.
    """

    guidance: float = 0.0
    rule: str = "gaussian"
    annealed: bool = False
    jacobi_chunk: int = 0
    jacobi_max_iters: int = 32
    jacobi_tol: float = 1e-3

    def check(self) -> None:
        """Raises :class:`ConfigError` for bad values."""
        if self.rule not in RULES:
            raise ConfigError(f"guidance rule {self.rule!r}; use one of {', '.join(RULES)}")
        if self.guidance < 0:
            raise ConfigError(f"guidance={self.guidance} must be >= 0")
        if self.jacobi_chunk < 0 or self.jacobi_max_iters < 1 or self.jacobi_tol < 0:
            raise ConfigError("jacobi_chunk must be >= 0, jacobi_max_iters >= 1, jacobi_tol >= 0")


def gaussian_guidance(
    sigma_c: jax.Array, mu_c: jax.Array, sigma_u: jax.Array, mu_u: jax.Array,
    w: float | jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """STARFlow's guided Gaussian ``(sigma, mu)`` from the conditional and unconditional heads
    (same shapes, any): ``s = min(sigma_c / sigma_u, 1)^2``, ``sigma = sigma_c / sqrt(1 + w -
    w s)``, ``mu = ((1 + w) mu_c - w s mu_u) / (1 + w - w s)``."""
    s = jnp.square(jnp.minimum(sigma_c / sigma_u, 1.0))
    den = 1.0 + w - w * s
    return sigma_c / jnp.sqrt(den), ((1.0 + w) * mu_c - (w * s) * mu_u) / den


def effective_guidance(sigma_ratio: jax.Array, w: float | jax.Array) -> jax.Array:
    """The weight the ``'gaussian'`` rule puts on ``mu_c - mu_u``: its ``mu`` is ``mu_c + w_eff
    (mu_c - mu_u)`` with ``w_eff = w s / (1 + w - w s)``, ``s = min(sigma_ratio, 1)^2`` and
    ``sigma_ratio = sigma_c / sigma_u`` (any shape). ``w_eff = w`` (plain CFG on ``mu``) when
    the two heads are equally confident; it falls towards 0 as the conditional head becomes
    the sharper one, which is what keeps the rule stable at large ``w``."""
    s = jnp.square(jnp.minimum(sigma_ratio, 1.0))
    return w * s / (1.0 + w - w * s)


def linear_guidance(
    log_sigma_c: jax.Array, mu_c: jax.Array, log_sigma_u: jax.Array, mu_u: jax.Array,
    w: float | jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """TarFlow's rule on ``(log sigma, mu)``: ``v_c + w (v_c - v_u)`` for both; returns
    ``(sigma, mu)``."""
    return jnp.exp(log_sigma_c + w * (log_sigma_c - log_sigma_u)), mu_c + w * (mu_c - mu_u)


def _combiner(model, opts: SampleOptions, guided: bool, steps: int):
    """``combine(a, b, positions) -> (sigma, mu)`` for :func:`tarflow_sampling.invert_block`."""
    scale = model.scale

    def combine(a, b, positions):
        if not guided:
            return scale_sigma(a, scale), b
        half = a.shape[0] // 2
        w = opts.guidance
        if opts.annealed:
            w = w * ((positions + 1).astype(jnp.float32) / steps)[None, :, None]
        if opts.rule == "gaussian":
            return gaussian_guidance(scale_sigma(a[:half], scale), b[:half],
                                     scale_sigma(a[half:], scale), b[half:], w)
        return linear_guidance(scale_log_sigma(a[:half], scale), b[:half],
                               scale_log_sigma(a[half:], scale), b[half:], w)

    return combine


def reverse_block(
    model, params, t: int, x: jax.Array, prefix: jax.Array | None,
    opts: SampleOptions = SampleOptions(), guided: bool = False,
) -> jax.Array:
    """Inverts block ``t``: ``x: [B, N, D]`` (noise side, natural token order) -> data side.

    ``prefix``: the block's prefix ``[B, T, E]`` (``[2B, T, E]`` = ``[cond; null]`` when
    ``guided``) or ``None``. Sequential or Jacobi per ``opts``, with a fixed-size KV cache of
    ``T + N`` positions.
    """
    flip = model.block_flip(t)
    b, n, _ = x.shape
    bb = 2 * b if guided else b
    t_len = model.block_prefix_len(t)
    cache = init_cache(model.layers_per_block[t], bb, t_len + n, model.width // model.head_dim,
                       model.head_dim, model.dtype)
    if t_len:
        if prefix is None or prefix.shape[0] != bb:
            raise ValueError(f"block {t} needs a prefix of {bb} rows")
        cache = ts.apply_block(model, params, t, "prefill")(prefix, cache)
    step = ts.apply_block(model, ts.hoist_layer_params(model, params), t, "step")
    sos = None
    if model.shift == "sos":
        sos = ts.apply_block(model, params, t, "sos_tokens")(b)
    steps = n if model.shift == "sos" else n - 1
    xp = ts.invert_block(step, _combiner(model, opts, guided, steps),
                         ts.permute_tokens(x.astype(jnp.float32), flip), cache, sos, guided,
                         opts.jacobi_chunk, opts.jacobi_max_iters, opts.jacobi_tol)
    return ts.permute_tokens(xp, flip)


def _deep_prefix(model, params, batch: int, cond, null_cond, opts: SampleOptions):
    """``(prefix for the deep block, guided?)``."""
    prefix = model.apply({"params": params}, cond, method="cond_prefix")
    if prefix is not None and prefix.shape[0] != batch:
        raise ValueError(f"condition for {prefix.shape[0]} rows, noise for {batch}")
    if prefix is None or opts.guidance == 0:  # unconditional: guidance would be a no-op
        return prefix, False
    if null_cond is None:
        if not model.num_classes:
            raise ValueError("guidance with a feature prefix needs null_cond (e.g. the text "
                             "encoder's features of the empty caption)")
        null_cond = model.null_cond(batch)
    null = model.apply({"params": params}, null_cond, method="cond_prefix")
    null = jnp.broadcast_to(null, prefix.shape)
    return jnp.concatenate([prefix, null], axis=0), True


def deep_block_sigma_ratio(model, params, x: jax.Array, cond: jax.Array,
                           null_cond: jax.Array | None = None) -> jax.Array:
    """``sigma_c / sigma_u`` of the deep block's conditional and unconditional heads at every
    token of inputs ``x: [B, *input_shape]`` (data side), by teacher forcing: the shallow
    blocks' forward pass, then the deep block's under ``cond`` and under ``null_cond`` (default:
    the null label; features ``[B or 1, T, E]`` for a prefix model). Returns ``[B, N, D]`` in
    token order. For ``x`` drawn by :func:`sample_tokens` with guidance (before any
    denoising) these are the ratios the sampler combined, because each token's heads depend
    only on the tokens before it and the guided token is fed to both halves. With the output
    shift, token 0 (not transformed) has ratio 1."""
    prefixes, guided = _deep_prefix(model, params, x.shape[0], cond, null_cond,
                                    SampleOptions(guidance=1.0))
    if not guided:
        raise ValueError("the sigma ratio needs a conditional model")

    def ratio(m, x, prefixes):
        h = m.to_tokens(x)
        for blk in m.blocks[:-1]:
            h, _ = blk.forward_elementwise(h, None, None)
        prefix, null = jnp.split(prefixes, 2)
        _, ld_c = m.blocks[-1].forward_elementwise(h, None, prefix)
        _, ld_u = m.blocks[-1].forward_elementwise(h, None, null)
        return jnp.exp(ld_u - ld_c)  # the log-det per element is -log sigma

    return model.apply({"params": params}, x, prefixes, method=ratio)


def sample_tokens(
    model, params, z: jax.Array, cond: jax.Array | None = None,
    null_cond: jax.Array | None = None, opts: SampleOptions = SampleOptions(),
) -> jax.Array:
    """Maps noise tokens ``z: [B, N, D]`` to data tokens ``[B, N, D]``.

    ``cond``: labels ``[B]`` or features ``[B, T, E]`` (see
    :meth:`~jaxflows.models.starflow.StarFlowModel.cond_prefix`); ``null_cond``: the
    unconditional condition for guidance (default: the null label; required for features,
    ``[B or 1, T, E]``).
    """
    opts.check()
    x = jnp.asarray(z, jnp.float32)
    last = model.num_blocks - 1
    prefix, guided = _deep_prefix(model, params, x.shape[0], cond, null_cond, opts)
    x = reverse_block(model, params, last, x, prefix, opts, guided)
    plain = dataclasses.replace(opts, guidance=0.0)
    for t in reversed(range(last)):
        x = reverse_block(model, params, t, x, None, plain)
    return x


def sample(
    model, params, z: jax.Array, cond: jax.Array | None = None,
    null_cond: jax.Array | None = None, opts: SampleOptions = SampleOptions(),
) -> jax.Array:
    """:func:`sample_tokens` on noise shaped like the model's inputs, ``z: [B, *input_shape]``
    -> ``[B, *input_shape]``."""
    tokens = model.apply({"params": params}, z, method="to_tokens")
    x = sample_tokens(model, params, tokens, cond, null_cond, opts)
    return model.apply({"params": params}, x, method="from_tokens")


def sample_tokens_recompute(
    model, params, z: jax.Array, cond: jax.Array | None = None,
    null_cond: jax.Array | None = None, opts: SampleOptions = SampleOptions(),
) -> jax.Array:
    """Reference sampler without a KV cache (tests only): every token step recomputes the
    block's full causal pass. Same arguments as :func:`sample_tokens` (Jacobi ignored)."""
    opts.check()
    x = jnp.asarray(z, jnp.float32)
    b, n, _ = x.shape
    last = model.num_blocks - 1
    prefix, guided = _deep_prefix(model, params, b, cond, null_cond, opts)
    steps = n if model.shift == "sos" else n - 1
    first = 0 if model.shift == "sos" else 1
    for t in reversed(range(model.num_blocks)):
        deep = t == last
        g = guided and deep
        full = ts.apply_block(model, params, t, "affine_params")
        combine = _combiner(model, opts, g, steps)
        flip = model.block_flip(t)

        def body(xp, i, full=full, combine=combine, g=g, deep=deep):
            inp = jnp.concatenate([xp, xp]) if g else xp
            a, bsh = full(inp, None, 1.0, prefix if deep else None)
            a, bsh = (lax.dynamic_slice_in_dim(v, i, 1, axis=1) for v in (a, bsh))
            sigma, mu = combine(a, bsh, (i - first)[None])
            zi = lax.dynamic_slice_in_dim(xp, i, 1, axis=1)
            return lax.dynamic_update_slice_in_dim(xp, zi * sigma + mu, i, axis=1), None

        xp, _ = lax.scan(body, ts.permute_tokens(x, flip), jnp.arange(first, n))
        x = ts.permute_tokens(xp, flip)
    return x
