"""Shared helpers for engine tests: a prepared digits data dir and run launchers."""

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TOY = os.path.join(HERE, "toy_config.py")
REPO = os.path.dirname(os.path.dirname(HERE))


def prepare_digits(data_dir: str) -> None:
    from jaxflows.data.registry import prepare

    prepare("digits", data_dir)


def final_loss(workdir: str) -> float:
    """The last logged training loss of a run."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(ln) for ln in f if ln.strip()]
    return [r["loss"] for r in rows if "loss" in r][-1]


def losses(workdir: str) -> list[tuple[int, float]]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(ln) for ln in f if ln.strip()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def cli_env(data_dir: str, devices: int = 1) -> dict:
    env = dict(os.environ)
    env["JAXFLOWS_DATA_DIR"] = data_dir
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([REPO, HERE, env.get("PYTHONPATH", "")])
    return env


def train_cmd(workdir: str, row: str = "default", *extra: str) -> list[str]:
    return [sys.executable, "-m", "jaxflows.cli", "train", "--config", f"{TOY}:{row}",
            "--workdir", workdir, *extra]


def run_cli(args: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=REPO)
