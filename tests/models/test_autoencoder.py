"""The convolutional autoencoder task: shapes, the KL term, the latent scale factor, the flow-prior
alignment term (its gradient reaches the encoder only), the noisy-latent decoder option, the
perceptual term (frozen DigitCNN), the hinge GAN (separated gradients) and the decoder
fine-tuning rows (the encoder stays bitwise frozen)."""

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
from jaxflows.models import autoencoder_losses as losses
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


# --- the perceptual term (frozen DigitCNN) -------------------------------------------------------

def _classifier(shape=(8, 8, 1), seed=0):
    """DigitCNN params at their random init (enough for the loss's properties)."""
    from jaxflows.eval.classifier import DigitCNN

    return DigitCNN().init(jax.random.key(seed), jnp.zeros((1, *shape)))["params"]


@pytest.fixture
def cls_file(tmp_path):
    from jaxflows.eval.classifier import save_classifier_params

    return save_classifier_params(str(tmp_path / "cls" / "params.msgpack"), _classifier())


def test_perceptual_distance_zero_on_identity_positive_otherwise():
    cls = _classifier()
    a = jnp.asarray(_images(4, (8, 8, 1), seed=1) / 255.0, jnp.float32)
    b = jnp.asarray(_images(4, (8, 8, 1), seed=2) / 255.0, jnp.float32)
    for layers in [("features",), ("Conv_0",), losses.DEFAULT_PERCEPTUAL_LAYERS]:
        same = losses.perceptual_distance(cls, a, a, layers)
        chex.assert_shape(same, (4,))
        np.testing.assert_array_equal(same, 0.0)
        assert np.all(np.asarray(losses.perceptual_distance(cls, a, b, layers)) > 0)
    # 'features' is the relative squared error of the penultimate features
    from jaxflows.eval.classifier import features

    fa, fb = np.asarray(features(cls, a), np.float64), np.asarray(features(cls, b), np.float64)
    want = ((fa - fb) ** 2).sum(-1) / ((fb ** 2).sum(-1) + losses.ENERGY_EPS)
    np.testing.assert_allclose(losses.perceptual_distance(cls, a, b, ("features",)), want,
                               rtol=1e-4)


def test_perceptual_term_in_the_loss_and_no_gradient_to_the_classifier(cls_file):
    x = _images(4, (8, 8, 1))
    batch = {"image": jnp.asarray(x)}
    plain = _task((8, 8, 1))
    task = _task((8, 8, 1), perceptual_weight=0.5, perceptual_classifier=cls_file)
    assert task.perceptual.layers == losses.DEFAULT_PERCEPTUAL_LAYERS
    params = _params(plain, x)
    rng = jax.random.key(3)
    loss, m = task.loss(params, batch, rng, jnp.int32(0))
    np.testing.assert_allclose(loss, m["rec_loss"] + 0.5 * m["perceptual"], rtol=1e-5)
    assert float(m["perceptual"]) > 0
    ev = task.eval_batch(params, batch, rng)
    np.testing.assert_allclose(np.mean(ev["loss"]), loss, rtol=1e-5)
    # the classifier is held outside the trainable tree: the gradient has only the autoencoder
    grads = jax.grad(lambda p: task.loss(p, batch, rng, jnp.int32(0))[0])(params)
    assert set(grads) == {"encoder", "decoder"}
    base = jax.grad(lambda p: plain.loss(p, batch, rng, jnp.int32(0))[0])(params)
    diff = max(float(jnp.max(jnp.abs(a - b)))
               for a, b in zip(jax.tree.leaves(grads["decoder"]), jax.tree.leaves(base["decoder"])))
    assert diff > 1e-7  # the term trains the decoder ...
    # ... and differentiating it w.r.t. the classifier's params gives exactly zero
    recon = jnp.asarray(_images(4, (8, 8, 1), seed=5) / 127.5 - 1.0, jnp.float32)
    xs = ae.to_signed(x)
    cls_grads = jax.grad(lambda cp: jnp.sum(losses.perceptual_distance(
        cp, (recon + 1) / 2, (xs + 1) / 2)))(task.perceptual.params)
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(cls_grads))


