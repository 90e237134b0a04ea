"""A task defined outside jaxflows (tests/train/toy_task.py, on PYTHONPATH) trains, evaluates,
samples and plots through the CLI by module path; sampling options are the task's own."""

import json
import os
import sys

import pytest
from helpers import cli_env, run_cli, train_cmd

from jaxflows.cli import main

SHORT = ("--config.train.num_steps=12", "--config.train.eval_every_epochs=0.25",
         "--config.train.log_every_steps=4")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    wd = str(tmp_path_factory.mktemp("runs") / "toy")
    out = run_cli(train_cmd(wd, "default", *SHORT), cli_env(data_dir))
    assert out.returncode == 0, out.stderr
    return wd


def _error_line(out):
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    return out.stderr.strip().splitlines()[-1]


def test_train_eval_by_module_path(trained, data_dir):
    saved = json.load(open(os.path.join(trained, "config.json")))
    assert saved["model"]["name"] == "toy_task"
    assert os.path.getsize(os.path.join(trained, "curves.png")) > 1000  # written at each eval
    out = _cli("eval", "--workdir", trained, data_dir=data_dir)
    assert out.returncode == 0, out.stderr
    assert json.load(open(os.path.join(trained, "eval.json")))["split"] == "test"


def _cli(*args, data_dir):
    return run_cli([sys.executable, "-m", "jaxflows.cli", *args], cli_env(data_dir))


def test_sample_with_task_options_and_misuse(trained, data_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("JAXFLOWS_DATA_DIR", data_dir)  # the in-process calls read this data dir
    out_file = tmp_path / "labels.txt"
    out = _cli("sample", "--workdir", trained, "--num", "16", "--out", str(out_file),
               "--config.sample.temperature=0.5", data_dir=data_dir)
    assert out.returncode == 0, out.stderr
    labels = out_file.read_text().split()
    assert len(labels) == 16 and all(0 <= int(x) < 10 for x in labels)

    def error_line(*args):  # in-process: the same main() the console script runs
        assert main(["sample", "--workdir", trained, "--out", str(out_file), *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ")
        return err[0]

    line = error_line("--num", "4", "--class", "3")
    assert "task toy_task has no sample option 'class_label'" in line and "temperature" in line
    line = error_line("--num", "4", "--config.sample.temperature=hot")
    assert "sample.temperature expects a float" in line
    for num in ("0", "-3"):
        assert "--num must be a positive number" in error_line("--num", num)


def test_plot_overlays_runs(trained, data_dir, tmp_path):
    png = tmp_path / "both.png"
    out = _cli("plot", "--workdir", trained, trained, "--out", str(png), data_dir=data_dir)
    assert out.returncode == 0, out.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    line = _error_line(_cli("plot", "--workdir", str(tmp_path / "none"), data_dir=data_dir))
    assert "no metrics.jsonl" in line
