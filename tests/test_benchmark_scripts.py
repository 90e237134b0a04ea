"""Every benchmark script refuses to run on a loaded machine (one line, nothing written), and
``benchmarks/vae.py`` measures its FLOP fractions on a tiny run (``--force``)."""

import json
import os

import pytest

#: script -> a minimal argv (``--out`` is added when the script takes one)
SCRIPTS = {"bijectors": [], "chem": [], "engine": [], "tarflow": [], "vae": [],
           "tarflow_vs_official": ["--official", "NOWHERE", "--torch_python", "python"]}


def test_load_refusal_is_one_line(load_repo_module):
    machine_load = load_repo_module("benchmarks/machine_load.py")
    msg = machine_load.load_refusal("vae", 3.57, 1.0, force=False)
    assert msg is not None and "\n" not in msg and msg.startswith("vae: refusing")
    assert "3.57" in msg and "--force" in msg
    assert machine_load.load_refusal("vae", 3.57, 1.0, force=True) is None
    assert machine_load.load_refusal("vae", 0.4, 1.0, force=False) is None


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_every_benchmark_refuses_on_a_loaded_machine(name, load_repo_module, monkeypatch,
                                                     tmp_path):
    module = load_repo_module(f"benchmarks/{name}.py")
    monkeypatch.setattr(os, "getloadavg", lambda: (4.2, 4.0, 4.0))
    out = tmp_path / "r.json"
    with pytest.raises(SystemExit) as e:
        module.main(SCRIPTS[name] + ["--out", str(out)])
    assert f"{name}: refusing to run" in str(e.value) and "4.20" in str(e.value)
    assert not out.exists()


def test_vae_benchmark_reports_fractions_of_the_peak(load_repo_module, tmp_path):
    vae = load_repo_module("benchmarks/vae.py")
    out = tmp_path / "vae.json"
    record = vae.main(["--rows", "smoke", "--steps", "2", "--eval_images", "8",
                       "--eval_batch", "4", "--is_chunks", "5,10", "--is_fusions", "off,on",
                       "--num_is_samples", "10",
                       "--force", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["command"].startswith("python benchmarks/vae.py --rows smoke")
    assert saved["matmul_peak_flops_per_s"] == max(saved["matmul_peaks_start_end"]) > 0
    (row,) = saved["results"]
    assert row["train_flops_per_step"] > 0
    assert row["train_fraction_of_peak"] == pytest.approx(
        row["train_flops_per_s"] / saved["matmul_peak_flops_per_s"])
    assert [(e["is_chunk"], e["cpu_library_fusions"]) for e in row["is_nll"]] == [
        (5, "off"), (5, "on"), (10, "off"), (10, "on")]
    small, small_on, big, _ = row["is_nll"]
    assert small_on["is_flops_per_call"] == small["is_flops_per_call"]
    # the same samples per image; the encoder runs once per chunk, so fewer chunks cost less
    assert 0 < big["is_flops_per_call"] < small["is_flops_per_call"]
    assert small["is_calls"] == 2 and small["eval_images"] == 8
    assert not small["test_set_measured"] and small["test_set_eval_s"] > 0
    assert "of peak" in record["table_markdown"]
