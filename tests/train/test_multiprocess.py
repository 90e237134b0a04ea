"""A real 2-process run on localhost (4 fake CPU devices each, gloo collectives) gives the same
final loss as a 1-device run of the same config and seed."""

import os
import socket
import subprocess

import numpy as np
import pytest
from helpers import cli_env, final_loss, prepare_digits, run_cli, train_cmd


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.multiprocess
def test_two_processes_match_one_device(tmp_path):
    data_dir = str(tmp_path / "data")
    prepare_digits(data_dir)
    single = str(tmp_path / "single")
    out = run_cli(train_cmd(single, "default", "--no_eval", "--config.mesh.data=1"),
                  cli_env(data_dir, devices=1))
    assert out.returncode == 0, out.stderr[-3000:]

    multi = str(tmp_path / "multi")
    port = _free_port()
    env = cli_env(data_dir, devices=4)
    procs = [subprocess.Popen(
        train_cmd(multi, "default", "--no_eval", "--coordinator_address", f"127.0.0.1:{port}",
                  "--num_processes", "2", "--process_id", str(i)),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert os.path.exists(os.path.join(multi, "metrics.jsonl"))
    np.testing.assert_allclose(final_loss(multi), final_loss(single), rtol=1e-5)
