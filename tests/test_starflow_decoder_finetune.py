"""experiments/starflow_decoder_finetune.py: its reconstruction metrics (the --quick end to end
runs inside tests/test_starflow_mnist.py, as stage 2 of the STARFlow experiment)."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def script(load_repo_module):
    return load_repo_module("experiments/starflow_decoder_finetune.py")


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


# The script's --quick end to end (JSON schema, frozen encoder, curves, rerun) runs as stage 2 of
# experiments/starflow_mnist.py --quick: tests/test_starflow_mnist.py checks its results there.
