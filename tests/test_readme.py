"""The README's Python examples run as written (each block in a fresh namespace). A block that
reads a trained workdir (a ``"runs/...`` path) is skipped: it needs `jaxflows train` first."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
RUNNABLE = [b for b in BLOCKS if '"runs/' not in b]


def test_the_readme_has_runnable_examples():
    assert len(RUNNABLE) >= 4 and len(BLOCKS) > len(RUNNABLE)


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.splitlines()[-1][:40] for b in RUNNABLE])
def test_readme_example_runs(block):
    exec(compile(block, str(README), "exec"), {"__name__": "readme_example"})
