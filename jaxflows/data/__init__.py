"""jaxflows.data: offline datasets, the input pipeline and pixel transforms.

- :mod:`~jaxflows.data.registry`: ``prepare``, ``load_source``, ``dataset_info``,
  ``default_data_dir``, ``FixedBinarizedSource``, ``InMemorySource`` (names ``mnist``,
  ``moses``, ``moses_selfies``, ``digits``, ``toy2d/*``; TFDS builders writing ArrayRecord in
  :mod:`~jaxflows.data.builders`).
- :mod:`~jaxflows.data.source_transforms`: host-side transforms named in
  ``config.data.transforms`` (``binarize_eval``, ``pad_tokens``).
- :mod:`~jaxflows.data.pipeline`: ``train_iterator`` (infinite, per-process, checkpointable
  grain iterator) and ``eval_batches`` (one padded pass with a mask).
- :mod:`~jaxflows.data.transforms`: ``dynamic_binarize``, ``to_unit``, ``uniform_dequantize``,
  ``dequantize_deterministic``, ``to_uint8`` (pure jnp).
- :mod:`~jaxflows.data.cli`: ``prepare_command`` for ``jaxflows data prepare``.

Importing this package is light: TFDS and grain load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DATASETS": "registry",
    "FixedBinarizedSource": "registry",
    "InMemorySource": "registry",
    "dataset_info": "registry",
    "default_data_dir": "registry",
    "load_source": "registry",
    "prepare": "registry",
    "eval_batches": "pipeline",
    "train_iterator": "pipeline",
    "dequantize_deterministic": "transforms",
    "dynamic_binarize": "transforms",
    "to_uint8": "transforms",
    "to_unit": "transforms",
    "uniform_dequantize": "transforms",
    "prepare_command": "cli",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f"jaxflows.data.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'jaxflows.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
