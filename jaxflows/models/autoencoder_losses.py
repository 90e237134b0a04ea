"""Perceptual and adversarial losses of the autoencoder task (:mod:`jaxflows.models.autoencoder`):
the MNIST stand-ins for the LPIPS + GAN terms of latent diffusion's autoencoder and of STARFlow's
decoder fine-tuning (Gu et al. 2025, arXiv 2506.06276, Sec. 3.3; apple/ml-starflow
``finetune_decoder.py`` with ``misc/ae_losses.py``: ``L2 + 1.1 perceptual + 0.1 GAN``).

**Perceptual term** (:class:`PerceptualLoss`). LPIPS weights (ImageNet VGG/AlexNet plus learned
linear heads) are not available offline and mean little on 28 x 28 digits, so the network is the
project's MNIST classifier (:class:`jaxflows.eval.classifier.DigitCNN`, the network behind
FD-MNIST), frozen. Both images are mapped to the classifier's input range ``[0, 1]``
(``(x + 1) / 2``; the reconstruction is *not* clipped, so values outside still get gradients);
per layer ``l`` in ``layers`` the post-ReLU activations ``f_l`` give the relative squared error

    d_l = ||f_l(recon) - f_l(x)||^2 / ||f_l(x)||^2      (sums over positions and channels),
    perceptual = mean_l d_l                              (per image).

For ``features`` this is the squared difference of the penultimate features, per image divided
by the input's feature energy. Dividing by the *target's* energy (a constant for the gradient)
makes the term independent of the classifier's feature scale, so one ``perceptual_weight`` suits
any trained DigitCNN, and puts layers of different sizes on one footing. (LPIPS instead
unit-normalises each position's channel vector; on MNIST's exactly-black background the
activations there are near zero and that normalisation turns tiny reconstruction errors into
unit-size, large-gradient differences, so it is not used.) Layers
(``config.model.perceptual_layers``): ``Conv_0`` (3 x 3, full resolution), ``Conv_1`` (stride
2), ``Conv_2`` (stride 2) and ``features`` (the 128-d penultimate dense layer). Default
``('Conv_1', 'Conv_2', 'features')``: ``features`` is what FD-MNIST measures (digit identity and
style), ``Conv_1``/``Conv_2`` (receptive fields 7 and 15 pixels) see stroke parts, where a
blurry reconstruction differs; ``Conv_0``'s 3 x 3 edge filters repeat what the pixel L2 already
measures. Measured on the MNIST KL autoencoder of ``align_mnist`` (1,000 test images): pixel
``rec_loss`` 0.018 and ``perceptual`` 0.016 from clean latents, 0.054 and 0.082 from latents
noised with ``sigma_L = 0.3`` (scaled units): the term grows 5x under the noise, the pixel error
3x.

The classifier parameters are loaded from ``config.model.perceptual_classifier`` (a msgpack file
of :func:`jaxflows.eval.classifier.save_classifier_params`, the format ``align_mnist`` caches,
or an Orbax params checkpoint directory) and held here, outside the trainable parameter tree (as
:class:`jaxflows.align.FlowPriorAlignment` holds its prior): no optimiser state, and they pass
through ``stop_gradient``.

**Adversarial term** (:class:`PatchDiscriminator`, :func:`hinge_d_loss`,
:func:`generator_loss`). A small PatchGAN in the style of ml-starflow's ``NLayerDiscriminator``:
``conv5x5(c0)``, LeakyReLU(0.1), then per entry of ``channels`` ``conv3x3 -> 2x2 average pool ->
GroupNorm -> LeakyReLU``, then ``conv1x1``, LeakyReLU, ``conv3x3 -> 1`` logit per patch (28 x 28
images give 7 x 7 patch logits). Hinge losses (taming-transformers / ml-starflow):
``d = 0.5 (mean relu(1 - D(x)) + mean relu(1 + D(recon)))``, ``g = -mean D(recon)``. No LeCam
regulariser and no adaptive weight (ml-starflow uses a fixed weight 0.1; LeCam needs running
means, state the engine's pure loss does not carry). How the task trains both networks with the
engine's one loss and one optimiser is described in :func:`gan_objective`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxflows.errors import ConfigError

PyTree = Any

PERCEPTUAL_LAYERS = ("Conv_0", "Conv_1", "Conv_2", "features")
DEFAULT_PERCEPTUAL_LAYERS = ("Conv_1", "Conv_2", "features")
ENERGY_EPS = 1e-6  # added to a target's activation energy (a dead layer gives 0)


def digitcnn_activations(params: PyTree, x: jax.Array) -> dict[str, jax.Array]:
    """Post-ReLU activations of :class:`DigitCNN` on ``x: [B, H, W, C]`` in ``[0, 1]``:
    ``Conv_0 [B, H, W, 32]``, ``Conv_1``, ``Conv_2`` (``[B, h, w, 64]``) and ``features``
    ``[B, 128]`` (the penultimate layer, what :func:`jaxflows.eval.classifier.features` gives).
    Read with ``capture_intermediates``, so this follows DigitCNN's own forward pass."""
    from jaxflows.eval.classifier import DigitCNN

    model = DigitCNN(num_classes=int(params["Dense_1"]["kernel"].shape[-1]),
                     feature_dim=int(params["Dense_0"]["kernel"].shape[-1]))
    (_, feats), state = model.apply(
        {"params": params}, x, mutable=["intermediates"],
        capture_intermediates=lambda mdl, name: name == "__call__" and isinstance(mdl, nn.Conv))
    inter = state["intermediates"]
    out = {name: jax.nn.relu(inter[name]["__call__"][0]) for name in ("Conv_0", "Conv_1",
                                                                       "Conv_2")}
    out["features"] = feats
    return out


