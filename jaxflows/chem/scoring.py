"""Generic pieces of Guacamol-style objectives, written on RDKit.

This module reproduces the semantics of the scoring machinery of the ``guacamol`` package
(Brown et al., "GuacaMol: Benchmarking Models for de Novo Molecular Design", J. Chem. Inf.
Model. 2019; package version 0.5.5), which no longer imports on current scipy:

* **score modifiers** map a raw value to ``[0, 1]``: :class:`Gaussian`, :class:`MinGaussian`
  (1 below ``mu``), :class:`MaxGaussian` (1 above ``mu``), :class:`Clipped` (a clipped line),
  :class:`ThresholdedLinear` (``min(x, t) / t``). Each does the same floating-point operations
  in the same order as the package, so scores agree to the last bit where RDKit agrees.
* **terms** score one parsed molecule: :class:`Similarity` (Tanimoto of a fingerprint against a
  target molecule), :class:`Descriptor` (an RDKit descriptor), :class:`Smarts` (presence or
  absence of a substructure), :class:`Formula` (closeness to a molecular formula), and the
  combinations :class:`GeometricMean` and :class:`ArithmeticMean`.
* an :class:`Objective` scores SMILES strings: ``-1.0`` (:data:`CORRUPT_SCORE`) for a SMILES
  that RDKit cannot parse or sanitise, or for the empty string.

Failure semantics follow the package: any exception while scoring one term makes that term
``-1.0``; a geometric mean (and a formula score) with a ``-1.0`` part is ``-1.0``; an arithmetic
mean averages whatever its parts returned.

Deviation, on purpose: guacamol scores ``''`` as the zero-atom molecule RDKit makes of it
(e.g. 0.0 for Median molecules 1, 0.5 for Deco Hop); here it is ``-1.0``, as the BO wrappers
that use these objectives (LOL-BO, NF-BO: an empty string is not a molecule) treat it.

Fingerprints (:data:`FINGERPRINTS`): ``ECFP4``/``ECFP6`` (unhashed Morgan count vectors, radius
2/3), ``FCFP4``/``FCFP6`` (the same with feature invariants), ``AP`` (atom-pair counts, path
length 1..10), ``PHCO`` (Gobbi 2-D pharmacophore bits). The Morgan and atom-pair ones come from
``rdFingerprintGenerator`` sparse count fingerprints, whose elements are identical to those of
RDKit's older ``GetMorganFingerprint`` / ``GetAtomPairFingerprint`` functions that the package
calls (checked element by element on MOSES molecules).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: the score of a SMILES that cannot be scored (unparseable, unsanitisable, empty)
CORRUPT_SCORE = -1.0

#: supported fingerprint types for :class:`Similarity`
FINGERPRINTS = ("ECFP4", "ECFP6", "FCFP4", "FCFP6", "AP", "PHCO")


# --------------------------------------------------------------------------- modifiers


@dataclasses.dataclass(frozen=True)
class Gaussian:
    """``exp(-0.5 ((x - mu) / sigma)^2)``: 1 at ``mu``. ``x: float -> float``."""

    mu: float
    sigma: float

    def __call__(self, x: float) -> float:
        return np.exp(-0.5 * np.power((x - self.mu) / self.sigma, 2.0))


@dataclasses.dataclass(frozen=True)
class MinGaussian:
    """Half Gaussian that rewards small values: 1 for ``x <= mu``, Gaussian decay above."""

    mu: float
    sigma: float

    def __call__(self, x: float) -> float:
        return Gaussian(self.mu, self.sigma)(np.maximum(x, self.mu))


@dataclasses.dataclass(frozen=True)
class MaxGaussian:
    """Half Gaussian that rewards large values: 1 for ``x >= mu``, Gaussian decay below."""

    mu: float
    sigma: float

    def __call__(self, x: float) -> float:
        return Gaussian(self.mu, self.sigma)(np.minimum(x, self.mu))


@dataclasses.dataclass(frozen=True)
class Clipped:
    """The line through ``(lower_x, low_score)`` and ``(upper_x, high_score)``, clipped to
    ``[low_score, high_score]``; with the defaults ``min(x / upper_x, 1)`` for ``x >= 0``."""

    upper_x: float
    lower_x: float = 0.0
    high_score: float = 1.0
    low_score: float = 0.0

    def __post_init__(self):
        if not self.low_score < self.high_score:
            raise ValueError(f"Clipped needs low_score < high_score, got {self}")
        if self.upper_x == self.lower_x:
            raise ValueError(f"Clipped needs upper_x != lower_x, got {self}")
        slope = (self.high_score - self.low_score) / (self.upper_x - self.lower_x)
        object.__setattr__(self, "_slope", slope)
        object.__setattr__(self, "_intercept", self.high_score - slope * self.upper_x)

    def __call__(self, x: float) -> float:
        return np.clip(self._slope * x + self._intercept, self.low_score, self.high_score)


@dataclasses.dataclass(frozen=True)
class ThresholdedLinear:
    """``min(x, threshold) / threshold``."""

    threshold: float

    def __call__(self, x: float) -> float:
        return np.minimum(x, self.threshold) / self.threshold


Modifier = Callable[[Any], Any]


def _identity(x):
    # the package's default modifier multiplies by 1.0 (exact)
    return 1.0 * x


# --------------------------------------------------------------------------- molecules


def parse(smiles: str):
    """``rdkit.Chem.Mol`` of a SMILES, sanitised twice as the package does, or None when RDKit
    cannot parse or sanitise it, or it is empty (no atoms) or not a string."""
    from rdkit import Chem

    if not isinstance(smiles, str) or not smiles:
        return None
    try:
        mol = Chem.MolFromSmiles(smiles)
        if mol is None:
            return None
        Chem.SanitizeMol(mol)
    except Exception:  # noqa: BLE001 - a SMILES RDKit rejects in any way is corrupt
        return None
    return mol if mol.GetNumAtoms() > 0 else None


_GENERATORS: dict[str, Any] = {}


def _generator(fp_type: str):
    gen = _GENERATORS.get(fp_type)
    if gen is None:
        from rdkit.Chem import rdFingerprintGenerator as rfg

        if fp_type in ("ECFP4", "ECFP6"):
            gen = rfg.GetMorganGenerator(radius=2 if fp_type == "ECFP4" else 3)
        elif fp_type in ("FCFP4", "FCFP6"):
            gen = rfg.GetMorganGenerator(radius=2 if fp_type == "FCFP4" else 3,
                                         atomInvariantsGenerator=rfg.GetMorganFeatureAtomInvGen())
        elif fp_type == "AP":
            gen = rfg.GetAtomPairGenerator(minDistance=1, maxDistance=10)
        else:
            raise ValueError(f"unknown fingerprint type {fp_type!r}; valid: {FINGERPRINTS}")
        _GENERATORS[fp_type] = gen
    return gen


def fingerprint(mol, fp_type: str):
    """The fingerprint ``fp_type`` (one of :data:`FINGERPRINTS`) of an RDKit molecule: a sparse
    count vector (ECFP/FCFP/AP) or a sparse bit vector (PHCO), for ``TanimotoSimilarity``."""
    if fp_type == "PHCO":
        from rdkit.Chem.Pharm2D import Generate, Gobbi_Pharm2D

        return Generate.Gen2DFingerprint(mol, Gobbi_Pharm2D.factory)
    return _generator(fp_type).GetSparseCountFingerprint(mol)


def num_atoms_with_h(mol) -> int:
    """Number of atoms including every hydrogen (implicit ones made explicit)."""
    from rdkit import Chem

    return Chem.AddHs(mol).GetNumAtoms()


def count_element(mol, element: str) -> int:
    """Number of atoms of ``element`` (hydrogens included, implicit ones made explicit)."""
    from rdkit import Chem

    if element == "H":
        mol = Chem.AddHs(mol)
    return sum(1 for a in mol.GetAtoms() if a.GetSymbol() == element)


def _descriptor_functions() -> dict[str, Callable[[Any], float]]:
    from rdkit.Chem import Descriptors, rdMolDescriptors

    return {
        "logP": Descriptors.MolLogP,             # Crippen logP
        "tpsa": Descriptors.TPSA,                # topological polar surface area (N, O only)
        "bertz": Descriptors.BertzCT,
        "mol_weight": Descriptors.MolWt,
        "qed": Descriptors.qed,
        "num_H_donors": Descriptors.NumHDonors,
        "num_H_acceptors": Descriptors.NumHAcceptors,
        "num_rotatable_bonds": Descriptors.NumRotatableBonds,
        "num_rings": rdMolDescriptors.CalcNumRings,
        "num_aromatic_rings": rdMolDescriptors.CalcNumAromaticRings,
        "num_atoms": num_atoms_with_h,
    }


_DESCRIPTORS: dict[str, Callable[[Any], float]] = {}


def descriptor(name: str) -> Callable[[Any], float]:
    """The RDKit descriptor function called ``name`` (``logP``, ``tpsa``, ``bertz``,
    ``mol_weight``, ``num_rings``, ``num_aromatic_rings``, ``num_atoms``, ...): ``mol -> float``."""
    if not _DESCRIPTORS:
        _DESCRIPTORS.update(_descriptor_functions())
    try:
        return _DESCRIPTORS[name]
    except KeyError:
        raise ValueError(f"unknown descriptor {name!r}; valid: {sorted(_DESCRIPTORS)}") from None


def parse_formula(formula: str) -> list[tuple[str, int]]:
    """``'C16H15F6N5O'`` -> ``[('C', 16), ('H', 15), ('F', 6), ('N', 5), ('O', 1)]``."""
    return [(el, int(n) if n else 1) for el, n in re.findall(r"([A-Z][a-z]*)(\d*)", formula)]


# --------------------------------------------------------------------------- terms


def _safe(term, mol) -> float:
    """A term's score of a parsed molecule, :data:`CORRUPT_SCORE` if it raises."""
    try:
        return term(mol)
    except Exception as e:  # noqa: BLE001 - the package turns any failure into the corrupt score
        log.warning("scoring term %r failed (%s: %s); scoring it %s", term, type(e).__name__, e,
                    CORRUPT_SCORE)
        return CORRUPT_SCORE


