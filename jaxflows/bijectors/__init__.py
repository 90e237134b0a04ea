"""Bijectors: ``distrax.Bijector`` subclasses on vectors ``[..., D]`` with explicit array params.

distrax's direction throughout: ``forward`` maps the base (noise/latent) side to the data side.
Parameters may carry leading batch dimensions that broadcast against the input's batch dims.
``EXAMPLES`` maps each registered name to a ``factory(key, dim)`` with random valid parameters;
the generic invariant tests run over it.
"""

from jaxflows.bijectors._base import VectorBijector, fill_strictly_lower
from jaxflows.bijectors.actnorm import ActNorm, actnorm_init
from jaxflows.bijectors.autoregressive import IAF, MAF, AffineAutoregressive, MADELike
from jaxflows.bijectors.coupling import AffineCoupling
from jaxflows.bijectors.examples import EXAMPLES
from jaxflows.bijectors.householder import Householder
from jaxflows.bijectors.linear_iaf import CCLinearIAF, LinearIAF
from jaxflows.bijectors.made_masks import MADEConditioner
from jaxflows.bijectors.nlsq import NLSq
from jaxflows.bijectors.permutation import Permutation, RandomPermutation, ReversePermutation
from jaxflows.bijectors.planar import Planar, constrain_u
from jaxflows.bijectors.radial import Radial
from jaxflows.bijectors.sylvester import SylvesterOrthogonal, SylvesterTriangular

__all__ = [
    "EXAMPLES",
    "IAF",
    "MAF",
    "ActNorm",
    "AffineAutoregressive",
    "AffineCoupling",
    "CCLinearIAF",
    "Householder",
    "LinearIAF",
    "MADEConditioner",
    "MADELike",
    "NLSq",
    "Permutation",
    "Planar",
    "Radial",
    "RandomPermutation",
    "ReversePermutation",
    "SylvesterOrthogonal",
    "SylvesterTriangular",
    "VectorBijector",
    "actnorm_init",
    "constrain_u",
    "fill_strictly_lower",
]
