"""The NF-BO loop on a tiny random SeqFlow and a real Guacamol task (adip, the smoke row):
budget and history, compile-once, kill-and-resume bitwise, every method, the CLI."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

pytest.importorskip("rdkit")
pytest.importorskip("selfies")
pytest.importorskip("tinygp")

from jaxflows.bo.config import validate  # noqa: E402
from jaxflows.bo.loop import run_bo, select_training_set  # noqa: E402
from jaxflows.errors import ConfigError, UserError  # noqa: E402
from jaxflows.train.config_loader import apply_overrides, load_config_file  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPEC = os.path.join(ROOT, "experiments", "configs", "nfbo_guacamol.py") + ":smoke"


def smoke(*overrides: str):
    """The smoke row, 6 iterations at most, with ``KEY=VALUE`` overrides."""
    c = load_config_file(SPEC)
    c.progress_bar = False
    c.max_iterations = 6
    return apply_overrides(c, [f"--config.{o}" for o in overrides])


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """Six uninterrupted iterations of NF-BO (TACS on) on the smoke row."""
    workdir = str(tmp_path_factory.mktemp("bo") / "full")
    return workdir, run_bo(smoke(), workdir)


def test_driver_reads_iteration_times(full_run, load_repo_module):
    """experiments/nfbo_guacamol.py takes per-iteration times from the checkpoint's records:
    every iteration after the first of the process, with its phases."""
    workdir, summary = full_run
    t = load_repo_module("experiments/nfbo_guacamol.py").iteration_seconds(workdir)
    assert len(t["seconds"]) == summary["iterations"] - 1
    assert np.mean(t["seconds"]) == pytest.approx(summary["seconds_per_iteration_after_first"])
    assert {"finetune", "gp_fit", "thompson"} <= set(t["phases"])
    assert all(len(v) == len(t["seconds"]) for v in t["phases"].values())


def test_driver_archives_records_and_rebuilds_from_them(full_run, load_repo_module, tmp_path):
    """experiments/nfbo_guacamol.py keeps each finished run as a gzipped record; with the run
    directories gone, ``--collect_only`` rebuilds the same rows from the records alone, and
    records from a different pretrained SeqFlow are refused."""
    workdir, summary = full_run
    driver = load_repo_module("experiments/nfbo_guacamol.py")
    runs = tmp_path / "runs"
    shutil.copytree(workdir, runs / "smoke" / "adip" / "nfbo_s0")
    out = str(tmp_path / "res" / "table.json")
    argv = ["--setting", "smoke", "--tasks", "adip", "--methods", "nfbo", "--seeds", "0",
            "--runs_dir", str(runs), "--collect_only", "--out", out]
    assert driver.main(argv) == 0
    first = json.load(open(out))
    path = tmp_path / "res" / "table_runs" / "adip" / "nfbo_s0.json.gz"
    rec = driver.read_record(str(path))
    assert len(rec["history"]) == summary["calls"]
    assert rec["summary"]["model"]["fingerprint"] == first["seqflow_fingerprint"]
    assert len(first["seqflow_fingerprint"]) == 16
    shutil.rmtree(runs)
    assert driver.main(argv) == 0
    second = json.load(open(out))
    assert second["rows"] == first["rows"] and second["curves"] == first["curves"]
    # a second run record made from another SeqFlow: refused by name
    other = {**rec, "summary": {**rec["summary"], "seed": 1,
                                "model": {**rec["summary"]["model"], "fingerprint": "0" * 16}}}
    driver.write_record(str(path).replace("_s0", "_s1"), other)
    with pytest.raises(UserError, match="different pretrained SeqFlows"):
        driver.main([*argv[:7], "0,1", *argv[8:]])
    # nothing finished and no records: a message, no file
    assert driver.main([*argv[:-1], str(tmp_path / "none" / "t.json")]) == 1


def test_iteration_benchmark_times_a_copy(full_run, load_repo_module, capsys):
    """benchmarks/nfbo_iteration.py continues a copy of a run: timed iterations after a
    warm-up, no compilation after it, the run's own GP padding, the workdir untouched."""
    workdir, summary = full_run
    before = {n: os.path.getmtime(os.path.join(workdir, n)) for n in os.listdir(workdir)}
    bench = load_repo_module("benchmarks/nfbo_iteration.py")
    out = bench.main(["--workdirs", workdir, "--iterations", "2", "--warmup", "1",
                      "--extra_budget", "30", "--force"])
    row = out["rows"][0]
    assert row["from_iteration"] == summary["iterations"] and row["iterations"] == 2
    assert row["compiles_after_warmup"] == 0 and row["gp_padded_rows"] == 64
    assert row["seconds_per_iteration_median"] > 0
    assert {"finetune", "gp_fit", "thompson"} <= set(row["phase_seconds_median"])
    assert "| adip | nfbo | 0 |" in capsys.readouterr().out
    assert {n: os.path.getmtime(os.path.join(workdir, n)) for n in os.listdir(workdir)} == before


