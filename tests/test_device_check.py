"""``benchmarks/device_check.py --tiny`` runs on the CPU and writes the JSON it promises."""

import json
import pathlib

import numpy as np
import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow  # an end-to-end run of the script (about 20 s of CPU)
def test_device_check_tiny_writes_json(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # engine_step, as when run as a script
    import device_check

    device_check.main(["--tiny", "--out_dir", str(tmp_path)])
    files = list(tmp_path.glob("device_*.json"))
    assert [f.name for f in files] == ["device_cpu.json"]
    r = json.loads(files[0].read_text())
    assert r["device"] == "cpu" and r["tiny"] is True and r["jax"]
    for key in ("load_average_1m_at_start", "load_average_1m_at_end", "git_commit", "total_s"):
        assert key in r
    t = r["tarflow_train"]
    assert t["dtype"] == "bfloat16" and t["attention"] == "xla"
    assert t["step_s_median"] > 0 and t["compile_s"] > 0 and len(t["step_times_s"]) == 2
    assert 0 < t["mfu"] < 1 and 0 < t["mfu_analytic"] < 1
    # the cost-analysis model FLOPs (scanned layers counted in full) agree with the analytic count
    assert 0.8 < t["xla_flops_per_step"] / t["analytic_flops_per_step"] < 1.5
    assert np.isfinite(t["final_loss"])
    s = r["tarflow_sampling"]
    assert [x["guidance"] for x in s] == [0.0, 1.0]
    assert all(x["images_per_s"] > 0 and x["finite"] for x in s)
    v = r["vae_train"]
    assert v["step_s_median"] > 0 and v["xla_flops_per_step"] > 0 and v["mfu"] > 0
