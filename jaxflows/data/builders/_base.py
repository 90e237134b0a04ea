"""Shared base of the offline builders: the ``source_path`` / ``wheel_dir`` keyword arguments, and
a ``DatasetInfo`` that never looks for TFDS's bucket copy."""

from __future__ import annotations

import os

import tensorflow_datasets as tfds

from jaxflows.data import sources


class OfflineDatasetInfo(tfds.core.DatasetInfo):
    """``tfds.core.DatasetInfo`` without the bucket lookup.

    TFDS calls ``initialize_from_bucket`` whenever a builder is made for a dataset that is not
    prepared yet. That method creates a directory in the system temp dir before it checks
    whether the bucket is reachable and never removes it, so every such builder (each
    ``jaxflows data prepare``, each check for missing data) left an empty ``tmp*tfds`` directory
    behind. Our datasets are never in TFDS's bucket, so there is nothing to look up.
    """

    def initialize_from_bucket(self) -> None:
        """Does nothing (see the class docstring)."""


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

    def dataset_info_from_configs(self, **kwargs) -> OfflineDatasetInfo:
        """TFDS's ``dataset_info_from_configs`` (metadata files override ``description`` and
        ``citation``), building an :class:`OfflineDatasetInfo`."""
        metadata = self.get_metadata()
        if metadata.description:
            kwargs["description"] = metadata.description
        if metadata.citation:
            kwargs["citation"] = metadata.citation
        return OfflineDatasetInfo(builder=self, **kwargs)
