"""2-D scatter plots of samples (the artifact of vector-valued density tasks), as PNG files."""

from __future__ import annotations

import os
import tempfile

import numpy as np

from jaxflows.errors import UserError


def save_scatter(points, path: str | os.PathLike, title: str | None = None,
                 *, lim: float | None = None, dpi: int = 100) -> str:
    """Writes ``points: [N, 2]`` as a square scatter-plot PNG at ``path``; returns the path.

    Non-finite points are left out (the title notes how many). ``lim`` fixes both axes to
    ``[-lim, lim]`` (default: fit the finite points). The file is written atomically: a temporary
    file in the same folder, then ``os.replace``. Uses matplotlib's Agg canvas directly (no
    pyplot state, no display needed).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pts = np.asarray(points, np.float64)
    if pts.ndim != 2 or pts.shape[-1] != 2:
        raise UserError(f"a scatter plot needs 2-D points [N, 2], got shape {pts.shape}",
                        hint="scatter samples are written for D = 2 data only")
    finite = np.all(np.isfinite(pts), axis=-1)
    dropped = int(np.sum(~finite))
    pts = pts[finite]

    fig = Figure(figsize=(5, 5), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    size = 4.0 if len(pts) <= 2000 else max(0.5, 4.0 * 2000 / len(pts))
    ax.scatter(pts[:, 0], pts[:, 1], s=size, alpha=0.6, linewidths=0, color="tab:blue")
    ax.set_aspect("equal", adjustable="box")
    if lim is not None:
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
    label = title or ""
    if dropped:
        label = f"{label} ({dropped} non-finite points left out)".strip()
    if label:
        ax.set_title(label, fontsize=10)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()

    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".scatter-", suffix=".png", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path
