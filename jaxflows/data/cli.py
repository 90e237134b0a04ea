"""The ``jaxflows data prepare NAME [--data_dir DIR]`` command's body (the CLI prints)."""

from __future__ import annotations

import os
import time

from jaxflows.data.registry import default_data_dir, prepare


def prepare_command(name: str, data_dir: str | os.PathLike | None = None) -> list[str]:
    """Build dataset ``name`` (idempotent) and return the lines to print, e.g.

    ``['mnist: train 50000, validation 10000, test 10000', 'in /root/.cache/... (12.3 s)']``.
    Raises ``UserError`` for an unknown name or a failed download.
    """
    data_dir = os.fspath(data_dir) if data_dir is not None else default_data_dir()
    start = time.perf_counter()
    sizes = prepare(name, data_dir)
    seconds = time.perf_counter() - start
    splits = ", ".join(f"{split} {size}" for split, size in sizes.items())
    return [f"{name}: {splits}", f"in {data_dir} ({seconds:.1f} s)"]
