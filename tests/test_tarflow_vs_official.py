"""``benchmarks/tarflow_vs_official.py`` without torch: arguments, the load refusal, the data, and
the results JSON / Markdown table from a fake worker result (nothing is timed or compiled)."""

import ast
import json
import pathlib

import numpy as np
import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
REQUIRED = ["--official", "/somewhere/ml-tarflow", "--torch_python", "/somewhere/bin/python"]


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # engine_step, as when run as a script
    import tarflow_vs_official

    return tarflow_vs_official


def test_no_torch_import_in_the_benchmark_script():
    """torch lives only in the worker (run by another Python); the script never imports it."""
    for name in ("tarflow_vs_official.py",):
        tree = ast.parse((BENCHMARKS / name).read_text())
        mods = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names}
        mods |= {(n.module or "").split(".")[0] for n in ast.walk(tree)
                 if isinstance(n, ast.ImportFrom)}
        assert "torch" not in mods, name


def test_parse_args_defaults_and_lists(bench):
    a = bench.parse_args(REQUIRED)
    assert a.config_names == ["mnist", "small16"] and a.guidance_list == [0.0, 2.0]
    assert (a.rounds, a.max_load, a.force, a.dtype) == (2, 1.0, False, "float32")
    assert a.out.endswith("benchmarks/results/tarflow_vs_official.json")
    a = bench.parse_args(REQUIRED + ["--configs", "mnist", "--steps", "2", "--rounds", "1",
                                     "--sample_batch", "4", "--guidances", "0,1.5", "--force"])
    assert a.config_names == ["mnist"] and a.guidance_list == [0.0, 1.5] and a.force
    assert (a.steps, a.rounds, a.sample_batch) == (2, 1, 4)


def test_host_devices_option(bench):
    """``--host_devices N`` splits our batch over N XLA host devices (mesh.data = N); a
    process whose jax already runs with another device count is refused, not mis-measured."""
    import jax

    assert bench.parse_args(REQUIRED).host_devices == 1
    assert bench.parse_args(REQUIRED + ["--host_devices", "2"]).host_devices == 2
    assert bench.our_config(bench.CONFIGS["mnist"], "float32", 2).mesh.data == 2
    assert bench.our_config(bench.CONFIGS["small16"], "float32").mesh.data == 1
    n = jax.device_count()
    bench.set_host_devices(n)  # the count jax already has: nothing to do
    with pytest.raises(SystemExit, match="already running"):
        bench.set_host_devices(n + 1)


@pytest.mark.parametrize("extra", [["--configs", "cifar"], ["--guidances", "x"],
                                   ["--rounds", "0"], ["--warmup", "0"], ["--host_devices", "0"],
                                   ["--torch_device", "tpu"]])
