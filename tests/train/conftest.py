"""Fixtures shared by the engine tests."""

import pytest
from helpers import prepare_digits


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A digits dataset prepared once per test module (the embedded data, no download)."""
    d = str(tmp_path_factory.mktemp("data"))
    prepare_digits(d)
    return d