def test_classifier_params_files_and_config_errors(tmp_path, cls_file):
    from jaxflows.eval import classifier
    from jaxflows.train.pretrained import save_params

    cls = _classifier()
    loaded = classifier.load_classifier_params(cls_file)
    chex.assert_trees_all_equal(loaded, cls)
    orbax_dir = save_params(str(tmp_path / "cls_orbax"), cls)  # an Orbax params checkpoint
    chex.assert_trees_all_close(classifier.load_classifier_params(orbax_dir), cls)
    assert _task((8, 8, 1), perceptual_weight=1.0,
                 perceptual_classifier=orbax_dir).perceptual is not None
    assert _task((8, 8, 1), perceptual_classifier="missing").perceptual is None  # weight 0: off

    with pytest.raises(ConfigError, match="needs config.model.perceptual_classifier"):
        _task((8, 8, 1), perceptual_weight=1.0)
    with pytest.raises(ConfigError, match="does not exist"):
        _task((8, 8, 1), perceptual_weight=1.0, perceptual_classifier=str(tmp_path / "no.msgpack"))
    # a params file of another network, and a file that is not msgpack
    other = classifier.save_classifier_params  # writes only DigitCNN trees ...
    with pytest.raises(ValueError, match="not DigitCNN"):
        other(str(tmp_path / "ae.msgpack"), {"encoder": {"kernel": np.zeros((2, 2))}})
    import flax.serialization

    (tmp_path / "ae.msgpack").write_bytes(flax.serialization.to_bytes(
        _params(_task((8, 8, 1)), _images(1, (8, 8, 1)))))
    (tmp_path / "junk.msgpack").write_bytes(b"\x00 not msgpack \xff" * 4)
    for bad in ("ae.msgpack", "junk.msgpack"):
        with pytest.raises(ConfigError, match="does not hold DigitCNN params"):
            _task((8, 8, 1), perceptual_weight=1.0, perceptual_classifier=str(tmp_path / bad))
    # a classifier of 28 x 28 digits on 8 x 8 images
    big = classifier.save_classifier_params(str(tmp_path / "big.msgpack"),
                                            _classifier((28, 28, 1)))
    with pytest.raises(ConfigError, match="another size"):
        _task((8, 8, 1), perceptual_weight=1.0, perceptual_classifier=big)
    with pytest.raises(ConfigError, match="perceptual_layers"):
        _task((8, 8, 1), perceptual_weight=1.0, perceptual_classifier=cls_file,
              perceptual_layers=("Conv_9",))
    with pytest.raises(ConfigError, match="perceptual_weight"):
        _task((8, 8, 1), perceptual_weight=-1.0)


# --- the hinge GAN --------------------------------------------------------------------------------

