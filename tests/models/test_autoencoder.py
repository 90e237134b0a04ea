"""The convolutional autoencoder task: shapes, the KL term, the latent scale factor, the flow-prior
alignment term (its gradient reaches the encoder only) and the noisy-latent decoder option."""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflows.align import FlowPriorAlignment
from jaxflows.errors import ConfigError, UserError
from jaxflows.models import autoencoder as ae
from jaxflows.models.flow_matching import VelocityMLP
from jaxflows.train.config import base_config
from jaxflows.train.task import DataInfo


def _config(**model):
    c = base_config()
    c.model = ae.default_model_config()
    c.model.channels = (4, 8)
    for k, v in model.items():
        c.model[k] = v
    return c


def _task(image_shape=(28, 28, 1), **model) -> ae.AutoencoderTask:
    return ae.AutoencoderTask(_config(**model), DataInfo.for_images(image_shape, 0, 100))


def _images(n=6, shape=(28, 28, 1), seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, *shape)).astype(np.uint8)


def _params(task, images):
    return nn.unbox(task.init(jax.random.key(0), {"image": jnp.asarray(images)}))


@pytest.mark.parametrize("mode", ["ae", "kl"])
def test_shapes_mnist_grid(mode):
    task = _task(mode=mode, kl_weight=1e-6 if mode == "kl" else 0.0)
    x = _images()
    params = _params(task, x)
    assert task.latent_shape == (7, 7, 4)  # 28 / 2^2, four channels
    assert set(params) == {"encoder", "decoder"}
    z = task.encode(params, x)
    chex.assert_shape(z, (6, 7, 7, 4))
    rec = task.decode(params, z)
    chex.assert_shape(rec, (6, 28, 28, 1))
    assert float(rec.min()) >= 0.0 and float(rec.max()) <= 1.0
    chex.assert_shape(task.tokens(z), (6, 49, 4))
    # the Gaussian posterior's head has mean and log-variance channels
    head = params["encoder"]["Conv_3"]["kernel"]
    assert head.shape[-1] == (8 if mode == "kl" else 4)
    flat = _task(align_layout="flat")
    chex.assert_shape(flat.tokens(z), (6, 196))
    assert flat.token_dim == 196 and task.token_dim == 4


def test_digits_grid_and_bad_sizes():
    assert _task((8, 8, 1)).latent_shape == (2, 2, 4)
    with pytest.raises(ConfigError, match="not divisible"):
        _task((10, 10, 1))
    with pytest.raises(ConfigError, match="kl_weight"):
        _task(mode="ae", kl_weight=1e-6)
    with pytest.raises(ConfigError, match="mode"):
        _task(mode="vq")
    with pytest.raises(ConfigError, match="align_layout"):
        _task(align_layout="rows")


def test_gaussian_kl_closed_form():
    rng = np.random.default_rng(1)
    mean = rng.normal(size=(3, 2, 2, 4)).astype(np.float32)
    logvar = rng.normal(size=(3, 2, 2, 4)).astype(np.float32)
    var = np.exp(logvar)
    want = 0.5 * np.sum((mean**2 + var - 1 - logvar).reshape(3, -1), -1)
    np.testing.assert_allclose(ae.gaussian_kl(mean, logvar), want, rtol=1e-5)
    np.testing.assert_allclose(ae.gaussian_kl(np.zeros_like(mean), np.zeros_like(mean)), 0.0)


class LossTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_kl_loss_terms(self):
        x = _images(4, (8, 8, 1))
        task = _task((8, 8, 1), mode="kl", kl_weight=1e-3)
        params = _params(task, x)
        loss, m = self.variant(lambda p, b, r: task.loss(p, b, r, jnp.int32(0)))(
            params, {"image": jnp.asarray(x)}, jax.random.key(3))
        # loss = rec + kl_weight * KL / P, P = 8 * 8 * 1 pixels (LDM's ratio)
        np.testing.assert_allclose(loss, m["rec_loss"] + 1e-3 * m["kl"] / 64, rtol=1e-5)
        assert float(m["kl"]) > 0
        np.testing.assert_allclose(m["mse"], m["rec_loss"] / 4, rtol=1e-6)


