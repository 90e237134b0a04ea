"""Benchmarks run only on a quiet machine: the shared ``--max_load`` / ``--force`` flags and the
one-line refusal every benchmark script prints when the 1-minute load average is too high
(timings taken while training or tests run are meaningless on a 2-core machine)."""

from __future__ import annotations

import argparse
import os
import sys


def add_load_args(parser: argparse.ArgumentParser, max_load: float = 1.0) -> None:
    """Adds ``--max_load`` (default 1.0) and ``--force`` (run anyway: smoke tests only)."""
    parser.add_argument("--max_load", type=float, default=max_load,
                        help="refuse to run above this 1-minute load average")
    parser.add_argument("--force", action="store_true",
                        help="run even when the machine is loaded (smoke tests only)")


def load_refusal(script: str, load: float, max_load: float, force: bool) -> str | None:
    """The one-line refusal of ``script`` when the 1-minute load average ``load`` is above
    ``max_load`` (``None``: go ahead, also when ``force``)."""
    if force or load <= max_load:
        return None
    return (f"{script}: refusing to run, 1-minute load average {load:.2f} > {max_load:.1f} "
            "(timings would be meaningless); run it on a quiet machine or pass --force for a "
            "smoke test")


def require_quiet(script: str, args: argparse.Namespace) -> float:
    """The 1-minute load average now; exits with :func:`load_refusal`'s line when it is above
    ``args.max_load`` and ``args.force`` is not set."""
    load = os.getloadavg()[0]
    refusal = load_refusal(script, load, args.max_load, args.force)
    if refusal:
        sys.exit(refusal)
    return load
