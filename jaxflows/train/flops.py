"""FLOP counts from a jaxpr, with loops counted as many times as they run.

Why this exists: XLA's HLO cost analysis (``jax.jit(f).lower(...).cost_analysis()``) counts the
body of a ``while`` loop once, not times its trip count, and ``lax.scan`` / ``nn.scan`` /
``lax.map`` lower to such loops -- so a model whose layers are stacked with ``nn.scan`` (TarFlow's
:class:`jaxflows.nn.transformer.Transformer`) is undercounted by about its number of layers.
Neither JAX nor XLA exposes a trip-count-aware count: ``jax.experimental.roofline`` also visits a
scan body once (and skips ``while`` and ``cond``), so this walks the jaxpr by hand.

What is counted (the conventions of XLA's cost analysis, roughly):

* ``dot_general``: ``2 * prod(batch) * prod(lhs free) * prod(rhs free) * prod(contracting)``;
  ``conv_general_dilated``: ``2 * prod(out shape) * (in_features / feature_group_count) *
  prod(kernel spatial)`` (padding positions included). Both also go to ``matmul_flops``.
* elementwise arithmetic, comparisons and selects: one flop per output element; reductions: one
  per reduced input element (``in - out`` elements); windowed reductions: ``out * window``;
  ``sort``: ``n * ceil(log2(sort dim))``; scatter-add and friends: one per update element.
* transcendental ops (exp, log, tanh, logistic, erf, sin, cos, sqrt, rsqrt, pow, ...): one per
  output element, in ``transcendentals`` and not in ``flops`` (as XLA reports them).
* data movement and casts (reshape, broadcast, transpose, slice, gather, concatenate,
  convert_element_type, ...): zero.
* control flow: ``scan`` counts its body ``length`` times; ``while`` counts its body times the
  trip count when that is static (the ``fori_loop`` pattern ``i < upper``, ``i += 1`` with
  constant bounds), else once, and is then counted in ``uncounted_loops``; ``cond`` takes the
  most expensive branch; ``shard_map`` multiplies its per-shard body by the number of shards;
  every other primitive with sub-jaxprs in its params (``pjit``, ``closed_call``,
  ``remat``/``checkpoint``, ``custom_jvp_call``, ``custom_vjp_call``, ...) counts each of them
  once -- so rematerialised forward passes are counted: these are executed FLOPs.

Primitives in none of these classes count zero and are listed in ``unknown_primitives``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
from jax.extend.core import ClosedJaxpr, Jaxpr, Literal, jaxprs_in_params

TRANSCENDENTAL = frozenset({
    "exp", "exp2", "log", "log1p", "expm1", "tanh", "logistic", "erf", "erfc", "erf_inv",
    "sin", "cos", "tan", "asin", "acos", "atan", "atan2", "sinh", "cosh", "asinh", "acosh",
    "atanh", "sqrt", "rsqrt", "cbrt", "pow", "lgamma", "digamma", "igamma", "igammac",
    "igamma_grad_a", "polygamma", "zeta", "bessel_i0e", "bessel_i1e", "random_gamma_grad",
    "regularized_incomplete_beta", "cumlogsumexp",
})

ELEMENTWISE = frozenset({
    "add", "add_any", "sub", "mul", "div", "rem", "neg", "abs", "sign", "max", "min", "floor",
    "ceil", "round", "nextafter", "is_finite", "square", "integer_pow", "select_n", "clamp",
    "eq", "ne", "lt", "le", "gt", "ge", "and", "or", "not", "xor", "shift_left",
    "shift_right_logical", "shift_right_arithmetic", "population_count", "clz", "real", "imag",
    "conj", "complex", "cumsum", "cumprod", "cummax", "cummin", "threefry2x32",
    "random_bits", "copysign",
})

REDUCTION = frozenset({
    "reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or",
    "reduce_xor", "argmax", "argmin", "reduce", "top_k",
})

WINDOW = frozenset({
    "reduce_window_sum", "reduce_window_max", "reduce_window_min", "reduce_window",
    "select_and_gather_add", "select_and_scatter_add", "select_and_scatter",
})

SCATTER_ARITH = frozenset({"scatter_add", "scatter_sub", "scatter_mul", "scatter_min",
                           "scatter_max"})

ZERO = frozenset({
    "broadcast_in_dim", "reshape", "squeeze", "expand_dims", "transpose", "slice",
    "dynamic_slice", "dynamic_update_slice", "concatenate", "pad", "gather", "scatter", "rev",
    "iota", "copy", "copy_p", "convert_element_type", "bitcast_convert_type",
    "reduce_precision", "stop_gradient", "optimization_barrier", "sharding_constraint",
    "mesh_cast", "reshard", "pvary", "device_put", "split", "random_seed", "random_wrap",
    "random_unwrap", "random_fold_in", "random_split", "random_clone", "debug_callback",
    "pure_callback", "io_callback", "axis_index", "psum", "pmax", "pmin", "all_gather",
    "all_to_all", "ppermute", "psum_scatter", "reduce_scatter", "psum_invariant",
    "create_token", "after_all", "platform_index", "empty", "zeros_like", "pbroadcast",
    "with_sharding_constraint", "unreduced_psum", "preduced", "vary", "core_call",
})

# scalar ops folded to find constant loop bounds
_FOLD: dict[str, Callable[..., Any]] = {
    "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
    "max": max, "min": min, "neg": lambda a: -a, "convert_element_type": lambda a: a,
}


def _size(v) -> int:
    return math.prod(getattr(v.aval, "shape", ()))


class _Counter:
    def __init__(self):
        self.flops = 0.0
        self.matmul_flops = 0.0
        self.transcendentals = 0.0
        self.uncounted_loops = 0
        self.unknown: set[str] = set()

    def add(self, other: _Counter, times: float = 1.0) -> None:
        self.flops += times * other.flops
        self.matmul_flops += times * other.matmul_flops
        self.transcendentals += times * other.transcendentals
        self.uncounted_loops += other.uncounted_loops
        self.unknown |= other.unknown


def _value(atom, known: dict):
    """The constant value of a scalar jaxpr atom, or None."""
    if isinstance(atom, Literal):
        try:
            return atom.val.item() if hasattr(atom.val, "item") else atom.val
        except (TypeError, ValueError):
            return None
    return known.get(atom)


def _dot_flops(eqn) -> float:
    lhs, rhs = (v.aval.shape for v in eqn.invars)
    (_, rc), (_, rb) = eqn.params["dimension_numbers"]
    rhs_free = math.prod(d for i, d in enumerate(rhs) if i not in set(rc) | set(rb))
    return 2.0 * math.prod(lhs) * rhs_free  # lhs = batch * lhs free * contracting


def _conv_flops(eqn) -> float:
    rhs = eqn.invars[1].aval.shape
    rhs_spec = eqn.params["dimension_numbers"].rhs_spec  # (out feat, in feat, *spatial)
    kernel = rhs[rhs_spec[1]] * math.prod(rhs[d] for d in rhs_spec[2:])
    return 2.0 * _size(eqn.outvars[0]) * kernel


def _fori_trip_count(eqn, known: dict) -> int | None:
    """Trip count of a ``while`` of the ``fori_loop`` form -- cond ``lt(i, upper)``, body
    ``i + 1`` -- whose initial ``i`` and ``upper`` are constants; None otherwise."""
    p = eqn.params
    cj, bj = p["cond_jaxpr"].jaxpr, p["body_jaxpr"].jaxpr
    nc, nb = p["cond_nconsts"], p["body_nconsts"]
    if len(cj.eqns) != 1 or cj.eqns[0].primitive.name != "lt" or \
            cj.outvars[0] is not cj.eqns[0].outvars[0]:
        return None
    a, b = cj.eqns[0].invars
    carry, init = cj.invars[nc:], eqn.invars[nc + nb:]
    if not any(a is v for v in carry):
        return None
    i = next(k for k, v in enumerate(carry) if v is a)
    lower = _value(init[i], known)
    if isinstance(b, Literal):
        upper = _value(b, known)
    elif any(b is v for v in carry):
        j = next(k for k, v in enumerate(carry) if v is b)
        upper = _value(init[j], known) if bj.outvars[j] is bj.invars[nb + j] else None
    else:  # a cond const
        upper = _value(eqn.invars[next(k for k, v in enumerate(cj.invars[:nc]) if v is b)],
                       known)
    step = next((e for e in bj.eqns if e.outvars[0] is bj.outvars[i]), None)
    if (lower is None or upper is None or step is None or step.primitive.name != "add"
            or not any(v is bj.invars[nb + i] for v in step.invars)
            or not any(_value(v, {}) == 1 for v in step.invars)):
        return None
    return max(0, math.ceil(upper - lower))


def _walk(jaxpr: Jaxpr, known: dict | None = None) -> _Counter:
    known = dict(known or {})
    c = _Counter()
    for eqn in jaxpr.eqns:
        name, p = eqn.primitive.name, eqn.params
        out = sum(_size(v) for v in eqn.outvars)
        if name in _FOLD and len(eqn.outvars) == 1 and _size(eqn.outvars[0]) == 1:
            vals = [_value(v, known) for v in eqn.invars]
            if all(v is not None for v in vals):
                known[eqn.outvars[0]] = _FOLD[name](*vals)
        if name == "dot_general":
            f = _dot_flops(eqn)
            c.flops += f
            c.matmul_flops += f
        elif name == "conv_general_dilated":
            f = _conv_flops(eqn)
            c.flops += f
            c.matmul_flops += f
        elif name == "scan":
            c.add(_walk(p["jaxpr"].jaxpr), p["length"])
        elif name == "while":
            body = _walk(p["body_jaxpr"].jaxpr)
            cond = _walk(p["cond_jaxpr"].jaxpr)
            trips = _fori_trip_count(eqn, known)
            if trips is None:
                c.uncounted_loops += 1
                trips = 1
            c.add(body, trips)
            c.add(cond, trips + 1)
        elif name == "cond":
            branches = [_walk(b.jaxpr) for b in p["branches"]]
            best = max(branches, key=lambda b: b.flops + b.transcendentals)
            c.add(best)
            for b in branches:  # loops and unknowns of the other branches are reported too
                if b is not best:
                    c.uncounted_loops += b.uncounted_loops
                    c.unknown |= b.unknown
        elif name == "shard_map":
            axes = p.get("newly_manual_axes", p.get("manual_axes", ()))
            shards = math.prod(p["mesh"].shape[a] for a in axes)
            c.add(_walk(p["jaxpr"]), shards)
        elif name == "custom_linear_solve":
            c.add(_walk(p["jaxprs"].solve.jaxpr))
        elif name in TRANSCENDENTAL:
            c.transcendentals += out
        elif name in ELEMENTWISE:
            c.flops += out
        elif name in REDUCTION:
            c.flops += max(0, _size(eqn.invars[0]) - _size(eqn.outvars[0]))
        elif name in WINDOW:
            c.flops += out * math.prod(p.get("window_dimensions", (1,)))
        elif name in SCATTER_ARITH:
            c.flops += _size(eqn.invars[2])
        elif name == "sort":
            dim = eqn.invars[0].aval.shape[p["dimension"]] if eqn.invars[0].aval.shape else 1
            c.flops += _size(eqn.invars[0]) * math.ceil(math.log2(max(dim, 2)))
        elif name in ZERO:
            pass
        else:
            subs = list(jaxprs_in_params(p))
            if not subs and out:
                c.unknown.add(name)
            for sub in subs:  # pjit, closed_call, remat, custom_jvp/vjp_call, ...
                inner = {}
                if len(sub.invars) == len(eqn.invars):  # constants flow in (loop bounds)
                    vals = ((w, _value(v, known)) for v, w in zip(eqn.invars, sub.invars))
                    inner = {w: x for w, x in vals if x is not None}
                c.add(_walk(sub, inner))
    return c


def jaxpr_flops(closed_jaxpr: ClosedJaxpr | Jaxpr) -> dict:
    """FLOPs of a (closed) jaxpr, loops counted times their trip counts (module docstring).

    Returns ``{'flops', 'matmul_flops', 'transcendentals'}`` (floats; ``flops`` includes
    ``matmul_flops`` and excludes ``transcendentals``), ``'uncounted_loops'`` (int: ``while``
    loops without a static trip count, their bodies counted once) and ``'unknown_primitives'``
    (sorted names of primitives counted as zero because they are not classified)."""
    jaxpr = closed_jaxpr.jaxpr if isinstance(closed_jaxpr, ClosedJaxpr) else closed_jaxpr
    if not isinstance(jaxpr, Jaxpr):
        raise TypeError(f"jaxpr_flops needs a Jaxpr or ClosedJaxpr, got {type(closed_jaxpr)}")
    c = _walk(jaxpr)
    return {"flops": c.flops, "matmul_flops": c.matmul_flops,
            "transcendentals": c.transcendentals, "uncounted_loops": c.uncounted_loops,
            "unknown_primitives": sorted(c.unknown)}


def step_flops(fn: Callable, *args, **kwargs) -> dict:
    """:func:`jaxpr_flops` of ``fn(*args, **kwargs)``, traced with ``jax.make_jaxpr`` (``args``
    may be arrays or ``jax.ShapeDtypeStruct`` s; nothing is computed or compiled)."""
    return jaxpr_flops(jax.make_jaxpr(fn)(*args, **kwargs))