def test_parse_args_rejects(bench, extra, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(REQUIRED + extra)
    with pytest.raises(SystemExit):
        bench.parse_args(["--official", "x"])  # --torch_python missing


def test_configs_match_the_brief(bench):
    m, s = bench.CONFIGS["mnist"], bench.CONFIGS["small16"]
    assert (m.size, m.image, m.num_classes, m.batch) == ("4-128-4-4", (28, 28, 1), 10, 256)
    assert (s.size, s.image, s.num_classes, s.batch) == ("2-256-4-2", (16, 16, 3), 0, 32)
    assert (m.num_tokens, m.token_dim, s.num_tokens, s.token_dim) == (49, 16, 64, 12)


def test_main_refuses_on_a_loaded_machine(bench, monkeypatch, tmp_path):
    monkeypatch.setattr(bench.os, "getloadavg", lambda: (4.2, 4.0, 4.0))

    def boom(*a, **k):
        raise AssertionError("nothing may run after the refusal")

    monkeypatch.setattr(bench, "run_worker", boom)
    out = tmp_path / "r.json"
    with pytest.raises(SystemExit) as e:
        bench.main(REQUIRED + ["--out", str(out)])
    assert "refusing" in str(e.value) and "4.20" in str(e.value)
    assert not out.exists()


def test_make_data_is_fixed_by_the_seed(bench):
    cfg = bench.CONFIGS["mnist"]
    a, b = bench.make_data(cfg, 4, 0), bench.make_data(cfg, 4, 0)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert a["images"].dtype == np.uint8 and a["images"].shape == (256, 28, 28, 1)
    assert a["labels"].min() >= 0 and a["labels"].max() < 10
    assert a["noise"].shape == (4, 49, 16) and a["noise"].dtype == np.float32
    assert not np.array_equal(bench.make_data(cfg, 4, 1)["images"], a["images"])


def test_worker_spec_and_output_parsing(bench):
    args = bench.parse_args(REQUIRED + ["--steps", "3"])
    spec = bench.worker_spec(bench.CONFIGS["small16"], args, "cpu")
    assert spec["lr"] == 1e-4 and spec["steps"] == 3 and spec["num_classes"] == 0
    assert spec["attn_temp"] == 0.5 and spec["guidances"] == [0.0, 2.0]
    json.dumps(spec)
    out = "noise\nRESULT {\"num_params\": 7}\n"
    assert bench.parse_worker_output(out) == {"num_params": 7}
    with pytest.raises(RuntimeError):
        bench.parse_worker_output("nothing")


def _side(ex_s, img_s):
    return {"train": {"examples_per_s": ex_s, "step_s_median": 1 / ex_s},
            "sampling": [{"guidance": 0.0, "images_per_s": img_s[0]},
                         {"guidance": 2.0, "images_per_s": img_s[1]}]}


def test_results_json_and_table_from_a_fake_worker(bench, tmp_path):
    rounds = []
    for i, (ours, off) in enumerate([((200.0, (20.0, 10.0)), (100.0, (2.0, 0.5))),
                                     ((300.0, (30.0, 12.0)), (100.0, (3.0, 0.5)))]):
        rec = {"round": i + 1, "first": "official" if i == 0 else "ours",
               "ours": _side(*ours), "official": _side(*off)}
        rec["ratio"] = bench.round_ratios(rec["ours"], rec["official"])
        rounds.append(rec)
    assert rounds[0]["ratio"] == {"train": 2.0, "sampling_g0": 10.0, "sampling_g2": 20.0}
    summary = bench.summarize(rounds)
    assert summary["ratio"]["train"] == 2.5 and summary["ours"]["train_examples_per_s"] == 250
    assert summary["official"]["sampling_g2_images_per_s"] == 0.5
    result = {
        "command": bench.recorded_command(REQUIRED + ["--out=/elsewhere/x.json"]),
        "git_commit": "abc", "torch": "9.9",
        "machine": {"jax": "0.0", "processor": "x86_64", "cpu_count": 2, "backend": "cpu",
                    "load_average_1m_at_start": 0.3, "load_average_1m_at_end": 0.5},
        "settings": {"guidances": [0.0, 2.0], "dtype": "float32", "sample_batch": 16,
                     "steps": 10, "sample_reps": 3},
        "official_settings": {"device": "cpu", "step": "eager step"},
        "configs": {"mnist": {"size": "4-128-4-4", "train_compile_s": 7.5,
                              "num_params": {"ours": 3227776, "official": 3227776},
                              "rounds": rounds, "summary": summary}},
    }
    # no path of this machine goes into the record
    assert "/somewhere" not in result["command"] and "/elsewhere" not in result["command"]
    assert "--official ML_TARFLOW_DIR" in result["command"]
    assert "--out x.json" in result["command"]
    table = bench.markdown(result)
    rows = [ln for ln in table.splitlines() if ln.startswith("| mnist")]
    assert len(rows) == 2 and "| 2.00 |" in rows[0] and "| 3.00 |" in rows[1]
    assert "**median**" in table and "**2.50**" in table
    assert "3,227,776 / 3,227,776" in table
    assert "7.5 s (target < 10 s: met)" in table
    assert "load average 0.30 at the start, 0.50 at the end" in table
    assert "host devices" not in table  # one device: the older layout
    two = bench.markdown({**result, "settings": {**result["settings"], "host_devices": 2}})
    assert "engine train step data parallel over 2 host devices" in two
    path = tmp_path / "sub" / "r.json"
    bench.write_results(str(path), {**result, "table": table})
    back = json.loads(path.read_text())
    assert back["configs"]["mnist"]["summary"]["ratio"]["train"] == 2.5
    assert back["table"] == table
