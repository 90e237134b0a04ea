"""Pretrained parameters: write them as an Orbax checkpoint, read subtrees of one back, graft them.

Two kinds of source hold parameters:

* a **params checkpoint**, an Orbax ``StandardCheckpointer`` directory of the pytree
  ``{'params': params}``, written by :func:`save_params` (converters of official checkpoints
  write this);
* a **workdir** of ``jaxflows train``: its newest checkpoint's train state
  (``{'params', 'ema_params', 'best_params', 'opt_state', ...}``).

``config.init_from`` lists ``{path, source, target}`` entries: ``source`` is a ``/``-separated
path into that tree (``params``, ``best_params/encoder``; default ``params``), ``target`` a path
into the new model's params (``''`` = all of them). :func:`load_init_from` reads every entry and
checks that the source subtree has exactly the target's structure, shapes and dtypes (an error
names the first path that differs); :func:`graft` puts the arrays in place.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from jaxflows.errors import ConfigError, UserError

PyTree = Any


def save_params(path: str, params: PyTree) -> str:
    """Writes ``{'params': params}`` as an Orbax checkpoint directory at ``path`` (atomic: Orbax
    writes a temporary directory and renames it). Returns the absolute path."""
    import orbax.checkpoint as ocp

    path = os.path.abspath(path)
    if os.path.exists(path):
        raise UserError(f"{path} already exists", hint="choose a new --out directory")
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, {"params": jax.tree.map(np.asarray, params)})
        ckptr.wait_until_finished()
    return path


def _latest_state_dir(workdir: str) -> str | None:
    ckpt = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(ckpt):
        return None
    steps = sorted((int(d) for d in os.listdir(ckpt) if d.isdigit()), reverse=True)
    for step in steps:
        state = os.path.join(ckpt, str(step), "state")
        if os.path.isdir(state):
            return state
    return None


def read_tree(path: str) -> PyTree:
    """The parameter tree stored at ``path`` (a workdir or a params checkpoint), as numpy."""
    import orbax.checkpoint as ocp

    if not os.path.exists(path):
        raise ConfigError(f"config.init_from: {path} does not exist")
    directory = os.path.abspath(_latest_state_dir(path) or path)
    with ocp.StandardCheckpointer() as ckptr:
        try:
            meta = ckptr.metadata(directory)
            tree = getattr(meta, "item_metadata", meta)
            target = jax.tree.map(
                lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype,
                                               sharding=_local_sharding()), tree)
            restored = ckptr.restore(directory, target)
        except (FileNotFoundError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"config.init_from: {path} is neither a jaxflows workdir with a "
                              f"checkpoint nor an Orbax params checkpoint "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    restored = jax.tree.map(np.asarray, restored)
    if directory != os.path.abspath(path):
        restored = _without_stale_best(restored, os.path.dirname(directory))
    return restored


def _without_stale_best(tree: PyTree, step_dir: str) -> PyTree:
    """``tree`` with ``best_params`` replaced by the EMA (else live) params when the checkpoint in
    ``step_dir`` was written before any validation (``loop/metadata`` says ``best_step < 0``):
    older engines left the initial params there until the first validation."""
    import json

    if not isinstance(tree, Mapping) or tree.get("best_params") is None:
        return tree
    try:
        with open(os.path.join(step_dir, "loop", "metadata")) as f:
            best_step = int(json.load(f).get("best_step", -1))
    except (OSError, ValueError, TypeError):
        return tree
    if best_step >= 0:
        return tree
    tree = dict(tree)
    tree["best_params"] = (tree.get("ema_params") if tree.get("ema_params") is not None
                           else tree["params"])
    return tree


def _local_sharding():
    return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def _split(path: str) -> list[str]:
    return [p for p in path.strip("/").split("/") if p]


def subtree(tree: PyTree, path: str, *, what: str = "tree") -> PyTree:
    """The subtree of nested dicts ``tree`` at ``'a/b/c'`` (``''`` = the whole tree)."""
    node = tree
    for i, key in enumerate(_split(path)):
        if not isinstance(node, Mapping) or key not in node:
            have = sorted(node) if isinstance(node, Mapping) else type(node).__name__
            raise ConfigError(f"{what} has no {'/'.join(_split(path)[:i + 1])!r} "
                              f"(there: {have})")
        node = node[key]
    return node


def check_same_structure(source: PyTree, target: PyTree, where: str) -> None:
    """Raises a ConfigError naming the first path whose structure, shape or dtype differs."""
    src = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(source)}
    tgt = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(target)}
    missing = sorted(set(tgt) - set(src))
    extra = sorted(set(src) - set(tgt))
    if missing or extra:
        raise ConfigError(f"{where}: parameter trees differ (missing in the source: "
                          f"{missing[:3]}, not in the model: {extra[:3]})")
    for k, t in tgt.items():
        s = src[k]
        if tuple(s.shape) != tuple(t.shape) or np.dtype(s.dtype) != np.dtype(t.dtype):
            raise ConfigError(f"{where}: {k} is {np.dtype(s.dtype).name}{list(s.shape)} in the "
                              f"source but {np.dtype(t.dtype).name}{list(t.shape)} in the model")


def load_init_from(entries: Sequence[Mapping[str, str]], abstract_params: PyTree
                   ) -> list[tuple[str, PyTree]]:
    """Reads every ``{path, source, target}`` entry; returns ``[(target, subtree)]`` checked
    against ``abstract_params`` (the model's params as ShapeDtypeStructs, unboxed)."""
    out = []
    cache: dict[str, PyTree] = {}
    for i, entry in enumerate(entries):
        entry = dict(entry)
        unknown = set(entry) - {"path", "source", "target"}
        if unknown or "path" not in entry:
            raise ConfigError(f"config.init_from[{i}] must be a dict with keys path, source "
                              f"(default 'params') and target (default ''), got {entry}")
        path = os.fspath(entry["path"])
        source = entry.get("source", "params") or "params"
        target = entry.get("target", "") or ""
        if path not in cache:
            cache[path] = read_tree(path)
        src = subtree(cache[path], source, what=f"config.init_from[{i}] {path}")
        tgt = subtree(abstract_params, target, what="the model's params")
        check_same_structure(src, tgt, f"config.init_from[{i}] ({path}:{source} -> "
                                       f"{target or '<all params>'})")
        out.append((target, src))
    return out


def graft(params: PyTree, target: str, values: PyTree) -> PyTree:
    """A copy of nested-dict ``params`` with the subtree at ``target`` replaced by ``values``."""
    keys = _split(target)
    if not keys:
        return values
    head, rest = keys[0], "/".join(keys[1:])
    out = dict(params)
    out[head] = graft(params[head], rest, values)
    return out
