"""Safe workdirs: a resume under a changed config fails before anything is written, a longer
schedule resumes, one process per workdir (live holder named, stale lock taken over)."""

import json
import os
import subprocess
import sys

import pytest
from helpers import HERE, REPO, TOY, cli_env, run_cli, train_cmd

from jaxflows.errors import UserError
from jaxflows.train import load_config, train
from jaxflows.train.workdir import WorkdirLock, config_differences

SHORT = ("--config.train.num_steps=10", "--config.train.eval_every_epochs=0",
         "--config.train.log_every_steps=5")


def _config(data_dir, *extra):
    return load_config(f"{TOY}:default", [*SHORT, f"--config.data.data_dir={data_dir}", *extra])


def _snapshot(wd):
    return {os.path.relpath(os.path.join(d, f), wd): os.path.getmtime(os.path.join(d, f))
            for d, _, files in os.walk(wd) for f in files if f != ".lock"}


def test_changed_config_fails_before_writing_and_longer_schedule_resumes(tmp_path, data_dir):
    wd = str(tmp_path / "w")
    train(_config(data_dir), wd, final_eval=False)
    before = _snapshot(wd)
    saved = open(os.path.join(wd, "config.json")).read()
    with pytest.raises(UserError) as e:
        train(_config(data_dir, "--config.model.hidden=16", "--config.optim.learning_rate=0.1"),
              wd, final_eval=False)
    msg = str(e.value)
    assert "model.hidden: 32 -> 16" in msg and "optim.learning_rate" in msg
    assert "\n" not in msg
    assert _snapshot(wd) == before and open(os.path.join(wd, "config.json")).read() == saved
    # a longer schedule (and logging) may change: it resumes at step 10 and ends at 16
    out = train(_config(data_dir, "--config.train.num_steps=16",
                        "--config.train.log_every_steps=2"), wd, final_eval=False)
    assert out["epochs"] == pytest.approx(16 / (1397 // 64))
    rows = [json.loads(ln) for ln in open(os.path.join(wd, "metrics.jsonl"))]
    assert [r["step"] for r in rows if "loss" in r][-3:] == [12, 14, 16]


def test_resumable_keys():
    a = {"train": {"num_epochs": 10, "batch_size": 64}, "mesh": {"data": -1}, "model": {"w": 1}}
    b = {"train": {"num_epochs": 38, "batch_size": 64}, "mesh": {"data": 8}, "model": {"w": 1}}
    assert config_differences(a, b) == []
    b["train"]["batch_size"] = 32
    assert config_differences(a, b) == [("train.batch_size", 64, 32)]
    # a tuple and a JSON list are the same value
    assert config_differences({"data": {"transforms": ("x",)}}, {"data": {"transforms": ["x"]}}) \
        == []


def test_second_train_on_a_workdir_in_use_names_the_holder(tmp_path, data_dir):
    wd = tmp_path / "busy"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from jaxflows.train.workdir import WorkdirLock; "
         f"lock = WorkdirLock({str(wd)!r}).acquire(); print('locked', flush=True); "
         "sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, HERE])))
    try:
        assert holder.stdout.readline().strip() == "locked"
        out = run_cli(train_cmd(str(wd), "default", *SHORT), cli_env(data_dir))
        assert out.returncode == 2 and "Traceback" not in out.stderr
        line = out.stderr.strip().splitlines()[-1]
        assert f"is in use by pid {holder.pid}" in line
        assert not os.path.exists(wd / "config.json")
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    # the holder is gone: its lock file stays behind, stale, and is taken over
    assert str(holder.pid) in (wd / ".lock").read_text()
    with WorkdirLock(str(wd)) as lock:
        assert lock.holder() == f"pid {os.getpid()} on {os.uname().nodename}"
    # a lock held in this process blocks a second acquisition too
    with WorkdirLock(str(wd)), pytest.raises(UserError, match=f"pid {os.getpid()}"):
        WorkdirLock(str(wd)).acquire()


def test_workdir_that_is_a_file(tmp_path, data_dir):
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(UserError, match="is a file"):
        train(_config(data_dir), str(f), final_eval=False)