class Similarity:
    """Tanimoto similarity of ``fp_type`` fingerprints to ``target`` (a SMILES), then
    ``modifier`` (identity if None). ``__call__(mol) -> float``."""

    def __init__(self, target: str, fp_type: str, modifier: Modifier | None = None):
        if fp_type not in FINGERPRINTS:
            raise ValueError(f"unknown fingerprint type {fp_type!r}; valid: {FINGERPRINTS}")
        mol = parse(target)
        if mol is None:
            raise ValueError(f"similarity target {target!r} is not a valid molecule")
        self.target, self.fp_type, self.modifier = target, fp_type, modifier or _identity
        self._ref = fingerprint(mol, fp_type)

    def __call__(self, mol) -> float:
        from rdkit.DataStructs import TanimotoSimilarity

        return self.modifier(TanimotoSimilarity(fingerprint(mol, self.fp_type), self._ref))

    def __repr__(self) -> str:
        return f"Similarity({self.target!r}, {self.fp_type}, {self.modifier!r})"


class Descriptor:
    """An RDKit descriptor (by name, see :func:`descriptor`, or an element count when
    ``element`` is given), then ``modifier``. ``__call__(mol) -> float``."""

    def __init__(self, name: str, modifier: Modifier | None = None, *, element: str | None = None):
        self.name, self.element, self.modifier = name, element, modifier or _identity
        self._fn = (lambda m: count_element(m, element)) if element else descriptor(name)

    def __call__(self, mol) -> float:
        return self.modifier(self._fn(mol))

    def __repr__(self) -> str:
        what = f"count {self.element}" if self.element else self.name
        return f"Descriptor({what}, {self.modifier!r})"


