"""The twelve Guacamol goal-directed objectives used by LOL-BO, CoBO and NF-BO, on RDKit.

Each task id names a benchmark function of the ``guacamol`` package, version 0.5.5 (Brown et
al., "GuacaMol: Benchmarking Models for de Novo Molecular Design", J. Chem. Inf. Model. 2019,
module ``guacamol.standard_benchmarks``); the ids are those of LOL-BO (Maus et al., NeurIPS
2022) and NF-BO (Lee et al., ICLR 2025), whose code scores a SMILES with
``standard_benchmarks.<function>().objective.score(smiles)``:

======  ================================  ===================
id      guacamol function                 benchmark name
======  ================================  ===================
med1    ``median_camphor_menthol``        Median molecules 1
med2    ``median_tadalafil_sildenafil``   Median molecules 2
pdop    ``perindopril_rings``             Perindopril MPO
osmb    ``hard_osimertinib``              Osimertinib MPO
adip    ``amlodipine_rings``              Amlodipine MPO
siga    ``sitagliptin_replacement``       Sitagliptin MPO
zale    ``zaleplon_with_other_formula``   Zaleplon MPO
valt    ``valsartan_smarts``              Valsartan SMARTS
dhop    ``decoration_hop``                Deco Hop
shop    ``scaffold_hop``                  Scaffold Hop
rano    ``ranolazine_mpo``                Ranolazine MPO
fexo    ``hard_fexofenadine``             Fexofenadine MPO
======  ================================  ===================

NF-BO reports seven of them: adip, med2, osmb, pdop, rano, valt, zale.

:func:`score` returns guacamol's score for every SMILES (the same targets, fingerprints,
modifiers, means and RDKit descriptors; see :mod:`jaxflows.chem.scoring`), and ``-1.0`` for a
SMILES RDKit cannot parse and for the empty string. It spreads large batches over worker
processes; the result does not depend on the number of workers.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import multiprocessing
import sys
from collections.abc import Callable, Sequence

import numpy as np

from jaxflows.chem import scoring as sc
from jaxflows.errors import UserError

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- definitions
# Targets, fingerprints, thresholds and modifiers as defined in guacamol 0.5.5's
# standard_benchmarks.py; the SMILES strings are the package's own (a descriptor target such as
# sitagliptin's logP is computed from the exact SMILES the package uses).

CAMPHOR = "CC1(C)C2CCC1(C)C(=O)C2"
MENTHOL = "CC(C)C1CCC(C)CC1O"
TADALAFIL = "O=C1N(CC(N2C1CC3=C(C2C4=CC5=C(OCO5)C=C4)NC6=C3C=CC=C6)=O)C"
SILDENAFIL = "CCCC1=NN(C2=C1N=C(NC2=O)C3=C(C=CC(=C3)S(=O)(=O)N4CCN(CC4)C)OCC)C"
PERINDOPRIL = "O=C(OCC)C(NC(C(=O)N1C(C(=O)O)CC2CCCCC12)C)CCC"
OSIMERTINIB = "COc1cc(N(C)CCN(C)C)c(NC(=O)C=C)cc1Nc2nccc(n2)c3cn(C)c4ccccc34"
AMLODIPINE = r"Clc1ccccc1C2C(=C(/N/C(=C2/C(=O)OCC)COCCN)C)\C(=O)OC"
SITAGLIPTIN = "Fc1cc(c(F)cc1F)CC(N)CC(=O)N3Cc2nnc(n2CC3)C(F)(F)F"
SITAGLIPTIN_VALT = "NC(CC(=O)N1CCn2c(nnc2C(F)(F)F)C1)Cc1cc(F)c(F)cc1F"  # the valsartan task's copy
ZALEPLON = "O=C(C)N(CC)C1=CC=CC(C2=CC=NC3=C(C=NN23)C#N)=C1"
VALSARTAN_SMARTS = "CN(C=O)Cc1ccc(c2ccccc2)cc1"
HOP_START = "CCCOc1cc2ncnc(Nc3ccc4ncsc4c3)c2cc1S(=O)(=O)C(C)(C)C"
HOP_SCAFFOLD = "[#7]-c1n[c;h1]nc2[c;h1]c(-[#8])[c;h0][c;h1]c12"
RANOLAZINE = "COc1ccccc1OCC(O)CN2CCN(CC(=O)Nc3c(C)cccc3C)CC2"
FEXOFENADINE = "CC(C)(C(=O)O)c1ccc(cc1)C(O)CCCN2CCC(CC2)C(O)(c3ccccc3)c4ccccc4"


def _median1():
    return sc.GeometricMean([sc.Similarity(MENTHOL, "ECFP4"), sc.Similarity(CAMPHOR, "ECFP4")])


def _median2():
    return sc.GeometricMean([sc.Similarity(TADALAFIL, "ECFP6"), sc.Similarity(SILDENAFIL, "ECFP6")])


def _perindopril():
    return sc.GeometricMean([
        sc.Similarity(PERINDOPRIL, "ECFP4"),
        sc.Descriptor("num_aromatic_rings", sc.Gaussian(2, 0.5)),
    ])


def _osimertinib():
    return sc.GeometricMean([
        sc.Similarity(OSIMERTINIB, "FCFP4", sc.Clipped(upper_x=0.8)),
        sc.Similarity(OSIMERTINIB, "ECFP6", sc.MinGaussian(0.85, 0.1)),
        sc.Descriptor("tpsa", sc.MaxGaussian(100, 10)),
        sc.Descriptor("logP", sc.MinGaussian(1, 1)),
    ])


def _amlodipine():
    return sc.GeometricMean([
        sc.Similarity(AMLODIPINE, "ECFP4"),
        sc.Descriptor("num_rings", sc.Gaussian(3, 0.5)),
    ])


def _target_descriptor(smiles: str, name: str) -> float:
    from rdkit import Chem

    # the package computes these on Chem.MolFromSmiles (sanitised once)
    return sc.descriptor(name)(Chem.MolFromSmiles(smiles))


def _sitagliptin():
    return sc.GeometricMean([
        sc.Similarity(SITAGLIPTIN, "ECFP4", sc.Gaussian(0, 0.1)),
        sc.Descriptor("logP", sc.Gaussian(_target_descriptor(SITAGLIPTIN, "logP"), 0.2)),
        sc.Descriptor("tpsa", sc.Gaussian(_target_descriptor(SITAGLIPTIN, "tpsa"), 5)),
        sc.Formula("C16H15F6N5O"),
    ])


def _zaleplon():
    return sc.GeometricMean([sc.Similarity(ZALEPLON, "ECFP4"), sc.Formula("C19H17N3O2")])


def _valsartan():
    return sc.GeometricMean([
        sc.Smarts(VALSARTAN_SMARTS),
        sc.Descriptor("logP", sc.Gaussian(_target_descriptor(SITAGLIPTIN_VALT, "logP"), 0.2)),
        sc.Descriptor("tpsa", sc.Gaussian(_target_descriptor(SITAGLIPTIN_VALT, "tpsa"), 5)),
        sc.Descriptor("bertz", sc.Gaussian(_target_descriptor(SITAGLIPTIN_VALT, "bertz"), 30)),
    ])


def _deco_hop():
    return sc.ArithmeticMean([
        sc.Similarity(HOP_START, "PHCO", sc.Clipped(upper_x=0.85)),
        sc.Smarts("CS([#6])(=O)=O", inverse=True),
        sc.Smarts("[#7]-c1ccc2ncsc2c1", inverse=True),
        sc.Smarts(HOP_SCAFFOLD),
    ])


def _scaffold_hop():
    return sc.ArithmeticMean([
        sc.Similarity(HOP_START, "PHCO", sc.Clipped(upper_x=0.75)),
        sc.Smarts("[#6]-[#6]-[#6]-[#8]-[#6]~[#6]~[#6]~[#6]~[#6]-[#7]-c1ccc2ncsc2c1"),
        sc.Smarts(HOP_SCAFFOLD, inverse=True),
    ])


def _ranolazine():
    return sc.GeometricMean([
        sc.Similarity(RANOLAZINE, "AP", sc.Clipped(upper_x=0.7)),
        sc.Descriptor("logP", sc.MaxGaussian(7, 1)),
        sc.atom_count("F", sc.Gaussian(1, 1.0)),
        sc.Descriptor("tpsa", sc.MaxGaussian(95, 20)),
    ])


def _fexofenadine():
    return sc.GeometricMean([
        sc.Similarity(FEXOFENADINE, "AP", sc.Clipped(upper_x=0.8)),
        sc.Descriptor("tpsa", sc.MaxGaussian(90, 10)),
        sc.Descriptor("logP", sc.MinGaussian(4, 1)),
    ])


@dataclasses.dataclass(frozen=True)
class Task:
    """One objective: ``id`` (e.g. ``'med1'``), the guacamol ``function`` it reproduces, the
    benchmark ``name`` and its ``target`` molecule(s) (SMILES, or a SMARTS for valt)."""

    id: str
    function: str
    name: str
    targets: tuple[str, ...]
    build: Callable[[], object] = dataclasses.field(repr=False, compare=False)


_TASK_LIST = (
    Task("med1", "median_camphor_menthol", "Median molecules 1", (CAMPHOR, MENTHOL), _median1),
    Task("med2", "median_tadalafil_sildenafil", "Median molecules 2", (TADALAFIL, SILDENAFIL),
         _median2),
    Task("pdop", "perindopril_rings", "Perindopril MPO", (PERINDOPRIL,), _perindopril),
    Task("osmb", "hard_osimertinib", "Osimertinib MPO", (OSIMERTINIB,), _osimertinib),
    Task("adip", "amlodipine_rings", "Amlodipine MPO", (AMLODIPINE,), _amlodipine),
    Task("siga", "sitagliptin_replacement", "Sitagliptin MPO", (SITAGLIPTIN,), _sitagliptin),
    Task("zale", "zaleplon_with_other_formula", "Zaleplon MPO", (ZALEPLON,), _zaleplon),
    Task("valt", "valsartan_smarts", "Valsartan SMARTS", (VALSARTAN_SMARTS, SITAGLIPTIN_VALT),
         _valsartan),
    Task("dhop", "decoration_hop", "Deco Hop", (HOP_START,), _deco_hop),
    Task("shop", "scaffold_hop", "Scaffold Hop", (HOP_START,), _scaffold_hop),
    Task("rano", "ranolazine_mpo", "Ranolazine MPO", (RANOLAZINE,), _ranolazine),
    Task("fexo", "hard_fexofenadine", "Fexofenadine MPO", (FEXOFENADINE,), _fexofenadine),
)

#: task id -> :class:`Task`
TASKS: dict[str, Task] = {t.id: t for t in _TASK_LIST}

#: the seven tasks NF-BO reports
NFBO_TASKS = ("adip", "med2", "osmb", "pdop", "rano", "valt", "zale")

_OBJECTIVES: dict[str, sc.Objective] = {}


def check_task(task_id: str) -> Task:
    """The :class:`Task` of ``task_id``; a one-line :class:`~jaxflows.errors.UserError`
    listing the valid ids otherwise."""
    try:
        return TASKS[task_id]
    except (KeyError, TypeError):
        raise UserError(f"unknown Guacamol task {task_id!r}; valid: {', '.join(TASKS)}") from None


def objective(task_id: str) -> sc.Objective:
    """The (cached) :class:`~jaxflows.chem.scoring.Objective` of a task; ``.score(smiles)``
    scores one SMILES string."""
    task = check_task(task_id)
    obj = _OBJECTIVES.get(task_id)
    if obj is None:
        from jaxflows.chem.selfies_vocab import quiet_rdkit

        with quiet_rdkit():
            obj = _OBJECTIVES[task_id] = sc.Objective(task.name, task.build())
    return obj


# --------------------------------------------------------------------------- batch scoring


def _score_chunk(args: tuple[str, list[str]]) -> np.ndarray:
    """Worker: ``(task_id, smiles chunk) -> float64 scores``."""
    task_id, smiles = args
    return objective(task_id).score_list(smiles)


def _pool_context():
    # fork is cheapest and does not re-import the caller's script; with jax (threads) running
    # in this process, forking is unsafe: then forkserver (or spawn where it is unavailable)
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and "jax" not in sys.modules:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def default_num_workers() -> int:
    """Worker processes :func:`score` uses by default: the usable CPU count."""
    from jaxflows.chem.selfies_vocab import default_num_workers as usable_cpus

    return usable_cpus()


def score(
    task_id: str,
    smiles: Sequence[str],
    *,
    num_workers: int | None = None,
    min_parallel: int = 512,
    chunk_size: int | None = None,
) -> np.ndarray:
    """Guacamol scores of ``smiles`` (``[N]`` strings) for ``task_id``: float64 ``[N]``.

    Equal to ``guacamol.standard_benchmarks.<function>().objective.score(s)`` (guacamol 0.5.5)
    for each SMILES, except that the empty string scores ``-1.0``; ``-1.0`` also for a SMILES
    RDKit cannot parse or sanitise (and for a non-string). With ``num_workers`` (default: the
    usable CPUs) above 1 and at least ``min_parallel`` SMILES, chunks (of ``chunk_size``,
    default about four per worker, at most 2,000) are scored in worker processes; order and
    values do not depend on the worker count. A script that imports jax and scores in parallel
    needs the usual ``if __name__ == "__main__":`` guard (workers are then started by a fork
    server or spawned, not forked). Raises :class:`~jaxflows.errors.UserError` for an unknown
    ``task_id``.
    """
    check_task(task_id)
    smiles = list(smiles)
    n = len(smiles)
    workers = default_num_workers() if num_workers is None else int(num_workers)
    if workers > 1 and n >= max(min_parallel, 2):
        size = chunk_size or max(64, min(2000, math.ceil(n / (4 * workers))))
        chunks = [(task_id, smiles[i:i + size]) for i in range(0, n, size)]
        workers = min(workers, len(chunks))
        log.debug("scoring %d SMILES for %s in %d chunks on %d workers", n, task_id,
                  len(chunks), workers)
        with _pool_context().Pool(workers) as pool:
            parts = pool.map(_score_chunk, chunks, chunksize=1)
        return np.concatenate(parts).astype(np.float64, copy=False)
    return objective(task_id).score_list(smiles)
