"""``experiments/starflow_sampling_cost.py``: FLOP counts of the sampling paths (tiny shapes)."""

import importlib.util
import pathlib

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "experiments/starflow_sampling_cost.py"


@pytest.fixture(scope="module")
def cost():
    spec = importlib.util.spec_from_file_location("starflow_sampling_cost", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tarflow_costs_scale_with_rows(cost):
    one, two = (cost.tarflow_costs((2, 1, 16, 8), b) for b in (4, 8))
    assert one["guided_blocks"] == 2 and one["params"] == two["params"] > 0
    # every cost is per row: twice the batch, twice the work (within XLA's bookkeeping)
    for key in ("sampling_flops", "denoise_flops"):
        assert two[key] == pytest.approx(2 * one[key], rel=0.02)
    # reverse mode costs more than the guided forward's half
    assert one["denoise_flops"] > one["sampling_flops"] / 2


def test_measured_speed_reads_the_flow_path(cost):
    results = {"speed": [
        {"model": "m", "path": "image", "batch": 16, "sampler": "sequential", "images_per_s": 1},
        {"model": "m", "path": "flow", "batch": 16, "sampler": "jacobi", "images_per_s": 2},
        {"model": "m", "path": "flow", "batch": 16, "sampler": "sequential", "images_per_s": 3},
    ]}
    assert cost.measured_speed(results, "m", 16) == 3.0
    assert cost.measured_speed(results, "m", 1000) is None