def test_deterministic_loss_and_eval_metrics():
    x = _images(4, (8, 8, 1))
    batch = {"image": jnp.asarray(x)}
    # the deterministic autoencoder has no KL and the same loss in training and evaluation
    det = _task((8, 8, 1))
    p2 = _params(det, x)
    loss2, m2 = det.loss(p2, batch, jax.random.key(3), jnp.int32(0))
    assert float(m2["kl"]) == 0.0
    ev = det.eval_batch(p2, batch, jax.random.key(4))
    np.testing.assert_allclose(np.mean(ev["loss"]), loss2, rtol=1e-5)
    # eval pixel metrics: clipped decoder output in [0, 1] units, PSNR per image
    rec = np.asarray(det.decode(p2, det.encode(p2, x)))
    mse = ((rec - x / 255.0) ** 2).reshape(4, -1).mean(-1)
    np.testing.assert_allclose(ev["mse"], mse, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(ev["psnr"], -10 * np.log10(mse), rtol=1e-4)
    z = np.asarray(det.encode(p2, x)).reshape(4, -1)
    np.testing.assert_allclose(ev["latent_mean"], z.mean(-1), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ev["latent_sq"], (z**2).mean(-1), rtol=1e-4)


def test_posterior_sample_needs_rng_and_differs_from_mean():
    task = _task((8, 8, 1), mode="kl", kl_weight=1e-6)
    x = _images(3, (8, 8, 1))
    params = _params(task, x)
    with pytest.raises(ValueError, match="rng"):
        task.encode(params, x, sample=True)
    mean = task.encode(params, x)
    sample = task.encode(params, x, sample=True, rng=jax.random.key(1))
    assert not np.allclose(mean, sample)


def test_latent_scale_unit_std_and_saved(tmp_path):
    task = _task((8, 8, 1))
    x = _images(37, (8, 8, 1))
    params = _params(task, x)
    scale = ae.latent_scale(task, params, x, batch_size=16)  # batches padded: 16, 16, 5
    z = np.asarray(task.encode(params, x), np.float64)
    np.testing.assert_allclose(scale, 1.0 / z.std(), rtol=1e-5)
    np.testing.assert_allclose((z * scale).std(), 1.0, rtol=1e-5)
    np.testing.assert_allclose(ae.encode_all(task, params, x, batch_size=16), z, rtol=1e-5,
                               atol=1e-6)
    ae.save_latent_scale(str(tmp_path), scale, num_images=37)
    assert ae.load_latent_scale(str(tmp_path)) == pytest.approx(scale)
    with pytest.raises(UserError, match="latent_scale"):
        ae.load_latent_scale(str(tmp_path / "missing"))


def _alignment(dim: int, weight: float) -> FlowPriorAlignment:
    prior = VelocityMLP(dim=dim, width=16, num_blocks=1, freq_dim=8)
    pp = prior.init(jax.random.key(7), jnp.zeros((1, dim)), jnp.zeros((1,)))["params"]
    # a non-zero field (the output layer starts at zero)
    pp = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(8), a.shape), pp)
    return FlowPriorAlignment(lambda p, x, t: prior.apply({"params": p}, x, t), pp, dim,
                              weight=weight, repeats=2)


@pytest.mark.parametrize("layout,dim", [("tokens", 4), ("flat", 16)])
def test_alignment_gradient_reaches_the_encoder_only(layout, dim):
    x = _images(4, (8, 8, 1))
    batch = {"image": jnp.asarray(x)}
    plain = _task((8, 8, 1), align_layout=layout)
    aligned = _task((8, 8, 1), align_layout=layout)
    aligned.align = _alignment(dim, weight=0.5)
    params = _params(plain, x)
    rng = jax.random.key(5)

    def grads(task):
        return jax.grad(lambda p: task.loss(p, batch, rng, jnp.int32(0))[0])(params)

    loss, metrics = aligned.loss(params, batch, rng, jnp.int32(0))
    base, _ = plain.loss(params, batch, rng, jnp.int32(0))
    np.testing.assert_allclose(loss, base + 0.5 * metrics["align_loss"], rtol=1e-5)
    diff = jax.tree.map(lambda a, b: a - b, grads(aligned), grads(plain))
    enc = max(float(jnp.max(jnp.abs(v))) for v in jax.tree.leaves(diff["encoder"]))
    dec = max(float(jnp.max(jnp.abs(v))) for v in jax.tree.leaves(diff["decoder"]))
    assert enc > 1e-6  # L_align moves the encoder ...
    assert dec == 0.0  # ... and nothing else: the decoder sees the same latent
    assert "align_loss" in aligned.eval_batch(params, batch, rng)


def test_alignment_dimension_is_checked(monkeypatch):
    monkeypatch.setattr(ae.FlowPriorAlignment, "from_config",
                        classmethod(lambda cls, c: _alignment(3, 0.1)))
    with pytest.raises(ConfigError, match="3-d vectors"):
        _task((8, 8, 1))


def test_noisy_latents_for_decoder_finetuning():
    x = _images(4, (8, 8, 1))
    batch = {"image": jnp.asarray(x)}
    clean = _task((8, 8, 1))
    noisy = _task((8, 8, 1), latent_noise_std=0.3, latent_scale=2.0)
    params = _params(clean, x)
    rng = jax.random.key(2)
    l_clean, _ = clean.loss(params, batch, rng, jnp.int32(0))
    l_noisy, _ = noisy.loss(params, batch, rng, jnp.int32(0))
    assert float(l_clean) != float(l_noisy)
    ev = noisy.eval_batch(params, batch, rng)
    np.testing.assert_allclose(ev["mse"], clean.eval_batch(params, batch, rng)["mse"], rtol=1e-6)
    assert "noisy_mse" in ev and "noisy_psnr" in ev
    with pytest.raises(ConfigError, match="latent_noise_std"):
        _task((8, 8, 1), latent_noise_std=-1.0)