def atom_count(element: str, modifier: Modifier | None = None) -> Descriptor:
    """A :class:`Descriptor` counting atoms of ``element``."""
    return Descriptor(f"count_{element}", modifier, element=element)


class Smarts:
    """1.0 if the molecule contains the SMARTS ``pattern``, else 0.0; reversed when
    ``inverse`` (an unwanted substructure). ``__call__(mol) -> float``."""

    def __init__(self, pattern: str, inverse: bool = False):
        from rdkit import Chem

        self.pattern, self.inverse = pattern, inverse
        self._query = Chem.MolFromSmarts(pattern)
        if self._query is None:
            raise ValueError(f"invalid SMARTS {pattern!r}")

    def __call__(self, mol) -> float:
        return 1.0 if mol.HasSubstructMatch(self._query) != self.inverse else 0.0

    def __repr__(self) -> str:
        return f"Smarts({self.pattern!r}, inverse={self.inverse})"


def _geometric_mean(values: Sequence[float]) -> float:
    a = np.array(values)
    return a.prod() ** (1.0 / len(a))


class GeometricMean:
    """Geometric mean of its terms; :data:`CORRUPT_SCORE` if any term is corrupt."""

    def __init__(self, terms: Sequence):
        self.terms = list(terms)

    def __call__(self, mol) -> float:
        parts = [_safe(t, mol) for t in self.terms]
        if CORRUPT_SCORE in parts:
            return CORRUPT_SCORE
        return _identity(_geometric_mean(parts))

    def __repr__(self) -> str:
        return f"GeometricMean({self.terms!r})"


