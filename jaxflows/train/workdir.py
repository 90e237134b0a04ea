"""Safe workdirs: one process per workdir, and a resume only under a compatible config.

* :class:`WorkdirLock`: an exclusive ``fcntl.flock`` on ``WORKDIR/.lock`` that names its holder
  (pid and host) inside the file. The kernel drops a flock when its process dies, however it
  dies, so a lock file left by a killed run is *stale*: the next run takes it over (and says so
  in the log). A second live ``jaxflows train`` on the same workdir fails with one line naming
  the holder's pid.
* :func:`check_resumable`: compares a new config with the workdir's saved ``config.json`` before
  anything in the workdir is written. Keys of :data:`RESUMABLE_KEYS` may change (a longer
  schedule, logging, the mesh: a run resumes exactly on any device count); any other difference
  (model, data, optimiser, seed) fails with one line naming the differing keys.
"""

from __future__ import annotations

import errno
import fcntl
import fnmatch
import json
import logging
import os
import socket
from collections.abc import Mapping
from typing import Any

from jaxflows.errors import UserError

log = logging.getLogger(__name__)

#: config keys (glob patterns) that may differ between a workdir's runs
RESUMABLE_KEYS = (
    "train.num_epochs", "train.num_steps", "train.early_stopping_patience",
    "train.log_every_steps", "train.checkpoint_every_secs", "train.keep_checkpoints",
    "train.progress_bar", "train.steps_per_dispatch", "train.eval_batch_size",
    "data.data_dir", "mesh.*", "init_from",
    # memory strategies: the same numbers up to float reassociation
    "model.remat", "model.attention",
)


def check_workdir_path(workdir: str) -> None:
    """A workdir must be a directory or not exist yet; a UserError says what it is instead."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UserError(f"--workdir {workdir} is a file, not a directory",
                        hint="pass a new or existing directory")
    parent = os.path.dirname(os.path.abspath(workdir))
    if not os.path.isdir(parent) and os.path.exists(parent):
        raise UserError(f"--workdir {workdir}: {parent} is not a directory")


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, Mapping):
        out = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: tree}


def _normalise(config: Mapping) -> dict[str, Any]:
    """Flat ``{dotted key: value}`` after a JSON round trip (tuples and lists compare equal)."""
    return _flatten(json.loads(json.dumps(dict(config))))


def config_differences(saved: Mapping, new: Mapping) -> list[tuple[str, Any, Any]]:
    """``[(key, saved value, new value)]`` for keys that differ and may not change on resume."""
    a, b = _normalise(saved), _normalise(new)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if a.get(key, "<absent>") == b.get(key, "<absent>"):
            continue
        if any(fnmatch.fnmatchcase(key, pat) or key.startswith(pat + ".")
               for pat in RESUMABLE_KEYS):
            continue
        diffs.append((key, a.get(key, "<absent>"), b.get(key, "<absent>")))
    return diffs


def check_resumable(workdir: str, config: Mapping) -> None:
    """Raises a UserError when ``workdir`` holds a run whose saved config differs from
    ``config`` in a key outside :data:`RESUMABLE_KEYS`. Writes nothing."""
    from jaxflows.train.config import upgrade_saved_config

    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return
    try:
        with open(path) as f:
            saved = upgrade_saved_config(json.load(f))
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is unreadable ({e})",
                        hint="use a new --workdir, or remove the file to start over") from None
    diffs = config_differences(saved, config)
    if diffs:
        shown = "; ".join(f"{k}: {_short(old)} -> {_short(new)}" for k, old, new in diffs[:6])
        more = f" and {len(diffs) - 6} more" if len(diffs) > 6 else ""
        raise UserError(
            f"workdir {workdir} holds a run with a different config ({shown}{more})",
            hint="only a longer schedule (train.num_epochs / train.num_steps), logging and the "
                 "mesh may change on resume; use a new --workdir")


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


class WorkdirLock:
    """Exclusive lock of a workdir for the lifetime of a run (a context manager)."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, ".lock")
        self._fd: int | None = None

    def acquire(self) -> WorkdirLock:
        """Takes the lock or raises a UserError naming the live holder."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            holder = self.holder() or "an unknown process"
            raise UserError(f"workdir {os.path.dirname(self.path)} is in use by {holder}",
                            hint="wait for it to finish, stop it, or use another --workdir"
                            ) from None
        previous = self.holder()
        if previous:
            log.warning("taking over the stale lock of %s (that process is gone)", previous)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def holder(self) -> str | None:
        """``'pid N on HOST'`` as written in the lock file, or None."""
        try:
            with open(self.path) as f:
                info = json.loads(f.read() or "{}")
        except (OSError, json.JSONDecodeError):
            return None
        if "pid" not in info:
            return None
        return f"pid {info['pid']} on {info.get('host', '?')}"

    def release(self) -> None:
        """Empties the lock file and drops the lock."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
