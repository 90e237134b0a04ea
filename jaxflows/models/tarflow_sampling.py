"""TarFlow sampling: the sequential inverse with a fixed-size KV cache, guidance, Jacobi, denoising.

All functions take the Flax module ``model`` (a :class:`jaxflows.models.tarflow.TarFlowModel`)
and its ``params`` and work on token sequences ``[B, N, D]`` (``N`` patches of ``D = p*p*C``
numbers, see :mod:`jaxflows.nn.patches`). They are pure and jit-able (``model`` and
:class:`SampleOptions` are static).

**Inverse of one block** (noise side -> data side), in the block's own token order: token 0 is
unchanged; for ``i = 0 .. N-2`` token ``i`` is fed through the block (its keys/values appended to
a preallocated cache, per layer ``[B, H, N, Dh]``, at position ``i``), giving the log-scale ``a``
and shift ``b`` of token ``i+1``: ``x[i+1] = z[i+1] * exp(a) + b``. This runs inside one
``lax.scan``. The loop itself, :func:`invert_block`, is shared with STARFlow
(:mod:`jaxflows.models.starflow_sampling`), whose blocks start from an SOS token instead.

**Guidance** (``guidance = w != 0``): the batch is doubled into one cache of size ``2B``: the
first half is the conditional pass (the class label, attention temperature 1), the second the
unconditional pass (the *mean* class embedding, i.e. label -1, and attention temperature
``attn_temp``). Both halves read the same, guided, tokens. With annealing (``annealed=True``,
what ml-tarflow's FID evaluation uses) the weight at input position ``i`` is
``g_i = w * (i + 1) / (N - 1)``, in every block; without it ``g_i = w``. Then
``a <- a + g (a_c - a_u)`` and ``b <- b + g (b_c - b_u)``. For an unconditional model only the
temperature differs between the passes (unconditional guidance).

**Jacobi** (``jacobi_chunk = L > 0``): the input positions are cut into chunks of ``L``; the
tokens of a chunk are updated in parallel (fixed-point iterations, the noise as first guess,
rewriting the chunk's cache entries each time) until ``mean((new-old)^2)/mean(new^2) <= tol``
or ``jacobi_max_iters`` iterations. ``L`` iterations always reach the sequential result (up to
rounding): the map is triangular.

**Denoising** (Tweedie, one step): ``x + sigma^2 * grad_x log p(x)`` with ``jax.grad`` of the
model log-density summed over the batch (:func:`denoise`, :func:`tweedie_step`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from jaxflows.nn.transformer import init_cache, unstack_layer_params


def permute_tokens(x: jax.Array, flip: bool) -> jax.Array:
    """A block's token order: identity, or reversed (``flip``) along axis 1 of ``[B, N, ...]``."""
    return jnp.flip(x, axis=1) if flip else x


@dataclasses.dataclass(frozen=True)
class SampleOptions:
    """Static sampler settings (hashable, so they can key a jit cache).

    Attributes:
      guidance: guidance weight ``w`` (0 = plain conditional/unconditional sampling).
      attn_temp: attention temperature of the unconditional pass (1 = none).
      annealed: ramp the guidance weight linearly over the token index, as ml-tarflow's FID eval.
      jacobi_chunk: 0 = sequential; ``L > 0`` = block-parallel Jacobi with chunks of ``L`` tokens
        (``L`` must divide ``N``).
      jacobi_max_iters: iteration cap per chunk (``L`` iterations are always exact).
      jacobi_tol: relative change below which a chunk stops iterating.
    """

    guidance: float = 0.0
    attn_temp: float = 1.0
    annealed: bool = True
    jacobi_chunk: int = 0
    jacobi_max_iters: int = 32
    jacobi_tol: float = 1e-6


def apply_block(model, params, t: int, name: str) -> Callable:
    """``fn(*args)`` calling method ``name`` of ``model.blocks[t]`` with ``params``."""

    def fn(*args):
        return model.apply({"params": params}, *args,
                           method=lambda m, *a: getattr(m.blocks[t], name)(*a))

    return fn


def hoist_layer_params(model, params):
    """``params`` with the layer weights pre-sliced for the per-token loop
    (:func:`jaxflows.nn.transformer.unstack_layer_params`) when ``model`` unrolls its layers."""
    return unstack_layer_params(params) if getattr(model, "unroll_layers", False) else params


def _double(x):
    return jnp.concatenate([x, x], axis=0)


def _pass_inputs(y: jax.Array | None, batch: int, opts: SampleOptions):
    """Labels and attention temperatures of the (possibly doubled) batch."""
    if opts.guidance == 0:
        return y, jnp.ones((batch,), jnp.float32)
    y2 = None if y is None else jnp.concatenate([y, -jnp.ones_like(y)])
    temps = jnp.concatenate(
        [jnp.ones((batch,), jnp.float32), jnp.full((batch,), opts.attn_temp, jnp.float32)])
    return y2, temps


