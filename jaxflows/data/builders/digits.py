"""scikit-learn's bundled 8x8 digits (1,797 images) as a small embedded image dataset.

Images are stored as uint8 ``[8, 8, 1]``: the raw values ``v`` in 0..16 map to
``round(v * 255 / 16)`` (so 0 -> 0, 16 -> 255). Labels are int64 in 0..9.

Splits come from one fixed-seed permutation (``numpy.random.default_rng(0)``) of the 1,797
examples: the first 200 are ``test``, the next 200 ``validation``, the remaining 1,397 ``train``;
within a split the examples keep scikit-learn's order. Builds in about a second, without network
access; this is the default dataset of demos and tests.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from jaxflows.data.builders._base import OfflineBuilder

SPLIT_SEED = 0
NUM_TEST = 200
NUM_VALIDATION = 200
SPLIT_SIZES = {"train": 1397, "validation": 200, "test": 200}


def digits_to_uint8(values: np.ndarray) -> np.ndarray:
    """Map digits' 0..16 values (any shape) to uint8 0..255 by ``round(v * 255 / 16)``."""
    return np.round(np.asarray(values, np.float64) * (255.0 / 16.0)).astype(np.uint8)


def split_indices(n: int) -> dict[str, np.ndarray]:
    """Sorted example indices of each split for ``n`` examples (see the module docstring)."""
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    test = perm[:NUM_TEST]
    val = perm[NUM_TEST:NUM_TEST + NUM_VALIDATION]
    train = perm[NUM_TEST + NUM_VALIDATION:]
    return {"train": np.sort(train), "validation": np.sort(val), "test": np.sort(test)}


class JaxflowsDigits(OfflineBuilder, skip_registration=True):
    """scikit-learn digits: ``image`` uint8 [8, 8, 1], ``label`` int64 (10 classes).

    ``source_path`` (optional) is an ``.npz`` with ``images`` [N, 8, 8] (values 0..16) and
    ``target`` [N]; by default ``sklearn.datasets.load_digits()`` (bundled, no download).
    """

    name = "jaxflows_digits"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "scikit-learn load_digits, fixed-seed 1397/200/200 split."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
                "label": tfds.features.ClassLabel(num_classes=10),
            }),
            supervised_keys=("image", "label"),
            disable_shuffling=True,
        )

    def _load(self) -> tuple[np.ndarray, np.ndarray]:
        if self._source_path:
            with np.load(self._source_path) as f:
                return np.asarray(f["images"]), np.asarray(f["target"])
        from sklearn.datasets import load_digits

        d = load_digits()
        return d.images, d.target

    def _split_generators(self, dl_manager):
        del dl_manager
        images, target = self._load()
        images = digits_to_uint8(images)[..., None]
        target = np.asarray(target, np.int64)
        idx = split_indices(len(images))
        return {s: self._generate_examples(images[i], target[i], i) for s, i in idx.items()}

    def _generate_examples(self, images, labels, ids):
        for image, label, key in zip(images, labels, ids):
            yield int(key), {"image": image, "label": int(label)}
