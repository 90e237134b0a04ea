"""experiments/align_mnist.py: the k-NN NLL proxy, the Euler sampler, and ``--quick`` end to end
on the embedded 8 x 8 digits (the KL autoencoder, both targets and their priors, one aligned
autoencoder, the latent generators; the results JSON, its table and figure; a rerun reuses every
stage)."""

from __future__ import annotations

import json
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def script(load_repo_module):
    return load_repo_module("experiments/align_mnist.py")


def test_knn_nll_of_a_gaussian_is_its_entropy(script):
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(20_000, 4))
    queries = rng.normal(size=(2_000, 4))
    # the k-th neighbour radius, against brute force
    d = np.sqrt(((queries[:50, None, :] - ref[None]) ** 2).sum(-1))
    np.testing.assert_allclose(script.knn_log_radius(queries[:50], ref, 5),
                               np.log(np.sort(d, axis=1)[:, 4]), rtol=1e-10)
    out = script.knn_nll(queries, ref, 5)
    entropy = 0.5 * 4 * math.log(2 * math.pi * math.e)  # 5.675 nats
    assert abs(out["knn_nll"] - entropy) < 0.15
    # a distribution shifted away from the reference scores worse
    assert script.knn_nll(queries + 3.0, ref, 5)["knn_nll"] > entropy + 2.0


def test_euler_sampler_matches_the_task_sampler(script):
    from jaxflows.models.flow_matching import FlowMatchingTask
    from jaxflows.train.task import DataInfo

    config = script.flow_config(3, 100, width=16, blocks=1, freq=8, steps=10, batch=8, lr=1e-3,
                                seed=0, name="test")
    task = FlowMatchingTask(config, DataInfo({"x": jax.ShapeDtypeStruct((3,), jnp.float32)}, 100))
    params = nn.unbox(task.init(jax.random.key(0), {"x": jnp.zeros((2, 3))}))
    params = jax.tree.map(lambda a: a + 0.2 * jax.random.normal(jax.random.key(1), a.shape),
                          params)  # a non-zero field
    rng = jax.random.key(4)
    want = task.sample(params, rng, 16, solver="euler", steps=8)
    got = script.euler_sample(task.model, params, rng, 16, 8, chunk=8)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def _row(name, target, lam, fd, sem, psnr, **extra):
    return {"name": name, "autoencoder": "ae", "target": target, "lambda": lam, "fd_mnist": fd,
            "fd_mnist_sem": sem, "psnr": psnr, "rfd_mnist": fd / 50, **extra}


def test_analysis_names_the_best_aligned_row_and_its_noise(script):
    rows = [{"name": "kl", "autoencoder": "kl", "target": "none", "lambda": 0.0,
             "fd_mnist": 1.0, "psnr": 30.0},  # another architecture: not compared
            _row("none", "none", 0.0, 130.0, 3.0, 24.0),
            _row("semantic_0.001", "semantic", 0.001, 128.0, 4.0, 23.5),
            _row("semantic_0.01", "semantic", 0.01, 140.0, 1.0, 23.8),
            _row("lowlevel_0.001", "lowlevel", 0.001, 150.0, 1.0, 22.0),
            _row("lowlevel_0.01", "lowlevel", 0.01, 145.0, 1.0, 21.0)]
    out = script.analysis(rows)
    assert out["rows"] == ["none", "semantic_0.001", "semantic_0.01", "lowlevel_0.001",
                           "lowlevel_0.01"]
    assert out["best_aligned"] == "semantic_0.001"
    assert out["best_minus_none_fd"] == pytest.approx(-2.0)
    assert out["best_minus_none_se"] == pytest.approx(5.0)
    assert out["best_psnr_cost_db"] == pytest.approx(0.5)
    assert out["aligned_better_within_1db"] == ["semantic_0.001"]
    assert out["fd_rises_with_lambda"] == {"semantic": True, "lowlevel": False}
    assert out["spearman_fd"]["rfd_mnist"] == pytest.approx(1.0)
    assert out["spearman_fd"]["latent_fd"] is None  # no such column


@pytest.mark.slow
def test_align_mnist_quick(script, tmp_path):
    out = tmp_path / "results" / "align_mnist.json"
    # two autoencoders (the lowlevel rows train exactly as the semantic ones, another prior)
    argv = ["--quick", "--rows", "kl,semantic_0.01", "--runs_dir", str(tmp_path / "runs"),
            "--out", str(out), "--data_dir", str(tmp_path / "data"), "--gen_seeds", "0,1"]
    results = script.main(argv)
    saved = json.loads(out.read_text())
    assert saved["rows"] == json.loads(json.dumps(results["rows"]))
    for key in ("command", "git_commit", "machine", "machine_info", "wall_time_s", "protocol",
                "timings", "classifier", "priors", "fd_mnist_train_vs_test"):
        assert key in saved, key
    rows = {r["name"]: r for r in saved["rows"]}
    assert [(r["name"], r["autoencoder"], r["target"], r["lambda"]) for r in saved["rows"]] == [
        ("kl", "kl", "none", 0.0), ("semantic_0.01", "ae", "semantic", 0.01)]
    for r in saved["rows"]:
        for key in ("mse", "psnr", "fd_mnist", "rfd_mnist", "knn_nll_semantic",
                    "knn_nll_lowlevel", "lalign_semantic", "lalign_lowlevel", "latent_scale"):
            assert np.isfinite(r[key]), (r["name"], key)
        assert 0 < r["mse"] < 1 and r["fd_mnist"] >= 0
        assert r["ae_curves"]["val"] and len(r["gen_curves"]) == 2 and all(r["gen_curves"])
        # two generator seeds: two different generators, the mean and its standard error
        assert r["gen_seeds"] == [0, 1] and len(set(r["gen_workdirs"])) == 2
        assert r["fd_mnist"] == pytest.approx(np.mean(r["fd_mnist_per_seed"]))
        assert r["fd_mnist_sem"] == pytest.approx(
            np.std(r["fd_mnist_per_seed"], ddof=1) / np.sqrt(2))
        assert r["fd_mnist_per_seed"][0] != r["fd_mnist_per_seed"][1]
        # the decomposition: the generator's latent FD and the decoder's noise sensitivity
        assert r["latent_fd"] >= 0 and r["rfd_noised_0.3"] >= 0
        # the latent scale is stored with the autoencoder's checkpoint
        wd = r["ae_workdir"] if os.path.isabs(r["ae_workdir"]) else os.path.join(REPO,
                                                                                 r["ae_workdir"])
        scale = json.loads(open(os.path.join(wd, "latent_scale.json")).read())["latent_scale"]
        assert scale == pytest.approx(r["latent_scale"])
    assert rows["kl"]["knn_nll"] is None  # no target
    r = rows["semantic_0.01"]
    assert r["knn_nll"] == r["knn_nll_semantic"] and r["align_loss_test"] is not None
    cfg = json.loads((tmp_path / "runs" / "ae" / r["name"] / "config.json").read_text())
    assert cfg["model"]["align"]["weight"] == 0.01
    assert cfg["model"]["align"]["prior_workdir"].endswith(os.path.join("priors", "semantic"))
    assert cfg["model"]["align_layout"] == "tokens"
    for target in ("semantic", "lowlevel"):
        assert saved["priors"][target]["steps"] == 60
        assert np.isfinite(saved["priors"][target]["val_fm_loss"])
    assert (tmp_path / "results" / "align_mnist.md").read_text().count("\n|") >= 3
    assert (tmp_path / "results" / "align_mnist_samples.png").exists()

    # a rerun reuses every stage: the same rows
    again = script.main(argv)
    assert again["rows"] == results["rows"]