def _guide(a, b, positions, num_tokens: int, opts: SampleOptions):
    """Combines the doubled-batch outputs ``a, b: [2B, L, D]`` into guided ``[B, L, D]``."""
    if opts.guidance == 0:
        return a, b
    half = a.shape[0] // 2
    if opts.annealed:
        g = opts.guidance * (positions + 1).astype(jnp.float32) / (num_tokens - 1)
        g = g[None, :, None]
    else:
        g = opts.guidance
    ac, au = a[:half], a[half:]
    bc, bu = b[:half], b[half:]
    return ac + g * (ac - au), bc + g * (bc - bu)


def invert_block(
    step: Callable,
    combine: Callable,
    zp: jax.Array,
    cache: tuple[jax.Array, jax.Array],
    sos: jax.Array | None = None,
    doubled: bool = False,
    jacobi_chunk: int = 0,
    jacobi_max_iters: int = 32,
    jacobi_tol: float = 1e-6,
) -> jax.Array:
    """Inverts one autoregressive flow block in its own token order (shared by TarFlow and
    STARFlow): ``zp: [B, N, D]`` (noise side) -> ``xp: [B, N, D]`` (data side).

    The input rows live in a buffer of ``N + 1`` rows: ``[zp, 0]`` for TarFlow's output shift
    (``sos=None``: input row ``i`` is token ``i``, token 0 stays as it is, ``N - 1`` steps) or
    ``[sos, zp]`` for STARFlow's SOS shift (``sos: [B, 1, D]``; input row ``i`` is the SOS or
    token ``i - 1``, ``N`` steps). In both, the input at row ``i`` gives the parameters of buffer
    row ``i + 1``: ``x = z * sigma + mu``.

    Args:
      step: ``(inp [BB, L, D], start, cache) -> (a, b, cache)``, the cached pass over input rows
        ``start .. start+L-1`` (``BB = 2B`` when ``doubled``).
      combine: ``(a, b [BB, L, D], positions [L]) -> (sigma, mu) [B, L, D]`` (guidance, if any).
      zp: noise ``[B, N, D]`` in the block's order.
      cache: the KV cache (already holding a prefix, if any).
      sos: the SOS row ``[B, 1, D]`` or ``None``.
      doubled: feed every input row twice (``[cond; uncond]`` halves of one batch).
      jacobi_chunk: 0 = sequential ``lax.scan`` over tokens; ``L > 0`` = block-parallel Jacobi
        over chunks of ``L`` input rows (``L`` must divide ``N``), the noise as the first guess,
        iterating until ``mean((new-old)^2) / mean(new^2) <= jacobi_tol`` or
        ``jacobi_max_iters`` iterations.
    """
    b, n, d = zp.shape
    dup = _double if doubled else (lambda v: v)
    if sos is None:
        buf = jnp.concatenate([zp, jnp.zeros((b, 1, d), zp.dtype)], axis=1)
        steps = n - 1
    else:
        buf = jnp.concatenate([sos.astype(zp.dtype), zp], axis=1)
        steps = n
    zbuf = buf  # the noise of buffer row i + 1 sits at row i + 1

    def result(xb):
        return xb[:, 1:] if sos is not None else xb[:, :n]

    if jacobi_chunk <= 0:
        def body(carry, i):
            xc, cache = carry
            tok = lax.dynamic_slice_in_dim(xc, i, 1, axis=1)
            a, bsh, cache = step(dup(tok), i, cache)
            sigma, mu = combine(a, bsh, i[None])
            znext = lax.dynamic_slice_in_dim(zbuf, i + 1, 1, axis=1)
            xc = lax.dynamic_update_slice_in_dim(xc, znext * sigma + mu, i + 1, axis=1)
            return (xc, cache), None

        (buf, _), _ = lax.scan(body, (buf, cache), jnp.arange(steps))
        return result(buf)

    chunk = jacobi_chunk
    if n % chunk:
        raise ValueError(f"jacobi_chunk {chunk} does not divide the number of tokens {n}")

    def chunk_body(carry, start):
        xc, cache = carry
        zc = lax.dynamic_slice_in_dim(zbuf, start + 1, chunk, axis=1)
        positions = start + jnp.arange(chunk)

        def one_iter(state):
            xs, cache_s, it, _ = state
            inp = lax.dynamic_slice_in_dim(xs, start, chunk, axis=1)
            a, bsh, cache_s = step(dup(inp), start, cache_s)
            sigma, mu = combine(a, bsh, positions)
            new = zc * sigma + mu
            old = lax.dynamic_slice_in_dim(xs, start + 1, chunk, axis=1)
            err = jnp.mean(jnp.square(new - old)) / (jnp.mean(jnp.square(new)) + 1e-12)
            xs = lax.dynamic_update_slice_in_dim(xs, new, start + 1, axis=1)
            return xs, cache_s, it + 1, err

        def cond(state):
            _, _, it, err = state
            return (it < jacobi_max_iters) & (err > jacobi_tol)

        state = (xc, cache, jnp.zeros((), jnp.int32), jnp.full((), jnp.inf, jnp.float32))
        xc, cache, iters, _ = lax.while_loop(cond, one_iter, state)
        return (xc, cache), iters

    (buf, _), _ = lax.scan(chunk_body, (buf, cache), jnp.arange(0, n, chunk))
    return result(buf)