def test_gan_gradients_are_separated():
    """The discriminator's gradient is that of its hinge loss alone, the autoencoder's that of
    ``rec + weight * g`` with the discriminator held fixed; before the start step the GAN adds
    nothing."""
    x = _images(4, (8, 8, 1))
    batch = {"image": jnp.asarray(x)}
    w = 0.5
    task = _task((8, 8, 1), gan_weight=w, gan_start_step=5, disc_channels=(8, 16))
    plain = _task((8, 8, 1))
    params = _params(task, x)
    assert set(params) == {"encoder", "decoder", "discriminator"}
    rng = jax.random.key(3)
    disc = losses.PatchDiscriminator((8, 16))
    chex.assert_shape(disc.apply({"params": params["discriminator"]}, ae.to_signed(x)), (4, 2, 2))

    def grads(step):
        return jax.grad(lambda p: task.loss(p, batch, rng, jnp.int32(step))[0])(params)

    ae_params = {k: params[k] for k in ("encoder", "decoder")}
    xs = ae.to_signed(x)

    def recon(p):
        return plain._terms(p, batch["image"], rng, train=True)["recon"]

    def ae_objective(p):  # the autoencoder's loss plus w * g with the discriminator fixed
        g = losses.generator_loss(disc.apply({"params": params["discriminator"]}, recon(p)))
        return plain.loss(p, batch, rng, jnp.int32(0))[0] + w * jnp.mean(g)

    def d_objective(dp):  # the discriminator's hinge loss on fixed reconstructions
        fake = jax.lax.stop_gradient(recon(ae_params))
        return jnp.mean(losses.hinge_d_loss(disc.apply({"params": dp}, xs),
                                            disc.apply({"params": dp}, fake)))

    on = grads(5)
    want_ae = jax.grad(ae_objective)(ae_params)
    want_d = jax.grad(d_objective)(params["discriminator"])
    chex.assert_trees_all_close({k: on[k] for k in ("encoder", "decoder")}, want_ae,
                                rtol=1e-4, atol=1e-7)
    chex.assert_trees_all_close(on["discriminator"], want_d, rtol=1e-4, atol=1e-7)
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(on["discriminator"])) > 0
    # the generator term moves the decoder (it differs from the plain gradient)
    base = jax.grad(lambda p: plain.loss(p, batch, rng, jnp.int32(0))[0])(ae_params)
    assert max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
        jax.tree.leaves(on["decoder"]), jax.tree.leaves(base["decoder"]))) > 1e-7
    # before gan_start_step: no gradient to the discriminator, the plain one to the autoencoder
    off = grads(4)
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(off["discriminator"]))
    chex.assert_trees_all_close({k: off[k] for k in ("encoder", "decoder")}, base,
                                rtol=1e-5, atol=1e-8)
    # the logged metrics: loss = ae_loss + w g + d from the start step on
    loss, m = task.loss(params, batch, rng, jnp.int32(5))
    np.testing.assert_allclose(loss, m["ae_loss"] + w * m["g_loss"] + m["d_loss"], rtol=1e-5)
    np.testing.assert_allclose(m["g_loss"], -m["logits_fake"], rtol=1e-5)
    # evaluation leaves the GAN out
    assert "d_loss" not in task.eval_batch(params, batch, rng)


def test_gan_and_noise_config_errors():
    with pytest.raises(ConfigError, match="gan_weight"):
        _task((8, 8, 1), gan_weight=-0.1)
    with pytest.raises(ConfigError, match="gan_start_step"):
        _task((8, 8, 1), gan_weight=0.1, gan_start_step=-1)
    with pytest.raises(ConfigError, match="disc_channels"):
        _task((8, 8, 1), gan_weight=0.1, disc_channels=(0,))
    assert _task((8, 8, 1)).disc is None  # off by default: no discriminator params
    with pytest.raises(ConfigError, match="latent_scale"):
        _task((8, 8, 1), latent_noise_std=0.3, latent_scale=0.0)


def test_hinge_losses():
    real = jnp.array([[2.0, 0.5], [-1.0, 1.0]])
    fake = jnp.array([[-2.0, 0.0], [1.0, -0.5]])
    # 0.5 (mean relu(1 - real) + mean relu(1 + fake))
    np.testing.assert_allclose(losses.hinge_d_loss(real, fake),
                               [0.5 * (0.25 + 0.5), 0.5 * (1.0 + 1.25)], rtol=1e-6)
    np.testing.assert_allclose(losses.generator_loss(fake), [1.0, -0.25], rtol=1e-6)


# --- the fine-tuning rows -------------------------------------------------------------------------

