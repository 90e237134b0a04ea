"""Training curves as pictures: ``WORKDIR/metrics.jsonl`` -> one PNG.

:func:`read_metrics` parses the metrics file into one series per metric (step-sorted; when a
resumed run repeats a step, the last row for that step wins). :func:`plot_curves` draws the
training loss and every validation metric (``val_*`` keys) of one or several runs, overlaid, with
step on the bottom axis and epoch on a secondary top axis. :func:`write_run_curves` is the
never-raising per-run hook the training loop calls after an evaluation.

matplotlib is imported lazily, inside the plotting function, so importing ``jaxflows.train`` does
not import it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys

import numpy as np

from jaxflows.errors import UserError

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"

# Validation keys that are bookkeeping, not metrics to draw.
_NOT_PLOTTED = frozenset({"val_epoch", "val_step"})
_NONFINITE = {"nan": math.nan, "inf": math.inf, "+inf": math.inf, "-inf": -math.inf,
              "infinity": math.inf, "+infinity": math.inf, "-infinity": -math.inf}


def _as_float(value) -> float | None:
    """A metric value as float; metrics.py writes non-finite floats as strings ('nan', 'inf')."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        return _NONFINITE.get(value.strip().lower())
    return None


def read_metrics(workdir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Reads ``WORKDIR/metrics.jsonl`` into ``{name: (steps, values)}``.

    ``steps`` is int64 ``[N]`` sorted ascending, ``values`` float64 ``[N]`` (non-finite values
    kept as nan/inf). ``step`` itself is not a series. Training rows give e.g. ``loss``,
    ``epoch``, ``learning_rate``; validation rows give ``val_loss``, ``val_epoch``, ... Rows are
    merged per metric: when a step repeats (a resumed run appending), the last value wins.
    Non-numeric values are ignored. An unparseable line (the truncated last line of a killed
    run) is skipped.

    Raises:
      UserError: the workdir has no metrics.jsonl.
    """
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.isfile(path):
        hint = ("is it the --workdir of a training run?" if os.path.isdir(workdir)
                else "the directory does not exist")
        raise UserError(f"workdir {workdir} has no {METRICS_FILE}", hint=hint)
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [(i + 1, ln) for i, ln in enumerate(f) if ln.strip()]
    series: dict[str, dict[int, float]] = {}
    for k, (lineno, line) in enumerate(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            last = k == len(lines) - 1
            (logging.info if last else logging.warning)(
                "%s line %d is not valid JSON%s: skipped", path, lineno,
                " (truncated by a killed run?)" if last else "")
            continue
        if not isinstance(row, dict):
            continue
        step = row.get("step")
        if isinstance(step, bool) or not isinstance(step, (int, float)) \
                or not math.isfinite(step):
            continue
        step = int(step)
        for name, value in row.items():
            if name == "step":
                continue
            v = _as_float(value)
            if v is not None:
                series.setdefault(name, {})[step] = v
    out = {}
    for name, by_step in series.items():
        steps = np.array(sorted(by_step), dtype=np.int64)
        out[name] = (steps, np.array([by_step[s] for s in steps.tolist()], dtype=np.float64))
    return out


def _steps_per_epoch(metrics: dict[str, tuple[np.ndarray, np.ndarray]]) -> float | None:
    """The run's step/epoch ratio from its ``epoch`` (or ``val_epoch``) column; None if absent."""
    ratios = []
    for name in ("epoch", "val_epoch"):
        if name in metrics:
            steps, epochs = metrics[name]
            ok = np.isfinite(epochs) & (epochs > 0) & (steps > 0)
            ratios.extend((steps[ok] / epochs[ok]).tolist())
    return float(np.median(ratios)) if ratios else None


def _labels(workdirs: list[str]) -> list[str]:
    """Workdir basenames; parent/basename where basenames collide."""
    norm = [os.path.normpath(os.path.abspath(w)) for w in workdirs]
    base = [os.path.basename(w) or w for w in norm]
    out = []
    for w, b in zip(norm, base):
        if base.count(b) > 1:
            b = os.path.join(os.path.basename(os.path.dirname(w)), b)
        out.append(b)
    return out


def _use_log(values: list[np.ndarray]) -> bool:
    """Log y only when every finite value is positive and they span more than two decades."""
    v = np.concatenate([a[np.isfinite(a)] for a in values]) if values else np.zeros(0)
    return v.size > 1 and bool(np.all(v > 0)) and float(v.max() / v.min()) > 100.0


def _title(name: str) -> str:
    if name == "loss":
        return "training loss"
    return "validation " + name[len("val_"):] if name.startswith("val_") else name


def plot_curves(workdirs: list[str], out: str, *, x: str = "step") -> str:
    """Draws training loss and each validation metric of the runs in ``workdirs`` into ``out``.

    One panel for ``loss`` and one per ``val_*`` metric (union over runs); each run is a line
    labelled by its workdir basename, with the same colour in every panel. ``x='step'`` puts step
    on the bottom axis and epoch on a secondary top axis (from the run's step/epoch ratio);
    ``x='epoch'`` the other way round. The PNG is written atomically (``out + '.tmp.png'``, then
    ``os.replace``). Returns ``out``.

    Raises:
      UserError: no workdirs, a workdir without metrics.jsonl, nothing to plot, an unknown ``x``,
        or ``x='epoch'`` for a run that logged no epoch.
    """
    if x not in ("step", "epoch"):
        raise UserError(f"cannot plot against {x!r}", hint="use x='step' or x='epoch'")
    if not workdirs:
        raise UserError("no workdir to plot", hint="pass at least one --workdir")
    runs = [read_metrics(w) for w in workdirs]
    labels = _labels(list(workdirs))
    spes = [_steps_per_epoch(m) for m in runs]
    if x == "epoch":
        for label, spe in zip(labels, spes):
            if spe is None:
                raise UserError(f"run {label} logged no epoch", hint="plot against x='step'")

    names = sorted({k for m in runs for k in m
                    if k.startswith("val_") and k not in _NOT_PLOTTED})
    if any("loss" in m for m in runs):
        names.insert(0, "loss")
    if not names:
        raise UserError(f"no loss or val_* metrics to plot in {', '.join(workdirs)}",
                        hint="has the run logged its first step yet?")

    # The other axis (epoch when x='step', step when x='epoch') needs one step/epoch ratio.
    known = [(label, s) for label, s in zip(labels, spes) if s is not None]
    spe = known[0][1] if known else None
    other = "epoch" if x == "step" else "step"
    other_label = other
    if known and any(abs(s - spe) > 1e-3 * spe for _, s in known):
        other_label = f"{other} ({known[0][0]})"  # runs disagree: the first run's scale

    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")  # never switch the backend of an interactive pyplot session
    from matplotlib.figure import Figure  # no pyplot: no global figure state, thread-safe

    ncols = 2 if len(names) == 4 else min(len(names), 3)
    nrows = math.ceil(len(names) / ncols)
    fig = Figure(figsize=(5.0 * ncols, 3.6 * nrows + (0.5 if len(runs) > 1 else 0.3)),
                 dpi=100, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    colors = matplotlib.colormaps["tab10"].colors
    handles = {}
    for ax, name in zip(axes, names):
        drawn = []
        for i, (metrics, label) in enumerate(zip(runs, labels)):
            if name not in metrics:
                continue
            steps, values = metrics[name]
            xs = steps.astype(np.float64) if x == "step" else steps / spes[i]
            ys = np.where(np.isfinite(values), values, np.nan)
            (line,) = ax.plot(xs, ys, color=colors[i % len(colors)], label=label,
                              linewidth=1.3, marker="o" if len(xs) <= 50 else None,
                              markersize=3)
            handles.setdefault(label, line)
            drawn.append(values)
        if _use_log(drawn):
            ax.set_yscale("log")
        ax.set_title(_title(name), fontsize=11)
        ax.set_xlabel(x)
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3, which="both" if ax.get_yscale() == "log" else "major")
        if spe is not None:
            fwd, inv = ((lambda s: s / spe), (lambda e: e * spe)) if x == "step" else \
                ((lambda e: e * spe), (lambda s: s / spe))
            top = ax.secondary_xaxis("top", functions=(fwd, inv))
            top.set_xlabel(other_label, fontsize=9)
            top.tick_params(labelsize=8)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    if len(runs) > 1:
        fig.legend(list(handles.values()), list(handles), loc="outside lower center",
                   ncols=min(len(handles), 4), frameon=False)
    else:
        fig.suptitle(labels[0], fontsize=12)

    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = out + ".tmp.png"
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out


def write_run_curves(workdir: str) -> str | None:
    """``plot_curves([workdir], WORKDIR/curves.png)``; never raises.

    Returns the PNG path, or None when nothing was written (a failure is logged with
    ``logging.warning``: training must not die for a plot). Only JAX process 0 writes.
    """
    try:
        if "jax" in sys.modules and sys.modules["jax"].process_index() != 0:
            return None
        return plot_curves([workdir], os.path.join(workdir, CURVES_FILE))
    except Exception as e:  # noqa: BLE001 - a plot must never stop training
        logging.warning("could not plot training curves for %s: %s: %s",
                        workdir, type(e).__name__, e)
        return None
