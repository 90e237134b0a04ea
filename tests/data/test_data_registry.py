"""Registry: data dir, missing-dataset errors, dataset_info, in-memory and binarized sources."""

from __future__ import annotations

import os

import numpy as np
import pytest

from jaxflows.data import (
    FixedBinarizedSource,
    InMemorySource,
    dataset_info,
    default_data_dir,
    load_source,
    prepare_command,
)
from jaxflows.errors import DatasetNotPreparedError, UserError


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("JAXFLOWS_DATA_DIR", str(tmp_path / "d"))
    assert default_data_dir() == str(tmp_path / "d")
    monkeypatch.delenv("JAXFLOWS_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == str(tmp_path / "xdg" / "jaxflows" / "datasets")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_data_dir() == os.path.expanduser("~/.cache/jaxflows/datasets")


def test_missing_dataset_names_the_command(tmp_path, monkeypatch):
    other = str(tmp_path / "elsewhere")
    with pytest.raises(DatasetNotPreparedError) as e:
        load_source("mnist", "train", other)
    msg = str(e.value)
    assert f"dataset mnist is not prepared in {other}" in msg
    assert f"jaxflows data prepare mnist --data_dir {other}" in msg
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, UserError)
    # With the default data dir the hint has no --data_dir.
    monkeypatch.setenv("JAXFLOWS_DATA_DIR", other)
    with pytest.raises(DatasetNotPreparedError) as e:
        load_source("moses", "train")
    assert e.value.hint == "run `jaxflows data prepare moses`"
    assert not os.path.exists(other)  # asking does not create anything


def test_unknown_name_and_split(tmp_path, digits_dir):
    with pytest.raises(UserError, match="unknown dataset 'cifar99'.*digits, mnist, moses"):
        load_source("cifar99", "train", str(tmp_path))
    with pytest.raises(UserError, match="unknown dataset"):
        dataset_info("cifar99", str(tmp_path))
    with pytest.raises(UserError, match="no split 'dev'.*train, validation, test"):
        load_source("digits", "dev", digits_dir)


def test_dataset_info(tmp_path, digits_dir):
    info = dataset_info("mnist", str(tmp_path))
    spec = info.pop("element_spec")
    assert info == {
        "image_shape": (28, 28, 1), "num_classes": 10, "prepared": False, "metadata": {},
        "splits": {"train": 50000, "validation": 10000, "test": 10000},
    }
    assert {k: (v.shape, str(v.dtype)) for k, v in spec.items()} == {
        "image": ((28, 28, 1), "uint8"), "label": ((), "int32")}
    moses = dataset_info("moses", str(tmp_path))
    assert moses["image_shape"] is None and moses["splits"]["test"] == 176074
    assert moses["element_spec"] == {}  # SMILES text never enters a jitted step
    digits = dataset_info("digits", digits_dir)
    assert digits["prepared"] and digits["image_shape"] == (8, 8, 1)
    assert digits["splits"] == {"train": 1397, "validation": 200, "test": 200}


def test_prepared_tfds_dataset_by_tfds_name(digits_dir):
    """A dataset already in the data dir as TFDS ArrayRecord loads by its TFDS name."""
    src = load_source("jaxflows_digits", "test", digits_dir)
    ref = load_source("digits", "test", digits_dir)
    assert len(src) == 200
    np.testing.assert_array_equal(src[5]["image"], ref[5]["image"])
    assert dataset_info("jaxflows_digits", digits_dir)["image_shape"] == (8, 8, 1)


def test_in_memory_source(digits_dir):
    src = load_source("digits", "validation", digits_dir)
    mem = load_source("digits", "validation", digits_dir, in_memory=True)
    assert isinstance(mem, InMemorySource) and len(mem) == len(src)
    for i in (0, 77, 199):
        np.testing.assert_array_equal(mem[i]["image"], src[i]["image"])
        assert mem[i]["label"] == int(src[i]["label"])
    batch = mem.get_batch([3, 1])
    assert batch["image"].shape == (2, 8, 8, 1)
    np.testing.assert_array_equal(batch["image"][1], src[1]["image"])


def test_fixed_binarization(digits_dir):
    src = load_source("digits", "train", digits_dir)
    a = FixedBinarizedSource(src)
    b = FixedBinarizedSource(load_source("digits", "train", digits_dir))
    np.testing.assert_array_equal(a.images, b.images)  # deterministic across constructions
    assert set(np.unique(a.images).tolist()) <= {0, 255}
    assert a.images.dtype == np.uint8 and a.images.shape == (1397, 8, 8, 1)
    assert a[4]["label"] == int(src[4]["label"])
    c = FixedBinarizedSource(src, seed=1)
    assert (c.images != a.images).any()
    # Statistics: P(on) = image / 255, summed over all pixels (binomial SE).
    raw = InMemorySource(src).arrays["image"] / 255.0
    on = a.images.sum() / 255.0
    mean, se = raw.sum(), np.sqrt((raw * (1 - raw)).sum())
    assert abs(on - mean) < 5 * se
    # Pixels at 0 and 255 are deterministic.
    assert (a.images[raw == 0] == 0).all() and (a.images[raw == 1] == 255).all()


def test_fixed_binarization_of_in_memory_source(digits_dir):
    src = load_source("digits", "test", digits_dir)
    np.testing.assert_array_equal(
        FixedBinarizedSource(src).images, FixedBinarizedSource(InMemorySource(src)).images
    )


def test_prepare_command(digits_dir):
    lines = prepare_command("digits", digits_dir)
    assert lines[0] == "digits: train 1397, validation 200, test 200"
    assert digits_dir in lines[1]