def perceptual_distance(params: PyTree, a: jax.Array, b: jax.Array,
                        layers: Sequence[str] = DEFAULT_PERCEPTUAL_LAYERS) -> jax.Array:
    """Per-image distance ``[B]`` of images ``a`` to the target ``b`` (both ``[B, H, W, C]`` in
    ``[0, 1]``; see the module docstring): the mean over ``layers`` of
    ``||f(a) - f(b)||^2 / (||f(b)||^2 + ENERGY_EPS)`` of DigitCNN's post-ReLU activations.
    ``params`` and the denominator pass through ``stop_gradient``."""
    params = jax.tree.map(jax.lax.stop_gradient, params)
    n = a.shape[0]
    acts = digitcnn_activations(params, jnp.concatenate([a, b]).astype(jnp.float32))
    total = jnp.zeros((n,), jnp.float32)
    for name in layers:
        f = acts[name].reshape(2 * n, -1)
        err = jnp.sum(jnp.square(f[:n] - f[n:]), axis=-1)
        energy = jax.lax.stop_gradient(jnp.sum(jnp.square(f[n:]), axis=-1))
        total = total + err / (energy + ENERGY_EPS)
    return total / len(layers)


class PerceptualLoss:
    """``weight * perceptual`` under a frozen DigitCNN (``params`` held here, outside any
    trainable tree). Build with :meth:`from_config`."""

    def __init__(self, params: PyTree, weight: float,
                 layers: Sequence[str] = DEFAULT_PERCEPTUAL_LAYERS):
        self.params, self.weight, self.layers = params, float(weight), tuple(layers)

    @classmethod
    def from_config(cls, model_config, image_shape) -> PerceptualLoss | None:
        """From ``config.model`` (``perceptual_weight``, ``perceptual_classifier``,
        ``perceptual_layers``); None when the weight is 0. ConfigError when the weight is
        negative, the path is empty or missing, the file does not hold DigitCNN params (for
        ``image_shape``) or a layer is unknown."""
        from jaxflows.eval.classifier import load_classifier_params

        weight = float(model_config.get("perceptual_weight", 0.0))
        if weight < 0:
            raise ConfigError(f"config.model.perceptual_weight must be >= 0, got {weight}")
        if weight == 0:
            return None
        layers = tuple(model_config.get("perceptual_layers", DEFAULT_PERCEPTUAL_LAYERS) or ())
        bad = [name for name in layers if name not in PERCEPTUAL_LAYERS]
        if bad or not layers:
            raise ConfigError(f"config.model.perceptual_layers={layers}: unknown or empty; "
                              f"valid: {', '.join(PERCEPTUAL_LAYERS)}")
        path = os.fspath(model_config.get("perceptual_classifier", "") or "")
        hint = ("write one with jaxflows.eval.classifier.save_classifier_params("
                "path, train_classifier(...))")
        if not path:
            raise ConfigError("config.model.perceptual_weight > 0 needs "
                              "config.model.perceptual_classifier (a DigitCNN params file)",
                              hint=hint)
        if not os.path.exists(path):
            raise ConfigError(f"config.model.perceptual_classifier={path} does not exist",
                              hint=hint)
        try:
            from jaxflows.eval.classifier import check_classifier_params

            params = load_classifier_params(path)
            check_classifier_params(params, image_shape)
        except (ValueError, FileNotFoundError) as e:
            raise ConfigError(f"config.model.perceptual_classifier={path} does not hold "
                              f"DigitCNN params for {tuple(image_shape)} images: "
                              f"{str(e).splitlines()[0][:160]}", hint=hint) from None
        return cls(params, weight, layers)

    def per_example(self, recon: jax.Array, x: jax.Array) -> jax.Array:
        """Unweighted perceptual distance ``[B]`` of ``recon`` to ``x`` (both ``[B, H, W, C]``
        in ``[-1, 1]`` units; mapped to ``[0, 1]`` by ``(v + 1) / 2``, not clipped)."""
        return perceptual_distance(self.params, (recon + 1.0) * 0.5, (x + 1.0) * 0.5,
                                   self.layers)


