"""The BO loop's state, its random streams, and atomic checkpoints.

State (:class:`LoopState`): the evaluated molecules (canonical SMILES, scores, SELFIES token
ids, the iteration that proposed each), the GP training set ``D_tr`` (indices and latents), the
SeqFlow parameters and their Adam state, the GP parameters, the trust region, the oracle (cache,
history, budget) and the loop counters. Nothing else carries over between iterations.

Randomness: there is no random state to save. Every draw of iteration ``i`` comes from
:func:`jax_key` / :func:`np_rng` of ``(seed, i, purpose)``, so an iteration's draws do not
depend on what ran before it in the process; with the state restored, a resumed run repeats the
uninterrupted one exactly (on CPU, bitwise).

Checkpoint (:func:`save` / :func:`restore`), one directory ``WORKDIR/checkpoint``:

* ``arrays/``: an Orbax ``StandardCheckpointer`` tree of the arrays (token ids, ``D_tr``
  latents and indices, SeqFlow parameters, Adam state, GP parameters; the parameter trees are
  stored as their flat leaf lists and rebuilt on the structure of a template);
* ``state.json``: everything else (scores as exact JSON floats, SMILES, the oracle's
  ``state_dict``, trust region, counters, per-iteration records).

A save writes ``checkpoint.tmp`` completely (Orbax finished, JSON fsynced), then renames the old
``checkpoint`` to ``checkpoint.old``, the new one into place, and deletes the old one; a run
killed at any moment leaves either a complete ``checkpoint`` or a complete ``checkpoint.old``,
which :func:`restore` falls back to.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from typing import Any

import jax
import numpy as np

from jaxflows.bo.trust_region import TrustRegionState
from jaxflows.chem.oracle import Oracle
from jaxflows.errors import UserError

log = logging.getLogger(__name__)

FORMAT = "jaxflows.bo.loop"
VERSION = 1

#: purposes of the random streams (the third component of every draw's seed)
PURPOSES = {"gp": 1, "anchors": 2, "tacs": 3, "candidates": 4, "thompson": 5, "finetune": 6,
            "prior": 7, "gp_restart": 8}


def jax_key(seed: int, iteration: int, purpose: str) -> jax.Array:
    """The JAX key of ``(seed, iteration, purpose)``."""
    key = jax.random.fold_in(jax.random.key(int(seed)), int(iteration))
    return jax.random.fold_in(key, PURPOSES[purpose])


def np_rng(seed: int, iteration: int, purpose: str) -> np.random.Generator:
    """The numpy Generator of ``(seed, iteration, purpose)``."""
    return np.random.default_rng([int(seed), int(iteration), PURPOSES[purpose]])


@dataclasses.dataclass
class LoopState:
    """Everything a BO run carries from one iteration to the next (module docstring).

    ``tokens: int32 [capacity, L]`` and ``y: float64 [capacity]`` hold the ``n = len(smiles)``
    evaluated molecules first (initial data, then oracle calls in order); ``origin[i]`` is the
    iteration that proposed molecule ``i`` (-1: initial). ``tr_idx: int32 [K]`` (-1 padded) and
    ``tr_z: float32 [K, D]`` are ``D_tr``: the top-k and most recent molecules with the latents
    the GP sees. ``iteration`` is the next iteration to run.
    """

    iteration: int
    tokens: np.ndarray
    y: np.ndarray
    smiles: list[str]
    origin: list[int]
    n_init: int
    tr_idx: np.ndarray
    tr_z: np.ndarray
    flow_params: Any
    opt_state: Any
    gp_params: Any
    trust: TrustRegionState
    oracle: Oracle
    pending_train: int
    finetunes: int = 0
    records: list[dict] = dataclasses.field(default_factory=list)

    @property
    def n(self) -> int:
        """Number of evaluated molecules (initial + oracle calls)."""
        return len(self.smiles)

    @property
    def n_tr(self) -> int:
        """Size of ``D_tr``."""
        return int((self.tr_idx >= 0).sum())


# ------------------------------------------------------------------------------- checkpoints
def _flat(tree) -> dict[str, np.ndarray]:
    return {f"{i:05d}": leaf for i, leaf in enumerate(jax.tree.leaves(tree))}


def _abstract(tree) -> dict:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)
                        if not isinstance(x, jax.ShapeDtypeStruct) else x, tree)


def _rebuild(template, flat: dict) -> Any:
    leaves, treedef = jax.tree.flatten(template)
    if len(flat) != len(leaves):
        raise UserError(f"checkpoint has {len(flat)} leaves where {len(leaves)} are expected",
                        hint="the model or config changed; use a new --workdir")
    return jax.tree.unflatten(treedef, [flat[f"{i:05d}"] for i in range(len(leaves))])


def _gp_meta(gp_params) -> dict | None:
    if gp_params is None:
        return None
    m = None if gp_params.inducing is None else int(gp_params.inducing.shape[0])
    return {"kind": gp_params.kind, "num_inducing": m}


def save(workdir: str, state: LoopState, extra: dict | None = None) -> str:
    """Writes ``WORKDIR/checkpoint`` atomically (module docstring); returns its path."""
    import orbax.checkpoint as ocp

    final = os.path.abspath(os.path.join(workdir, "checkpoint"))
    tmp, old = final + ".tmp", final + ".old"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    arrays = {"tokens": state.tokens, "tr_idx": state.tr_idx, "tr_z": state.tr_z,
              "flow": _flat(state.flow_params), "adam": _flat(state.opt_state)}
    if state.gp_params is not None:
        arrays["gp"] = _flat(state.gp_params)
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(os.path.join(tmp, "arrays"), jax.device_get(arrays))
    ckpt.wait_until_finished()
    ckpt.close()
    meta = {
        "format": FORMAT, "version": VERSION, "iteration": state.iteration,
        "capacity": int(state.tokens.shape[0]), "smiles": state.smiles,
        "y": [float(v) for v in state.y[:state.n]],
        "origin": state.origin, "n_init": state.n_init,
        "trust": dataclasses.asdict(state.trust), "pending_train": state.pending_train,
        "finetunes": state.finetunes, "oracle": state.oracle.state_dict(),
        "gp": _gp_meta(state.gp_params), "records": state.records, **(extra or {}),
    }
    path = os.path.join(tmp, "state.json")
    with open(path, "w") as f:
        json.dump(meta, f)
        f.flush()
        os.fsync(f.fileno())
    if os.path.exists(final):
        if os.path.exists(old):
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(tmp, final)
    if os.path.exists(old):
        shutil.rmtree(old)
    return final


def checkpoint_dir(workdir: str) -> str | None:
    """The complete checkpoint of ``workdir`` (``checkpoint``, else ``checkpoint.old``), or
    None."""
    for name in ("checkpoint", "checkpoint.old"):
        path = os.path.abspath(os.path.join(workdir, name))
        if os.path.exists(os.path.join(path, "state.json")):
            return path
    return None


def read_meta(workdir: str) -> dict | None:
    """The ``state.json`` of the workdir's checkpoint, or None."""
    path = checkpoint_dir(workdir)
    if path is None:
        return None
    with open(os.path.join(path, "state.json")) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise UserError(f"{path} is not a jaxflows BO checkpoint of version {VERSION}")
    return meta


