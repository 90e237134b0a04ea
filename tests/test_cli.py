"""The `jaxflows` command: help, one-line errors with hints, data prepare, info, table."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = os.path.join(REPO, "tests", "train", "toy_config.py")


def _cli(*args, data_dir=None, devices=1):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               PYTHONPATH=os.pathsep.join([REPO, os.path.dirname(TOY)]))  # the toy task module
    if data_dir:
        env["JAXFLOWS_DATA_DIR"] = str(data_dir)
    return subprocess.run([sys.executable, "-m", "jaxflows.cli", *args], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=300)


def _one_error_line(out):
    lines = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    return lines[-1]


def test_help_lists_commands():
    out = _cli("--help")
    assert out.returncode == 0
    for cmd in ("data", "train", "eval", "sample", "info", "table"):
        assert cmd in out.stdout


def test_unknown_command_is_one_clear_line():
    line = _one_error_line(_cli("frobnicate"))
    assert "invalid choice: 'frobnicate'" in line


def test_unknown_config_key_and_row(tmp_path):
    line = _one_error_line(_cli("train", "--config", f"{TOY}:default", "--workdir",
                                str(tmp_path / "w"), "--config.optim.learnig_rate=1"))
    assert line.startswith("error: unknown config key 'optim.learnig_rate'")
    assert "optim.learning_rate" in line
    line = _one_error_line(_cli("info", "--config", "experiments/configs/vae_mnist.py:nope"))
    assert "unknown row 'nope'" in line and "ccliniaf_k5" in line


def test_missing_dataset_names_the_prepare_command(tmp_path):
    line = _one_error_line(_cli("train", "--config", f"{TOY}:default", "--workdir",
                                str(tmp_path / "w"), "--config.data.name=mnist",
                                data_dir=tmp_path / "empty"))
    assert "dataset mnist is not prepared" in line
    assert "jaxflows data prepare mnist" in line
    assert not os.path.exists(tmp_path / "w")  # nothing written, not even the lock


def test_train_says_what_it_starts(tmp_path):
    out = _cli("train", "--config", f"{TOY}:default", "--workdir", str(tmp_path / "w"),
               "--config.train.num_steps=3", "--no_eval", data_dir=tmp_path / "d")
    assert out.returncode == 0, out.stderr
    first = out.stderr.strip().splitlines()[0]
    assert first.startswith(f"jaxflows train: {TOY}:default, 3 steps, in {tmp_path / 'w'}")


def test_token_dataset_not_prepared_names_the_prepare_command(tmp_path):
    """A config whose data transforms need the prepared metadata (pad_tokens' max_length)."""
    line = _one_error_line(_cli("info", "--config", "experiments/configs/seqflow_moses.py:paper",
                                "--no_compile", data_dir=tmp_path / "empty"))
    assert "dataset moses_selfies is not prepared" in line and "pad_tokens" in line
    assert "jaxflows data prepare moses_selfies" in line


def test_data_prepare_from_a_local_source(tmp_path):
    """`data prepare moses_selfies --source DIR` builds from your own SMILES files (what the
    seqflow_moses smoke row needs without the registry wheel); --source on embedded data or a
    missing path is a one-line error."""
    import gzip

    raw = tmp_path / "raw"
    raw.mkdir()
    for split, smiles in {"train": [f"C{'C' * i}O" for i in range(12)],
                          "test": [f"N{'C' * i}C(=O)O" for i in range(4)]}.items():
        # the test molecules' tokens (N, =O) are not in the training vocabulary: all dropped
        with gzip.open(raw / f"{split}.csv.gz", "wt") as f:
            f.write("SMILES\n" + "\n".join(smiles) + "\n")
    line = _one_error_line(_cli("data", "prepare", "moses_selfies", "--source", str(raw),
                                "--data_dir", str(tmp_path / "bad")))
    assert "no molecule of the test split is left" in line
    for split, smiles in {"train": [f"C{'C' * i}O" for i in range(12)]
                          + [f"N{'C' * i}C(=O)O" for i in range(8)],
                          "test": [f"N{'C' * i}C(=O)O" for i in range(4)]}.items():
        with gzip.open(raw / f"{split}.csv.gz", "wt") as f:
            f.write("SMILES\n" + "\n".join(smiles) + "\n")
    out = _cli("data", "prepare", "moses_selfies", "--source", str(raw), "--data_dir",
               str(tmp_path / "d"))
    assert out.returncode == 0, out.stderr
    assert "moses_selfies: train" in out.stdout and "max_length" in out.stdout
    line = _one_error_line(_cli("data", "prepare", "digits", "--source", str(raw),
                                "--data_dir", str(tmp_path / "d")))
    assert "--source applies to a downloaded dataset" in line
    line = _one_error_line(_cli("data", "prepare", "mnist", "--source", str(tmp_path / "no"),
                                "--data_dir", str(tmp_path / "d")))
    assert "no such file or folder" in line


def test_embedded_digits_prepare_themselves_on_first_use(tmp_path):
    out = _cli("info", "--config", f"{TOY}:default", "--no_compile", data_dir=tmp_path / "fresh")
    assert out.returncode == 0, out.stderr
    assert os.path.isdir(tmp_path / "fresh" / "jaxflows_digits")
    assert "example: image uint8[8, 8, 1], label int32[]" in out.stdout


def test_data_prepare_digits_and_info(tmp_path):
    out = _cli("data", "prepare", "digits", "--data_dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "digits: train 1397, validation 200, test 200" in out.stdout
    out = _cli("info", "--config", f"{TOY}:default", data_dir=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    params = [ln for ln in lines if ln.startswith("params: ")]
    # toy MLP: 64*32+32 + 32*32+32 + 32*10+10
    assert params == [f"params: {64 * 32 + 32 + 32 * 32 + 32 + 32 * 10 + 10}"]
    assert any(ln.startswith("flops_per_example: ") for ln in lines)
    assert any(ln.startswith("peak_bytes_per_device: ") for ln in lines)


def test_table_renders_results(tmp_path):
    results = {"command": "python x.py", "git_commit": "abc", "machine": "cpu",
               "rows": [{"name": "vae", "test_nll": 90.5, "curve": [1, 2]}]}
    (tmp_path / "demo.json").write_text(json.dumps(results))
    out = _cli("table", "demo", "--results_dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "| name | test_nll |" in out.stdout and "| vae | 90.50 |" in out.stdout
    assert "`python x.py`" in out.stdout
    line = _one_error_line(_cli("table", "nope", "--results_dir", str(tmp_path)))
    assert "no results file" in line and "demo" in line


def test_table_finds_the_repository_results_from_any_directory(tmp_path, monkeypatch):
    from jaxflows.eval.tables import default_results_dir, render_table

    monkeypatch.chdir(tmp_path)
    found = default_results_dir()
    assert os.path.isabs(found) and os.path.isfile(os.path.join(found, "vae_mnist.json"))
    assert render_table("vae_mnist").startswith("### ")


@pytest.mark.parametrize("sub", ["eval", "sample"])
def test_eval_and_sample_need_a_trained_workdir(tmp_path, sub):
    extra = ["--out", str(tmp_path / "x.png")] if sub == "sample" else []
    line = _one_error_line(_cli(sub, "--workdir", str(tmp_path / "none"), *extra))
    assert "has no config.json" in line


def test_info_matches_official_tarflow_size_without_the_dataset(tmp_path):
    out = _cli("info", "--config", "experiments/configs/tarflow_imagenet64.py:uncond",
               "--no_compile", data_dir=tmp_path)
    assert out.returncode == 0, out.stderr
    params = int(next(ln for ln in out.stdout.splitlines() if ln.startswith("params: "))[8:])
    assert abs(params - 460e6) / 460e6 < 0.01  # official 2-768-8-8 ImageNet-64: about 460M


def test_cpu_devices_splits_the_cpu_for_data_parallel_runs(tmp_path):
    """``--cpu_devices N`` gives jax N CPU devices before it starts (it wins over the XLA flag
    the test sets), so ``mesh.data = -1`` becomes N; bad counts are one clear line."""
    out = _cli("info", "--config", f"{TOY}:default", "--no_compile", "--cpu_devices", "2",
               data_dir=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "'data': 2" in out.stdout, out.stdout
    out = _cli("info", "--config", f"{TOY}:default", "--no_compile", data_dir=tmp_path)
    assert "'data': 1" in out.stdout, out.stdout
    line = _one_error_line(_cli("info", "--config", f"{TOY}:default", "--no_compile",
                                "--cpu_devices", "0", data_dir=tmp_path))
    assert line == "error: cpu_devices must be >= 1, got 0"
