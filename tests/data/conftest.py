"""Fixtures for the data tests: small raw files in the formats of the wheels' files."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import zipfile

import numpy as np
import pytest


def _mnist_split(rng, n: int):
    k = rng.integers(0, 256, size=(n, 784))
    x = (k / 256.0).astype(np.float32)  # the pickle's pixels are exactly k / 256
    y = rng.integers(0, 10, size=n).astype(np.int64)
    return x, y


@pytest.fixture
def mnist_tuple():
    """A small (train, valid, test) tuple like mnist.pkl.gz's: 40 / 12 / 10 examples."""
    rng = np.random.default_rng(0)
    return tuple(_mnist_split(rng, n) for n in (40, 12, 10))


def gzip_pickle_bytes(obj) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb") as gz:
        pickle.dump(obj, gz, protocol=2)
    return buf.getvalue()


@pytest.fixture
def gzip_pickle():
    """``gzip_pickle(obj) -> bytes`` of a gzip pickle (mnist.pkl.gz's format)."""
    return gzip_pickle_bytes


@pytest.fixture
def mnist_pkl(tmp_path, mnist_tuple):
    """Path of a small gzip pickle in mnist.pkl.gz's format."""
    path = tmp_path / "raw" / "mnist.pkl.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip_pickle_bytes(mnist_tuple))
    return str(path)


def smiles_csv_gz_bytes(smiles: list[str]) -> bytes:
    return gzip.compress(("SMILES\n" + "".join(s + "\n" for s in smiles)).encode())


@pytest.fixture
def smiles_csv_gz():
    """``smiles_csv_gz(list_of_smiles) -> bytes`` of a MOSES-style gzip CSV."""
    return smiles_csv_gz_bytes


def write_moses_folder(folder, smiles_by_split) -> str:
    """Writes ``{split}.csv.gz`` files in the MOSES format into a new ``folder``; its path."""
    folder.mkdir()
    for split, smiles in smiles_by_split.items():
        (folder / f"{split}.csv.gz").write_bytes(smiles_csv_gz_bytes(smiles))
    return str(folder)


@pytest.fixture
def moses_smiles():
    """Small train / test SMILES lists (30 / 7 molecules, all distinct)."""
    train = [f"C{'C' * i}O" for i in range(30)]
    test = [f"N{'C' * i}N" for i in range(7)]
    return {"train": train, "test": test}


@pytest.fixture
def moses_dir(tmp_path, moses_smiles):
    """A folder with train.csv.gz / test.csv.gz in the MOSES format."""
    return write_moses_folder(tmp_path / "raw_moses", moses_smiles)


@pytest.fixture
def make_wheel():
    """``make_wheel(path, {member: bytes})`` writes a fake wheel (a zip) and returns its path."""

    def make(path, members: dict[str, bytes]) -> str:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with zipfile.ZipFile(path, "w") as zf:
            for name, data in members.items():
                zf.writestr(name, data)
            zf.writestr("fake-0.0.dist-info/METADATA", "Name: fake\n")
        return str(path)

    return make


@pytest.fixture
def no_download(monkeypatch):
    """Fail the test if anything tries to run pip."""
    import subprocess

    def boom(*args, **kwargs):
        raise AssertionError(f"unexpected subprocess call: {args}")

    monkeypatch.setattr(subprocess, "run", boom)


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    """A data dir with the (real, bundled) digits dataset prepared once per session."""
    from jaxflows.data import prepare

    data_dir = str(tmp_path_factory.mktemp("digits_data"))
    prepare("digits", data_dir)
    return data_dir


class ArraySource:
    """A minimal in-memory source: ``image`` uint8 [2, 2, 1] encoding the index, ``label``."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        i = int(i)
        if not 0 <= i < self.n:
            raise IndexError(i)
        return {
            "image": np.full((2, 2, 1), i % 256, np.uint8),
            "label": i,  # labels carry the record index
        }


@pytest.fixture
def array_source():
    return ArraySource


# --- SELFIES fixtures (moses_selfies) --------------------------------------------------------

#: valid drug-like SMILES without Se or I atoms
SELFIES_GOOD = [
    "CC(=O)Oc1ccccc1C(=O)O", "Cn1cnc2c1c(=O)n(C)c(=O)n2C", "CC(C)Cc1ccc(C(C)C(=O)O)cc1",
    "c1ccccc1", "CCO", "CCN(CC)CC", "O=C(O)c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "C1CCCCC1",
    "c1ccncc1", "CCCCCCCC", "ClCCl", "FC(F)(F)c1ccccc1", "CC(C)(C)OC(N)=O", "OC1CCCC1",
    "N#CC", "C/C=C/C", "NC(=O)c1cccnc1", "Brc1ccccc1", "COc1ccccc1", "CS(C)(=O)=O",
    "C[C@H](N)C(=O)O", "OCC(O)CO", "CC1=CC(=O)CCC1", "O=C1NC(=O)c2ccccc21", "c1ccc2ccccc2c1",
]
SELFIES_UNPARSEABLE = "C1CC"  # unclosed ring: RDKit cannot parse it
SELFIES_UNENCODABLE = "FI(F)F"  # RDKit accepts hypervalent iodine, selfies' constraints do not
SELFIES_NEW_TOKEN = "[Se]c1ccccc1"  # the only molecule with a [Se] token


@pytest.fixture
def selfies_smiles():
    """Raw MOSES-format train / test SMILES lists for ``moses_selfies``: 30 train rows (15 of
    them become ``validation``) with one unparseable and one unencodable molecule in the
    training rows and the only ``[Se]`` molecule in a validation row; 6 test rows with one
    unparseable and one ``[Se]`` molecule."""
    from jaxflows.data.builders.moses import validation_indices

    n = 30
    val = set(validation_indices(n).tolist())
    train_rows = [i for i in range(n) if i not in val]
    train = [SELFIES_GOOD[i % len(SELFIES_GOOD)] for i in range(n)]
    train[train_rows[0]] = SELFIES_UNPARSEABLE
    train[train_rows[1]] = SELFIES_UNENCODABLE
    train[min(val)] = SELFIES_NEW_TOKEN
    test = ["CCO", SELFIES_UNPARSEABLE, SELFIES_NEW_TOKEN, "c1ccccc1", "CC(=O)Nc1ccc(O)cc1",
            "CCCCCCCCCCCC"]
    return {"train": train, "test": test}


@pytest.fixture
def selfies_moses_dir(tmp_path, selfies_smiles):
    """A folder with train.csv.gz / test.csv.gz holding :func:`selfies_smiles`."""
    return write_moses_folder(tmp_path / "raw_moses_selfies", selfies_smiles)