class ArithmeticMean:
    """Weighted arithmetic mean of its terms (equal weights by default); a corrupt term counts
    as ``-1.0`` in the mean, as in the package."""

    def __init__(self, terms: Sequence, weights: Sequence[float] | None = None):
        self.terms = list(terms)
        self.weights = [1.0] * len(self.terms) if weights is None else [float(w) for w in weights]
        if len(self.weights) != len(self.terms):
            raise ValueError(f"{len(self.terms)} terms but {len(self.weights)} weights")

    def __call__(self, mol) -> float:
        total = np.float64(0.0)
        for w, t in zip(self.weights, self.terms):
            total = total + np.float64(w) * np.float64(_safe(t, mol))
        return _identity(total / np.sum(np.asarray(self.weights, np.float64)))

    def __repr__(self) -> str:
        return f"ArithmeticMean({self.terms!r})"


class Formula:
    """Closeness to a molecular formula: per element a :class:`Gaussian` (``mu`` = the
    formula's count, ``sigma = 1``) of the atom count, and a Gaussian (``sigma = 2``) of the
    total atom count (H included), combined by the geometric (or arithmetic) mean."""

    def __init__(self, formula: str, mean: str = "geometric"):
        if mean not in ("geometric", "arithmetic"):
            raise ValueError(f"mean must be 'geometric' or 'arithmetic', got {mean!r}")
        counts = parse_formula(formula)
        self.formula, self.mean = formula, mean
        self.terms = [atom_count(el, Gaussian(n, 1.0)) for el, n in counts]
        self.terms.append(Descriptor("num_atoms", Gaussian(sum(n for _, n in counts), 2.0)))

    def __call__(self, mol) -> float:
        parts = [_safe(t, mol) for t in self.terms]
        if CORRUPT_SCORE in parts:
            return CORRUPT_SCORE
        if self.mean == "arithmetic":
            return _identity(sum(parts) / len(parts))
        return _identity(_geometric_mean(parts))

    def __repr__(self) -> str:
        return f"Formula({self.formula!r}, {self.mean})"


class Objective:
    """A named scoring function of SMILES strings built from one term.

    ``score(smiles: str) -> float`` (:data:`CORRUPT_SCORE` for an invalid or empty SMILES);
    ``score_list(smiles: Sequence[str]) -> np.ndarray`` float64 ``[N]``, in one process.
    """

    def __init__(self, name: str, term):
        self.name, self.term = name, term

    def _score(self, smiles: str) -> float:
        mol = parse(smiles)
        if mol is None:
            return CORRUPT_SCORE
        return float(_safe(self.term, mol))

    def score(self, smiles: str) -> float:
        """Score of one SMILES string (RDKit's log silenced)."""
        from jaxflows.chem.selfies_vocab import quiet_rdkit

        with quiet_rdkit():
            return self._score(smiles)

    def score_list(self, smiles: Sequence[str]) -> np.ndarray:
        """Scores of ``[N]`` SMILES strings: float64 ``[N]``, in this process."""
        from jaxflows.chem.selfies_vocab import quiet_rdkit

        with quiet_rdkit():
            return np.fromiter((self._score(s) for s in smiles), np.float64, count=len(smiles))

    def __repr__(self) -> str:
        return f"Objective({self.name!r}, {self.term!r})"
