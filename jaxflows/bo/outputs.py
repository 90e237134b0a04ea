"""What a BO run writes into its workdir besides the checkpoint.

* ``bo_history.jsonl``: one line per oracle call, in call order: ``{"call": k (1-based),
  "iteration": i, "smiles": canonical SMILES, "score": s}``. Appended after every iteration;
  rewritten from the checkpoint when a run resumes (so lines of an iteration that was not
  checkpointed before a kill disappear and are written again).
* ``best.json``: the best molecules (up to 100) with score, call and iteration, plus the best
  initial molecule.
* ``best_so_far.png``: the best score against oracle calls (matplotlib).
* ``summary.json``: final best, PMO Top-k / AUC Top-k, seconds per iteration, compile counts,
  provenance (written by :mod:`jaxflows.bo.loop`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np

from jaxflows.provenance import write_json_atomic

HISTORY = "bo_history.jsonl"


def history_lines(smiles: Sequence[str], scores: Sequence[float], iterations: Sequence[int],
                  first_call: int) -> list[str]:
    """JSON lines of oracle calls ``first_call, first_call + 1, ...``."""
    return [json.dumps({"call": first_call + i, "iteration": int(it), "smiles": s,
                        "score": float(y)})
            for i, (s, y, it) in enumerate(zip(smiles, scores, iterations, strict=True))]


def rewrite_history(workdir: str, lines: list[str]) -> None:
    """Replaces ``bo_history.jsonl`` with ``lines`` (atomically)."""
    path = os.path.join(workdir, HISTORY)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(line + "\n" for line in lines)
    os.replace(tmp, path)


def append_history(workdir: str, lines: list[str]) -> None:
    """Appends ``lines`` to ``bo_history.jsonl`` and flushes them to disk."""
    if not lines:
        return
    with open(os.path.join(workdir, HISTORY), "a") as f:
        f.writelines(line + "\n" for line in lines)
        f.flush()
        os.fsync(f.fileno())


def read_history(workdir: str) -> list[dict]:
    """The records of ``bo_history.jsonl`` (empty if there is none)."""
    path = os.path.join(workdir, HISTORY)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def best_so_far(scores: Sequence[float], initial_best: float | None = None) -> np.ndarray:
    """``[n]``: the best score after each call (starting from ``initial_best`` if given)."""
    s = np.asarray(scores, np.float64)
    if initial_best is not None:
        s = np.maximum.accumulate(np.concatenate([[initial_best], s]))[1:]
    return np.maximum.accumulate(s) if len(s) else s


def write_best(workdir: str, smiles: Sequence[str], scores: Sequence[float],
               iterations: Sequence[int], initial_best: tuple[str, float] | None,
               top: int = 100) -> str:
    """Writes ``best.json`` (the ``top`` best oracle calls, best first)."""
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")[:top]
    path = os.path.join(workdir, "best.json")
    write_json_atomic(path, {
        "best": [{"smiles": smiles[i], "score": float(scores[i]), "call": int(i) + 1,
                  "iteration": int(iterations[i])} for i in order],
        "initial_best": None if initial_best is None else {
            "smiles": initial_best[0], "score": float(initial_best[1])},
    })
    return path


def plot_best_so_far(path: str, curves: dict[str, np.ndarray], *, title: str = "",
                     initial_best: float | None = None, band: dict | None = None) -> str:
    """Line plot of best-so-far curves ``{label: [n]}`` against oracle calls; ``band``:
    ``{label: (low [n], high [n])}`` shaded (e.g. mean -+ standard error)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, y in curves.items():
        x = np.arange(1, len(y) + 1)
        ax.plot(x, y, label=label)
        if band and label in band:
            lo, hi = band[label]
            ax.fill_between(x, lo, hi, alpha=0.2)
    if initial_best is not None:
        ax.axhline(initial_best, color="gray", ls=":", lw=1, label="initial best")
    ax.set_xlabel("oracle calls")
    ax.set_ylabel("best score so far")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path
