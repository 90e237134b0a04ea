"""experiments/starflow_decoder_finetune.py ``--quick`` end to end on the embedded 8 x 8 digits: a
classifier, a KL autoencoder, the decoder fine-tuned on noisy latents with the encoder frozen,
the four result rows with provenance, and a rerun that reuses every stage."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location(
        "starflow_decoder_finetune_script",
        os.path.join(REPO, "experiments", "starflow_decoder_finetune.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recon_metrics(script):
    from jaxflows.eval.frechet import feature_stats

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 8, 8, 1)).astype(np.uint8)
    recon = np.clip(images / 255.0 + 0.1, 0.0, 1.0)
    cls = _classifier()
    stats = feature_stats(script.features(cls, images))
    out = script.recon_metrics(recon, images, cls, stats)
    per = ((recon - images / 255.0) ** 2).reshape(20, -1).mean(-1)
    assert out["mse"] == pytest.approx(per.mean())
    assert out["psnr"] == pytest.approx(np.mean(-10 * np.log10(per)))
    assert out["fd_mnist"] > 0
    assert script.recon_metrics(images / 255.0, images, cls, stats)["fd_mnist"] < 1e-6


def _classifier():
    import jax
    import jax.numpy as jnp

    from jaxflows.eval.classifier import DigitCNN

    return DigitCNN().init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]


@pytest.mark.slow
def test_starflow_decoder_finetune_quick(script, tmp_path):
    out = tmp_path / "results" / "starflow_decoder.json"
    argv = ["--quick", "--runs_dir", str(tmp_path / "runs"), "--out", str(out),
            "--data_dir", str(tmp_path / "data"), "--ae_epochs", "3", "--epochs", "2",
            "--classifier_steps", "30"]
    results = script.main(argv)
    saved = json.loads(out.read_text())
    assert saved["rows"] == json.loads(json.dumps(results["rows"]))
    for key in ("command", "git_commit", "machine", "machine_info", "wall_time_s", "timings",
                "protocol", "classifier", "autoencoder", "finetune", "latent_scale",
                "fd_mnist_train_vs_test"):
        assert key in saved, key
    assert [(r["decoder"], r["latents"]) for r in saved["rows"]] == [
        ("original", "clean"), ("original", "noisy"), ("finetuned", "clean"),
        ("finetuned", "noisy")]
    for r in saved["rows"]:
        for key in ("mse", "psnr", "fd_mnist"):
            assert np.isfinite(r[key]), (r, key)
    assert saved["encoder_unchanged"] is True  # optim.freeze kept the encoder bitwise
    assert saved["sigma_l"] == 0.3 and saved["latent_scale"] > 0
    assert saved["autoencoder"]["kind"] == "kl"  # STARFlow's (the SD VAE is a KL autoencoder)
    ft = saved["finetune"]
    assert ft["perceptual_weight"] > 0 and ft["gan_weight"] == 0
    assert ft["curves"]["val"] and ft["curves"]["train"]  # per-epoch curves
    val_cols = ft["curves"]["val_columns"]
    assert all(v[val_cols.index("noisy_mse")] is not None for v in ft["curves"]["val"])
    assert (tmp_path / "runs" / "finetuned" / "latent_scale.json").exists()
    assert (tmp_path / "results" / "starflow_decoder.md").exists()
    # the noisy latents cost the original decoder reconstruction quality
    rows = {(r["decoder"], r["latents"]): r for r in saved["rows"]}
    assert rows["original", "noisy"]["mse"] > rows["original", "clean"]["mse"]
    # a rerun reuses the classifier, the autoencoder and the fine-tuned workdir
    again = script.main(argv)
    assert again["rows"] == results["rows"]