def _history(workdir):
    with open(os.path.join(workdir, "bo_history.jsonl")) as f:
        return [json.loads(line) for line in f]


def _arrays(workdir):
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ck:
        return jax.tree.map(np.asarray, ck.restore(os.path.join(workdir, "checkpoint",
                                                                "arrays")))


def test_run_respects_the_budget_and_writes_its_outputs(full_run):
    workdir, s = full_run
    cfg = smoke()
    hist = _history(workdir)
    assert s["iterations"] == 6 and 0 < s["calls"] <= cfg.budget
    assert len(hist) == s["calls"]
    assert [h["call"] for h in hist] == list(range(1, s["calls"] + 1))
    smiles = [h["smiles"] for h in hist]
    assert len(set(smiles)) == len(smiles)                     # unique new molecules only
    with open(os.path.join(workdir, "checkpoint", "state.json")) as f:
        initial = set(json.load(f)["smiles"][:s["initial"]["n"]])
    assert not initial & set(smiles)                          # never an initial molecule
    assert all(0 <= h["score"] <= 1 and 0 <= h["iteration"] < 6 for h in hist)
    assert s["final_best"] == pytest.approx(max(h["score"] for h in hist))
    for name in ("best.json", "best_so_far.png", "summary.json", "config.json"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0
    with open(os.path.join(workdir, "best.json")) as f:
        best = json.load(f)["best"]
    assert best[0]["score"] == pytest.approx(s["final_best"])
    assert s["finetunes"] >= 1 and s["method"] == "nfbo"


def test_nothing_compiles_after_the_first_iteration(full_run):
    _, s = full_run
    per = s["compile_counts"]["per_iteration"]
    assert len(per) == 6 and per[1:] == [0] * 5, per
    assert s["compile_counts"]["later_iterations"] == 0


def test_killed_and_resumed_run_is_bitwise_identical(full_run, tmp_path):
    full, _ = full_run
    part = str(tmp_path / "part")
    s1 = run_bo(smoke(), part, stop_after=3)
    assert s1["iterations"] == 3 and not s1["finished"]
    # a kill at a bad moment: history lines of an iteration never checkpointed, a half-written
    # temporary checkpoint, and the new checkpoint not yet renamed into place
    with open(os.path.join(part, "bo_history.jsonl"), "a") as f:
        f.write(json.dumps({"call": 999, "iteration": 3, "smiles": "C", "score": 0.5}) + "\n")
    os.replace(os.path.join(part, "checkpoint"), os.path.join(part, "checkpoint.old"))
    os.makedirs(os.path.join(part, "checkpoint.tmp", "arrays"))
    s2 = run_bo(smoke(), part)
    assert s2["iterations"] == 6
    with open(os.path.join(full, "bo_history.jsonl")) as a, \
            open(os.path.join(part, "bo_history.jsonl")) as b:
        assert a.read() == b.read()
    with open(os.path.join(full, "checkpoint", "state.json")) as a, \
            open(os.path.join(part, "checkpoint", "state.json")) as b:
        ma, mb = json.load(a), json.load(b)
    for key in ("iteration", "smiles", "y", "origin", "trust", "pending_train", "finetunes",
                "oracle", "gp"):
        assert ma[key] == mb[key], key
    ra, rb = _arrays(full), _arrays(part)
    la, lb = jax.tree.leaves(ra), jax.tree.leaves(rb)
    assert len(la) == len(lb) > 100
    for x, y in zip(la, lb, strict=True):                      # SeqFlow, Adam, GP, D_tr
        np.testing.assert_array_equal(x, y)
    assert not os.path.exists(os.path.join(part, "checkpoint.old"))


@pytest.mark.parametrize("method,extra", [
    ("random", ()),
    ("lsbo", ("gp.refit_every_iteration=false", "tr.rule=turbo")),   # the released GP, LOL-BO TR
    ("nfbo_no_tacs", ()),
])
def test_each_method_runs_to_its_budget(method, extra, tmp_path):
    workdir = str(tmp_path / method)
    s = run_bo(smoke(f"method={method}", "budget=15", *extra), workdir)
    assert s["finished"] and s["calls"] == 15                 # the last batch is cut
    assert len(_history(workdir)) == 15
    assert s["compile_counts"]["later_iterations"] == 0
    if method == "nfbo_no_tacs":
        assert s["finetunes"] >= 1
    else:
        assert s["finetunes"] == 0


def test_resume_refuses_a_different_config(full_run):
    workdir, _ = full_run
    with pytest.raises(UserError, match="seed"):
        run_bo(smoke("seed=5"), workdir)


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="method"):
        validate(smoke("method=bogus"))
    c = smoke()
    with c.unlocked():
        c.tr.rule = "nope"
    with pytest.raises(ConfigError, match="tr.rule"):
        validate(c)
    with pytest.raises(ConfigError, match="unknown config key"):
        smoke("budjet=3")


