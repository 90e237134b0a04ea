"""MOSES molecules as SMILES strings.

Source: ``moses/dataset/data/{train,test}.csv.gz`` inside the ``molsets==0.3.1`` wheel
(downloaded, never installed; see :mod:`jaxflows.data.sources`): gzip CSV files with the single
column ``SMILES`` (train 1,584,663 rows, test 176,074).

Splits (feature ``smiles``, Text):

- ``test``: the MOSES test file, 176,074 molecules, in file order;
- ``validation``: 10,000 rows of the MOSES train file chosen by a fixed-seed permutation
  (``numpy.random.default_rng(0).permutation(n_train)[:10000]``), in file order;
- ``train``: the other 1,574,663 rows of the MOSES train file, in file order.

So ``train + validation`` is exactly the MOSES training set; use both for a paper-exact setup.
"""

from __future__ import annotations

import gzip
import io
import os

import numpy as np
import tensorflow_datasets as tfds

from jaxflows.data import sources
from jaxflows.data.builders._base import OfflineBuilder

WHEEL = ("molsets", "0.3.1")
MEMBERS = {"train": "moses/dataset/data/train.csv.gz", "test": "moses/dataset/data/test.csv.gz"}
ENV_VAR = "JAXFLOWS_MOSES_DIR"
VALIDATION_SEED = 0
NUM_VALIDATION = 10000
SPLIT_SIZES = {"train": 1574663, "validation": 10000, "test": 176074}


def read_smiles_csv(fileobj) -> list[str]:
    """SMILES strings of a gzip CSV with header ``SMILES`` (one column), in file order."""
    with gzip.GzipFile(fileobj=fileobj) as gz:
        text = io.TextIOWrapper(gz, encoding="utf-8")
        header = text.readline().strip()
        if header.split(",")[0] != "SMILES":
            raise ValueError(f"expected a SMILES column header, got {header!r}")
        return [line.split(",", 1)[0].strip() for line in text if line.strip()]


def validation_indices(n_train: int, num_validation: int = NUM_VALIDATION) -> np.ndarray:
    """Sorted row indices of the MOSES train file that form the ``validation`` split.

    At most half of the rows go to validation (relevant only for tiny fixture files).
    """
    k = min(num_validation, n_train // 2)
    return np.sort(np.random.default_rng(VALIDATION_SEED).permutation(n_train)[:k])


class JaxflowsMoses(OfflineBuilder, skip_registration=True):
    """MOSES SMILES: feature ``smiles`` (Text); splits train / validation / test.

    ``source_path`` (or ``$JAXFLOWS_MOSES_DIR``) may name a folder with ``train.csv.gz`` and
    ``test.csv.gz`` to use instead of the wheel's copies.
    """

    name = "jaxflows_moses"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "MOSES csv of molsets 0.3.1; validation carved from train."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict({"smiles": tfds.features.Text()}),
            disable_shuffling=True,
        )

    def _read(self, split: str) -> list[str]:
        folder = self._source_path or os.environ.get(ENV_VAR)
        path = os.path.join(folder, os.path.basename(MEMBERS[split])) if folder else None
        f = sources.open_source(
            source_path=path, env_var=None, package=WHEEL[0], version=WHEEL[1],
            member=MEMBERS[split], cache_dir=self._wheel_dir,
        )
        with f:
            return read_smiles_csv(f)

    def _split_generators(self, dl_manager):
        del dl_manager
        train = self._read("train")
        test = self._read("test")
        val_idx = validation_indices(len(train))
        is_val = np.zeros(len(train), bool)
        is_val[val_idx] = True
        return {
            "train": self._generate_examples(train, np.flatnonzero(~is_val)),
            "validation": self._generate_examples(train, val_idx),
            "test": self._generate_examples(test, np.arange(len(test))),
        }

    def _generate_examples(self, smiles, rows):
        for key, row in enumerate(rows.tolist()):
            yield key, {"smiles": smiles[row]}