# --- the discriminator and the hinge losses ----------------------------------------------------

class PatchDiscriminator(nn.Module):
    """``x: [B, H, W, C]`` in ``[-1, 1]`` -> patch logits ``[B, H / 2^L, W / 2^L]``
    (``L = len(channels)``; see the module docstring)."""

    channels: Sequence[int] = (32, 64)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = lambda h: nn.leaky_relu(h, 0.1)  # noqa: E731
        h = act(nn.Conv(self.channels[0], (5, 5))(x.astype(jnp.float32)))
        for c in self.channels:
            h = nn.Conv(c, (3, 3))(h)
            h = nn.avg_pool(h, (2, 2), (2, 2), padding="SAME")
            h = act(nn.GroupNorm(num_groups=math.gcd(8, int(c)))(h))
        h = act(nn.Conv(self.channels[-1], (1, 1))(h))
        return nn.Conv(1, (3, 3))(h)[..., 0]


def hinge_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
    """Per-image hinge loss of the discriminator ``[B]`` from patch logits ``[B, ...]``:
    ``0.5 (mean relu(1 - real) + mean relu(1 + fake))``."""
    b = logits_real.shape[0]
    real = jnp.mean(jax.nn.relu(1.0 - logits_real).reshape(b, -1), axis=-1)
    fake = jnp.mean(jax.nn.relu(1.0 + logits_fake).reshape(b, -1), axis=-1)
    return 0.5 * (real + fake)


def generator_loss(logits_fake: jax.Array) -> jax.Array:
    """Per-image generator loss ``-mean D(recon)`` ``[B]``."""
    return -jnp.mean(logits_fake.reshape(logits_fake.shape[0], -1), axis=-1)


def gan_objective(disc: PatchDiscriminator, disc_params: PyTree, recon: jax.Array,
                  x: jax.Array, weight: float, gate: jax.Array) -> tuple[jax.Array, dict]:
    """The adversarial part of the task's one scalar loss, per image ``[B]``, and its metrics.

    The engine has one loss and one optimiser; the two players are separated inside the loss::

        gate * (weight * g(D_sg(recon)) + d(D(x), D(sg(recon))))

    with ``sg = stop_gradient``: in the generator term the discriminator's *parameters* are
    stopped, so its gradient reaches the decoder (and whatever produced ``recon``) only; in the
    discriminator term the *reconstruction* is stopped, so its gradient reaches the
    discriminator only. Hence ``d loss / d decoder = weight * d g / d decoder`` and
    ``d loss / d disc = d d / d disc``, exactly the gradients of the two alternating updates of
    ``finetune_decoder.py``, taken at the same parameters (a simultaneous, not alternating,
    update). ``gate`` (0 or 1; ``step >= gan_start_step``) switches both on. What the shared
    optimiser does to this: Adam's moments are per parameter, so the two subtrees get
    independent Adam updates with the same learning rate and schedule; a global-norm gradient
    clip (``optim.grad_clip_norm``) and the logged ``loss`` (which includes ``d``) are shared.
    """
    sg = jax.lax.stop_gradient
    frozen = jax.tree.map(sg, disc_params)
    g = generator_loss(disc.apply({"params": frozen}, recon))
    logits_real = disc.apply({"params": disc_params}, x)
    logits_fake = disc.apply({"params": disc_params}, sg(recon))
    d = hinge_d_loss(logits_real, logits_fake)
    b = x.shape[0]
    metrics = {"g_loss": g, "d_loss": d,
               "logits_real": jnp.mean(logits_real.reshape(b, -1), axis=-1),
               "logits_fake": jnp.mean(logits_fake.reshape(b, -1), axis=-1)}
    return gate * (weight * g + d), metrics