def reverse_block(
    model, params, t: int, x: jax.Array, y: jax.Array | None, opts: SampleOptions
) -> jax.Array:
    """Inverts TarFlow block ``t``: ``x: [B, N, D]`` (noise side, natural token order) -> data
    side, with :func:`invert_block` (sequential or Jacobi, fixed-size KV cache)."""
    flip = model.block_flip(t)
    b, n, _ = x.shape
    y2, temps = _pass_inputs(y, b, opts)
    bb = b if opts.guidance == 0 else 2 * b
    cache = init_cache(model.layers_per_block, bb, n, model.width // model.head_dim,
                       model.head_dim, model.dtype)
    step_fn = apply_block(model, hoist_layer_params(model, params), t, "step")

    def step(inp, start, cache):
        return step_fn(inp, start, cache, y2, temps)

    def combine(a, bsh, positions):
        a, bsh = _guide(a, bsh, positions, n, opts)
        return jnp.exp(a), bsh

    xp = invert_block(step, combine, permute_tokens(x, flip), cache, None, opts.guidance != 0,
                      opts.jacobi_chunk, opts.jacobi_max_iters, opts.jacobi_tol)
    return permute_tokens(xp, flip)


def sample_tokens(
    model, params, z: jax.Array, y: jax.Array | None = None,
    opts: SampleOptions = SampleOptions(),
) -> jax.Array:
    """Maps standard-normal noise ``z: [B, N, D]`` to data tokens ``[B, N, D]`` (in [-1, 1]
    space, unclipped). ``y: [B]`` int labels (-1 = null class) or ``None``. Scales ``z`` by the
    prior std (VP mode), then inverts the blocks from the last to the first.
    """
    x = z.astype(jnp.float32) * jnp.sqrt(model.apply({"params": params}, method="prior_var"))
    for t in reversed(range(model.num_blocks)):
        x = reverse_block(model, params, t, x, y, opts)
    return x


def sample_tokens_recompute(
    model, params, z: jax.Array, y: jax.Array | None = None,
    opts: SampleOptions = SampleOptions(),
) -> jax.Array:
    """Reference sampler without a KV cache: every token step recomputes the full causal pass.

    ``O(N)`` full passes per block -- slow, for tests only. Same arguments as
    :func:`sample_tokens` (Jacobi options are ignored).
    """
    x = z.astype(jnp.float32) * jnp.sqrt(model.apply({"params": params}, method="prior_var"))
    b, n, _ = x.shape
    y2, temps = _pass_inputs(y, b, opts)
    dup = (lambda v: v) if opts.guidance == 0 else _double
    for t in reversed(range(model.num_blocks)):
        flip = model.block_flip(t)
        full = apply_block(model, params, t, "affine_params")
        xp = permute_tokens(x, flip)

        def body(xc, i, full=full):
            a, bsh = full(dup(xc), y2, temps)  # shifted: row i+1 holds token i+1's params
            a = lax.dynamic_slice_in_dim(a, i + 1, 1, axis=1)
            bsh = lax.dynamic_slice_in_dim(bsh, i + 1, 1, axis=1)
            a, bsh = _guide(a, bsh, i[None], n, opts)
            znext = lax.dynamic_slice_in_dim(xc, i + 1, 1, axis=1)
            return lax.dynamic_update_slice_in_dim(xc, znext * jnp.exp(a) + bsh, i + 1, 1), None

        xp, _ = lax.scan(body, xp, jnp.arange(n - 1))
        x = permute_tokens(xp, flip)
    return x


def tweedie_step(
    log_prob_fn: Callable[[jax.Array], jax.Array], x: jax.Array, sigma: float
) -> jax.Array:
    """One-step score denoising ``x + sigma^2 * grad_x sum(log_prob_fn(x))``.

    ``log_prob_fn: [B, ...] -> [B]`` log-density of the *noisy* data; examples are independent,
    so the gradient of the batch sum is the per-example score.
    """
    score = jax.grad(lambda v: jnp.sum(log_prob_fn(v)))(x)
    return x + (sigma**2) * score


def model_log_prob(model, params, x_img: jax.Array, y: jax.Array | None = None) -> jax.Array:
    """Continuous log-density ``log p(x)`` of images ``x_img: [B, H, W, C]`` in [-1, 1] space,
    summed over the ``D = H*W*C`` dimensions -> ``[B]``."""
    z, logdet = model.apply({"params": params}, x_img, y)
    dim = math.prod(z.shape[1:])
    log_pz = -0.5 * jnp.sum(jnp.square(z) + math.log(2 * math.pi), axis=(1, 2))
    return log_pz + dim * logdet


def denoise(
    model, params, x_img: jax.Array, y: jax.Array | None, sigma: float
) -> jax.Array:
    """Tweedie denoising of flow samples ``x_img: [B, H, W, C]`` ([-1, 1] space) with the
    model's own score at the training noise level ``sigma``; returns ``[B, H, W, C]``."""
    return tweedie_step(lambda v: model_log_prob(model, params, v, y), x_img, sigma)