def _config_module():
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), "experiments", "configs", "autoencoder_mnist.py")
    spec = importlib.util.spec_from_file_location("autoencoder_mnist_cfg", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_finetune_rows(tmp_path, monkeypatch):
    import json

    cfg = _config_module()
    workdir = tmp_path / "starflow_ae"
    workdir.mkdir()
    monkeypatch.setattr(cfg, "FINETUNE_FROM", str(workdir))
    row = cfg.get_config("finetune_decoder")
    assert row.model.mode == "kl" and row.model.latent_noise_std == 0.3
    assert tuple(row.optim.freeze) == ("encoder/.*",) and row.model.gan_weight == 0.0
    assert row.model.perceptual_weight > 0 and row.model.perceptual_classifier
    assert [dict(e) for e in row.init_from] == [
        {"path": str(workdir), "source": "best_params/encoder", "target": "encoder"},
        {"path": str(workdir), "source": "best_params/decoder", "target": "decoder"}]
    # no latent_scale.json yet: the scale is 0, which the task refuses with a hint
    assert row.model.latent_scale == 0.0
    with pytest.raises(ConfigError, match="latent_scale"):
        ae.AutoencoderTask(row, DataInfo.for_images((28, 28, 1), 0, 100))
    # the architecture and the scale come from the workdir when it has them
    (workdir / "config.json").write_text(json.dumps({"model": {
        "mode": "ae", "kl_weight": 0.0, "channels": [8, 16], "res_blocks": 1,
        "latent_channels": 4, "latent_noise_std": 0.0}}))
    (workdir / "latent_scale.json").write_text(json.dumps({"latent_scale": 0.55}))
    row = cfg.get_config("finetune_decoder")
    assert (row.model.mode, tuple(row.model.channels), row.model.res_blocks) == ("ae", (8, 16), 1)
    assert row.model.latent_scale == 0.55 and row.model.latent_noise_std == 0.3
    smoke = cfg.get_config("finetune_smoke")
    assert not smoke.init_from and smoke.data.name == "digits" and smoke.model.gan_weight > 0
    assert smoke.model.perceptual_weight == 0.0  # self-contained: no classifier file needed


@pytest.mark.slow
def test_finetune_smoke_freezes_the_encoder_bitwise(tmp_path, cls_file):
    """``finetune_smoke`` with the perceptual term, grafted from a params checkpoint: after a
    short run through the engine (the GAN on from step 10) the encoder is bitwise the grafted
    one and the decoder has moved; the workdir loads without the classifier file."""
    import os

    from jaxflows.data.registry import prepare
    from jaxflows.train import load_config, train
    from jaxflows.train.pretrained import read_tree, save_params

    data = str(tmp_path / "data")
    prepare("digits", data)
    spec = os.path.join(os.path.dirname(_config_module().__file__), "autoencoder_mnist.py")
    config = load_config(f"{spec}:finetune_smoke", [
        f"--config.data.data_dir={data}", "--config.train.progress_bar=false",
        "--config.train.num_steps=12", "--config.train.eval_every_epochs=0",
        "--config.train.log_every_steps=6", "--config.model.perceptual_weight=1.0",
        f"--config.model.perceptual_classifier={cls_file}"])
    task = ae.AutoencoderTask(config, DataInfo.for_images((8, 8, 1), 0, 100))
    start = _params(task, _images(1, (8, 8, 1)))
    start = {k: start[k] for k in ("encoder", "decoder")}
    start = jax.tree.map(lambda a: np.asarray(a) + 0.01, start)  # not the run's own init
    src = save_params(str(tmp_path / "pretrained"), start)
    config.init_from = tuple({"path": src, "source": f"params/{k}", "target": k}
                             for k in ("encoder", "decoder"))
    workdir = str(tmp_path / "wd")
    train(config, workdir)
    tree = read_tree(workdir)
    for name in ("params", "best_params"):
        chex.assert_trees_all_equal(tree[name]["encoder"], start["encoder"])
    assert any(not np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(tree["params"]["decoder"]), jax.tree.leaves(start["decoder"])))
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        text = f.read()
    assert '"perceptual"' in text and '"d_loss"' in text
    os.remove(cls_file)  # training terms are off when loading: the file is not needed
    loaded_task, params = ae.load_autoencoder(workdir)
    assert set(params) == {"encoder", "decoder"} and loaded_task.perceptual is None
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, params["encoder"]), start["encoder"])
