"""The initial data of a BO run: molecules drawn from ``moses_selfies``, scored by our objective.

NF-BO starts from the first N rows of ``guacamol_train_data_first_20k.csv`` (the LOL-BO file,
Guacamol training molecules with precomputed scores). That file is not available here, so the
initial molecules are drawn from the ``moses_selfies`` split ``config.init.split`` (default
``train``) by ``numpy.random.default_rng(config.init.seed).choice(N, num, replace=False)``,
sorted by index (the same draw as ``experiments/seqflow_value_discrepancy.py``), and scored by
:mod:`jaxflows.chem.guacamol`. The draw does not depend on the BO seed: every seed and method of
a task starts from the same molecules, as in the paper. ``config.init.smiles`` replaces the draw
with an explicit list (the smoke row, tests).

Valsartan SMARTS in the 100-point setting: the paper adds two molecules with nonzero score to
the initial 100 (its Fig. 8 caption), for every method. With ``config.init.extra_nonzero = k``
we search ``config.init.extra_pool`` further molecules, drawn by ``default_rng([init.seed,
1]).choice(N, extra_pool, replace=False)`` (in that order, leaving out the initial draw), and add
the first ``k`` whose score is > 0. If the pool holds fewer, only those are added (possibly none);
the run records how many (``initial.extra_added`` in ``summary.json``). Which molecules the paper
added is not published.

Molecules that the SeqFlow vocabulary or length cannot hold, and repeats of one canonical
SMILES, are dropped (counted in the returned info).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import ml_collections
import numpy as np

log = logging.getLogger(__name__)

_EXTRA_CHUNK = 5000


def moses_data_dir(config: ml_collections.ConfigDict) -> str | None:
    """Where ``moses_selfies`` is prepared: ``config.data_dir``, else the data dir the SeqFlow
    workdir was trained with, else the default (None)."""
    if config.data_dir:
        return config.data_dir
    if config.seqflow_workdir:
        from jaxflows.train.loop import load_saved_config

        return load_saved_config(config.seqflow_workdir).data.get("data_dir") or None
    return None


def _read_smiles(src, idx: np.ndarray) -> list[str]:
    recs = src.__getitems__([int(i) for i in idx])
    return [r["smiles"].decode() if isinstance(r["smiles"], bytes) else str(r["smiles"])
            for r in recs]


def draw_smiles(data_dir: str | None, split: str, num: int, seed: int) -> list[str]:
    """``num`` SMILES of ``moses_selfies[split]`` by ``default_rng(seed).choice(N, num,
    replace=False)``, in index order."""
    from jaxflows.data.registry import load_source

    src = load_source("moses_selfies", split, data_dir)
    idx = np.sort(np.random.default_rng(seed).choice(len(src), num, replace=False))
    return _read_smiles(src, idx)


def extra_nonzero(config: ml_collections.ConfigDict, data_dir: str | None,
                  exclude: Sequence[str]) -> list[str]:
    """Up to ``config.init.extra_nonzero`` molecules with score > 0 (module docstring)."""
    k = int(config.init.extra_nonzero)
    if k <= 0:
        return []
    return list(_extra_nonzero(config.task, data_dir, config.init.split, int(config.init.seed),
                               int(config.init.extra_pool), k, tuple(exclude)))


@functools.lru_cache(maxsize=16)
def _extra_nonzero(task: str, data_dir: str | None, split: str, seed: int, pool: int, k: int,
                   exclude: tuple[str, ...]) -> tuple[str, ...]:
    from jaxflows.chem import guacamol
    from jaxflows.data.registry import load_source

    src = load_source("moses_selfies", split, data_dir)
    pool = min(pool, len(src))
    idx = np.random.default_rng([seed, 1]).choice(len(src), pool, replace=False)
    skip = set(exclude)
    found: list[str] = []
    for start in range(0, pool, _EXTRA_CHUNK):        # in pool order; stop once k are found
        smiles = [s for s in _read_smiles(src, idx[start:start + _EXTRA_CHUNK]) if s not in skip]
        scores = guacamol.score(task, smiles)
        found += [s for s, y in zip(smiles, scores, strict=True) if y > 0]
        if len(found) >= k:
            break
    log.info("initial data: %d of %d extra molecules with score > 0 found in %d drawn",
             min(len(found), k), k, pool)
    return tuple(found[:k])


def initial_smiles(config: ml_collections.ConfigDict,
                   data_dir: str | None) -> tuple[list[str], dict]:
    """``(smiles, info)``: the initial molecules (before tokenising) and how they were made."""
    if config.init.smiles:
        smiles = [str(s) for s in config.init.smiles]
        info = {"source": "config.init.smiles", "num_drawn": len(smiles)}
    else:
        smiles = draw_smiles(data_dir, config.init.split, int(config.init.num),
                             int(config.init.seed))
        info = {"source": f"moses_selfies[{config.init.split}]",
                "draw": f"default_rng({config.init.seed}).choice(N, {config.init.num}, "
                        "replace=False), sorted",
                "num_drawn": len(smiles)}
    extra = extra_nonzero(config, data_dir, smiles) if config.init.extra_nonzero else []
    info["extra_requested"] = int(config.init.extra_nonzero)
    info["extra_added"] = len(extra)
    return smiles + extra, info
