"""Metrics sinks: ``WORKDIR/metrics.jsonl``, TensorBoard event files, a terminal progress bar.

Only process 0 writes. On resume, lines for steps after the restored checkpoint are dropped so
the file reads exactly as an uninterrupted run's.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys

import jax
import numpy as np


def _jsonable(value):
    if isinstance(value, (np.generic, np.ndarray)) or hasattr(value, "dtype"):
        value = np.asarray(value).item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsWriter:
    """Appends ``{"step": s, ...}`` lines to metrics.jsonl and scalars to TensorBoard."""

    def __init__(self, workdir: str, *, resume_step: int = 0, total_steps: int = 0,
                 progress_bar: bool = True):
        self.active = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        self._bar = None
        if not self.active:
            return
        self._truncate_after(resume_step)
        try:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
        except ImportError:  # optional sink
            logging.info("tensorboardX not installed: no TensorBoard events")
        if progress_bar and sys.stderr.isatty() and total_steps:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=resume_step, dynamic_ncols=True)

    def _truncate_after(self, step: int) -> None:
        if not os.path.exists(self.path):
            return
        with open(self.path) as f:
            lines = [ln for ln in f if ln.strip()]
        keep = [ln for ln in lines if json.loads(ln).get("step", 0) <= step]
        if len(keep) != len(lines):
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                f.writelines(keep)
            os.replace(tmp, self.path)

    def write(self, step: int, metrics: dict, *, prefix: str = "") -> None:
        """Writes one record; ``prefix`` (e.g. ``'val_'``) is prepended to every name."""
        if not self.active:
            return
        record = {"step": int(step)}
        record.update({prefix + k: _jsonable(v) for k, v in metrics.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)
        if self._bar is not None and "loss" in record:
            self._bar.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)

    def advance(self, n: int) -> None:
        """Moves the progress bar by ``n`` steps."""
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        """Flushes TensorBoard and closes the bar."""
        if self._tb is not None:
            self._tb.close()
        if self._bar is not None:
            self._bar.close()


def read_metrics(workdir: str) -> list[dict]:
    """Reads WORKDIR/metrics.jsonl as a list of dicts."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(ln) for ln in f if ln.strip()]