def restore(workdir: str, *, length: int, tr_shape, flow_template, opt_template,
            gp_template_fn, budget: int) -> tuple[LoopState, dict] | None:
    """The saved :class:`LoopState` of ``workdir`` (None without a checkpoint) and its JSON.

    Templates give the parameter structures: ``flow_template`` (SeqFlow params),
    ``opt_template`` (Adam state), ``gp_template_fn(meta['gp'])`` (GP params or None).
    ``budget``: the run's budget now (a resume may extend it; the caller grows the arrays).
    """
    import orbax.checkpoint as ocp

    meta = read_meta(workdir)
    if meta is None:
        return None
    path = checkpoint_dir(workdir)
    gp_template = gp_template_fn(meta["gp"]) if meta["gp"] is not None else None
    tokens_shape = (int(meta["capacity"]), int(length))
    target = {"tokens": jax.ShapeDtypeStruct(tokens_shape, np.int32),
              "tr_idx": jax.ShapeDtypeStruct(tr_shape[:1], np.int32),
              "tr_z": jax.ShapeDtypeStruct(tr_shape, np.float32),
              "flow": _abstract(_flat(flow_template)), "adam": _abstract(_flat(opt_template))}
    if gp_template is not None:
        target["gp"] = _abstract(_flat(gp_template))
    ckpt = ocp.StandardCheckpointer()
    try:
        arrays = ckpt.restore(os.path.join(path, "arrays"), target)
    except (ValueError, KeyError) as e:
        raise UserError(f"cannot restore {path}: {str(e).splitlines()[0]}",
                        hint="the model or config changed; use a new --workdir") from None
    finally:
        ckpt.close()
    oracle_state = dict(meta["oracle"])
    oracle_state["budget"] = max(int(budget), len(oracle_state["history"]))
    y = np.zeros(tokens_shape[0], np.float64)
    y[:len(meta["y"])] = meta["y"]
    state = LoopState(
        iteration=int(meta["iteration"]), tokens=np.asarray(arrays["tokens"]), y=y,
        smiles=list(meta["smiles"]), origin=[int(o) for o in meta["origin"]],
        n_init=int(meta["n_init"]), tr_idx=np.asarray(arrays["tr_idx"]),
        tr_z=np.asarray(arrays["tr_z"]),
        flow_params=_rebuild(flow_template, arrays["flow"]),
        opt_state=_rebuild(opt_template, arrays["adam"]),
        gp_params=None if gp_template is None else _rebuild(gp_template, arrays["gp"]),
        trust=TrustRegionState(**meta["trust"]), oracle=Oracle.from_state(oracle_state),
        pending_train=int(meta["pending_train"]), finetunes=int(meta["finetunes"]),
        records=list(meta["records"]))
    return state, meta
