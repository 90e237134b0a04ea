"""Provenance for benchmark and experiment records: git commit and machine description.

jax is imported inside the functions that need it, so :func:`git_commit` works without it.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from typing import Any

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def git_commit(repo_dir: str | None = None) -> str:
    """HEAD hash of ``repo_dir`` (default: this checkout), ``+dirty`` if tracked files are
    modified; ``"unknown"`` when git is unavailable or ``repo_dir`` is not a repository."""
    cwd = repo_dir or _REPO
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                              text=True, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                cwd=cwd, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return (head + ("+dirty" if status else "")) if head else "unknown"


def machine_info(load_at_start: float | None = None, **extra: Any) -> dict:
    """Platform, CPU, jax version/backend/devices and the 1-minute load average (at
    ``load_at_start`` if given, and now: timings on a shared CPU depend on it); ``extra``
    entries (e.g. ``distrax=distrax.__version__``) are merged in."""
    import jax

    dev = jax.devices()[0]
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device_kind": dev.device_kind,
        "num_devices": jax.device_count(),
    }
    if load_at_start is not None:
        info["load_average_1m_at_start"] = load_at_start
    info["load_average_1m_at_end"] = os.getloadavg()[0]
    info.update(extra)
    return info


def machine_summary() -> str:
    """One line, e.g. ``"x86_64, 8 CPU cores, cpu (cpu), jax 0.7.0"``."""
    import jax

    dev = jax.devices()[0]
    return (f"{platform.machine()}, {os.cpu_count()} CPU cores, {dev.platform} "
            f"({dev.device_kind}), jax {jax.__version__}")


def params_fingerprint(tree: Any) -> str:
    """A 16-hex-digit SHA-256 of a parameter pytree: key paths, dtypes, shapes and bytes. Two
    trees share it iff they are bitwise equal (up to hash collisions); results store it to say
    which pretrained model a run started from."""
    import hashlib

    import jax
    import numpy as np

    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def write_json_atomic(path: str, obj: Any, *, indent: int = 1, sort_keys: bool = False) -> None:
    """Writes ``obj`` as JSON to ``path`` through a temporary file and ``os.replace``, so a
    reader never sees a half-written file (results, summaries, configs)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=indent, sort_keys=sort_keys)
    os.replace(tmp, path)


def read_json(path: str) -> Any:
    """The JSON value stored in ``path``."""
    with open(path) as f:
        return json.load(f)


def repo_relative(path: str, root: str) -> str:
    """``path`` relative to ``root`` when it lies inside it (results name no machine path),
    else the absolute path."""
    path = os.path.abspath(path)
    return os.path.relpath(path, root) if path.startswith(root + os.sep) else path


def recorded_command(script: str, argv: list[str], root: str,
                     placeholders: dict[str, str] | None = None) -> str:
    """``python SCRIPT ARGV`` without this machine's paths: the values of the options in
    ``placeholders`` (``{'--official': 'ML_TARFLOW_DIR'}``) are replaced by their placeholder
    and ``--out`` by its path relative to ``root`` (or its file name outside ``root``); both
    ``--opt value`` and ``--opt=value`` forms."""
    placeholders = placeholders or {}
    out, it = [], iter(argv)
    for a in it:
        key, eq, val = a.partition("=")
        if key in placeholders or key == "--out":
            if not eq:
                val = next(it, "")
            if key == "--out":
                path = os.path.abspath(val)
                val = (os.path.relpath(path, root) if path.startswith(root + os.sep)
                       else os.path.basename(path))
            else:
                val = placeholders[key]
            out.append(f"{key} {val}")
        else:
            out.append(a)
    return " ".join(["python", script, *out])