def test_training_set_is_top_k_and_recent():
    y = np.array([0.1, 0.9, 0.5, 0.9, 0.0, 0.2, 0.3])
    np.testing.assert_array_equal(select_training_set(y, 7, 2, 2), [1, 3, 5, 6])
    np.testing.assert_array_equal(select_training_set(y, 4, 10, 1), [0, 1, 2, 3])


def test_cli_bo_runs_and_reports(tmp_path, capsys):
    from jaxflows.cli import main

    workdir = str(tmp_path / "cli")
    args = ["bo", "--config", SPEC, "--workdir", workdir, "--config.progress_bar=false",
            "--config.budget=12"]
    assert main([*args, "--stop_after", "1"]) == 0
    out = capsys.readouterr().out
    assert "adip nfbo seed 0" in out and "wrote" in out
    assert main(args) == 0
    assert len(_history(workdir)) == 12
    assert main(["bo", "--config", SPEC, "--workdir", workdir, "--config.methd=x"]) == 2
    assert "unknown config key" in capsys.readouterr().err
    shutil.rmtree(workdir)


@pytest.mark.parametrize("reencode", [True, False])
def test_finetune_reencodes_the_training_set_only_when_asked(reencode, tmp_path):
    from jaxflows.bo.loop import BORun

    run = BORun(smoke(f"finetune.reencode={str(reencode).lower()}"), str(tmp_path / "w"))
    try:
        s = run.state
        s.pending_train = 0                      # a fine-tune is due
        n = s.n_tr
        before_z, before_p = s.tr_z[:n].copy(), jax.tree.leaves(s.flow_params)
        assert run._finetune(0) is not None and s.finetunes == 1
        changed = [not np.array_equal(a, b)
                   for a, b in zip(before_p, jax.tree.leaves(s.flow_params), strict=True)]
        assert any(changed)                      # the flow moved
        np.testing.assert_array_equal(
            s.tr_z[:n], run.ops.encode(s.flow_params, s.tokens[s.tr_idx[:n]]) if reencode
            else before_z)
        assert reencode != np.array_equal(s.tr_z[:n], before_z)
    finally:
        run.close()


def test_iteration_counts_decodes_equal_to_their_anchor(tmp_path):
    from jaxflows.bo.loop import BORun

    os.makedirs(tmp_path / "w")
    run = BORun(smoke("method=lsbo"), str(tmp_path / "w"))
    try:
        real = run.ops.decode

        def decode_the_anchors(params, z):        # every pick decodes to its own anchor
            a = anchors[-1].repeat(run.config.batch_per_anchor)
            return real(params, run.ops.encode(params, run.state.tokens[a]))

        anchors = []
        propose = run._propose

        def propose_and_keep_anchors(it):
            z, idx = propose(it)
            anchors.append(idx)
            return z, idx

        run._propose = propose_and_keep_anchors
        run.ops.decode = decode_the_anchors
        summary = run.run(stop_after=1)
        rec = run.state.records[-1]
        assert rec["same_as_anchor"] == rec["proposed"] == run.t_q and rec["new"] == 0
        assert summary["decodes_same_as_anchor"] == run.t_q
        run.ops.decode = real
        run.run(stop_after=1)
        rec = run.state.records[-1]
        assert 0 <= rec["same_as_anchor"] <= rec["proposed"] - rec["new"]
    finally:
        run.close()
