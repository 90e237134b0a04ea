"""``EXAMPLES``: name -> ``factory(key, dim)`` returning a bijector with random valid params.

Factories are deterministic in ``key``. Bijectors from the same factory and ``dim`` have the
same tree structure, so their leaves can be stacked into one batched bijector.
"""

from __future__ import annotations

from collections.abc import Callable

import distrax
import jax
import jax.numpy as jnp
import numpy as np

from jaxflows.bijectors.actnorm import ActNorm
from jaxflows.bijectors.autoregressive import IAF, MAF
from jaxflows.bijectors.coupling import AffineCoupling
from jaxflows.bijectors.householder import Householder
from jaxflows.bijectors.linear_iaf import CCLinearIAF, LinearIAF
from jaxflows.bijectors.made_masks import MADEConditioner
from jaxflows.bijectors.nlsq import NLSq
from jaxflows.bijectors.permutation import RandomPermutation, ReversePermutation
from jaxflows.bijectors.planar import Planar
from jaxflows.bijectors.radial import Radial
from jaxflows.bijectors.sylvester import SylvesterOrthogonal, SylvesterTriangular


def _normals(key, *shapes, scale=1.0):
    keys = jax.random.split(key, len(shapes))
    return [scale * jax.random.normal(k, s) for k, s in zip(keys, shapes)]


def householder(key, dim):
    """Three reflections with Gaussian vectors."""
    return Householder(*_normals(key, (3, dim)))


def linear_iaf(key, dim):
    """Gaussian strictly-lower entries (scale 0.5)."""
    return LinearIAF(*_normals(key, (dim, dim), scale=0.5))


def cc_linear_iaf(key, dim):
    """K = 3 Gaussian matrices (scale 0.5) and Gaussian logits."""
    k1, k2 = jax.random.split(key)
    return CCLinearIAF(*_normals(k1, (3, dim, dim), scale=0.5),
                       logits=jax.random.normal(k2, (3,)))


def planar(key, dim):
    """Gaussian raw ``u``, ``w`` and ``b``."""
    u, w, b = _normals(key, (dim,), (dim,), ())
    return Planar(u, w, b)


def radial(key, dim):
    """Gaussian centre and raw ``alpha``, ``beta``."""
    z0, a, b = _normals(key, (dim,), (), ())
    return Radial(z0, a, b)


def _sylvester_params(key, dim):
    r1, r2 = _normals(key, (dim, dim), (dim, dim), scale=0.3)
    d1, d2, b = _normals(jax.random.fold_in(key, 1), (dim,), (dim,), (dim,))
    return r1, r2, d1, d2, b


def sylvester_orthogonal(key, dim):
    """Two Householder vectors for ``Q``; ``R``, ``R~`` off-diagonals with scale 0.3."""
    k1, k2 = jax.random.split(key)
    return SylvesterOrthogonal(*_normals(k1, (2, dim)), *_sylvester_params(k2, dim))


def sylvester_triangular(key, dim):
    """``Q`` = reversal permutation (``permute=True``)."""
    return SylvesterTriangular(*_sylvester_params(key, dim), permute=True)


def _made(key, dim, order):
    # The plain-array MADE (same function and parameter layout as jaxflows.nn.made.MADE).
    made = MADEConditioner(features=dim, hidden=(16, 16), order=order)
    k1, k2 = jax.random.split(key)
    params = made.init(k1, jnp.zeros((dim,)))
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(k2, len(leaves))
    # The last layer is zero-initialised (identity); perturb every leaf to get a generic map.
    leaves = [p + 0.3 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)]
    return made, jax.tree.unflatten(tree, leaves)


def iaf(key, dim):
    """IAF on a MADE (16, 16) with the reversed order, sigmoid gate."""
    return IAF(*_made(key, dim, tuple(range(dim - 1, -1, -1))))


def maf(key, dim):
    """MAF on a MADE (16, 16) with a rolled order, tanh-bounded log-scale."""
    return MAF(*_made(key, dim, tuple(int(i) for i in np.roll(np.arange(dim), 1))))


def affine_coupling(key, dim):
    """Alternating mask, hidden width 8, Gaussian weights."""
    h = 8
    w1, b1, w2, b2 = _normals(key, (dim, h), (h,), (h, 2 * dim), (2 * dim,), scale=0.5)
    return AffineCoupling(np.arange(dim) % 2 == 0, w1, b1, w2, b2)


def actnorm(key, dim):
    """Gaussian ``loc``, ``log_scale`` with scale 0.3."""
    loc, ls = _normals(key, (dim,), (dim,))
    return ActNorm(loc, 0.3 * ls)


def reverse_permutation(key, dim):
    """The reversal (no parameters; ``key`` unused)."""
    del key
    return ReversePermutation(dim)


def random_permutation(key, dim):
    """A uniformly random permutation."""
    return RandomPermutation(key, dim)


def nlsq(key, dim):
    """Gaussian raw parameters (``log_b``, ``log_d`` with scale 0.3)."""
    a, lb, c, ld, g = _normals(key, (dim,), (dim,), (dim,), (dim,), (dim,))
    return NLSq(a, 0.3 * lb, c, 0.3 * ld, g)


EXAMPLES: dict[str, Callable[[jax.Array, int], distrax.Bijector]] = {
    "householder": householder,
    "linear_iaf": linear_iaf,
    "cc_linear_iaf": cc_linear_iaf,
    "planar": planar,
    "radial": radial,
    "sylvester_orthogonal": sylvester_orthogonal,
    "sylvester_triangular": sylvester_triangular,
    "iaf": iaf,
    "maf": maf,
    "affine_coupling": affine_coupling,
    "actnorm": actnorm,
    "reverse_permutation": reverse_permutation,
    "random_permutation": random_permutation,
    "nlsq": nlsq,
}
