"""Convolutional autoencoders of MNIST with a 7 x 7 x 4 latent grid (task
``jaxflows.models.autoencoder``), the autoencoders of the MNIST flow-prior alignment experiment
(``experiments/align_mnist.py``; Li et al. 2025, "Aligning Latent Spaces with Flow Priors", arXiv
2506.05240) and the latent space a later latent flow reuses.

Rows (``--config experiments/configs/autoencoder_mnist.py:ROW``):

  ae: plain (deterministic) autoencoder, ``kl_weight = 0``;
  kl: KL-regularised autoencoder (diagonal Gaussian posterior, ``kl_weight = 1e-6``, the latent-
    diffusion recipe); the low-level alignment target of align_mnist;
  smoke: the ``ae`` row, narrower, on the embedded 8 x 8 ``digits`` (2 x 2 x 4 latents; seconds);
  finetune_decoder: STARFlow's decoder fine-tuning (arXiv 2506.06276, Sec. 3.3) of the
    autoencoder in ``runs/starflow_ae`` (the ``kl`` row, also STARFlow's, see
    ``starflow_mnist.py``; paths from the repository root): ``config.init_from`` grafts its
    ``best_params`` encoder and decoder, ``optim.freeze = ('encoder/.*',)`` keeps the encoder
    bitwise fixed, the decoder sees ``z + (0.3 / latent_scale) eps`` (``sigma_L = 0.3`` in the
    scaled units) and learns ``L2 + 1.0 perceptual`` (DigitCNN stand-in for LPIPS; the
    classifier file ``runs/starflow_decoder/classifier/params.msgpack``), no GAN (``gan_weight``
    0; ml-starflow uses 0.1, too slow for the CPU budget), Adam lr 5e-4 with a 0.25-epoch warm-up
    and cosine decay, 3 epochs, best by ``noisy_loss``. The architecture keys and the latent
    scale are read from that workdir's ``config.json`` and ``latent_scale.json`` when the config
    loads; without the scale ``model.latent_scale`` is 0, which the task refuses with a hint.
    ``experiments/starflow_decoder_finetune.py`` makes the workdir, the scale and the classifier
    and runs this row;
  finetune_smoke: ``finetune_decoder`` shrunk to seconds on ``digits`` and self-contained (the
    smoke test has no pretrained workdir): no ``init_from`` (the frozen encoder is its random
    init), ``latent_scale = 1``, the perceptual term off (no classifier file; tests pass one in)
    and the hinge GAN on from step 10 (``gan_weight = 0.1``), so a smoke run crosses the whole
    fine-tuning path.

Recipe (sized for the CPU budget of align_mnist, 1 core): encoder 28x28 conv3x3(16) -> stride-2
conv3x3(16) -> 14x14 -> stride-2 conv3x3(32) -> 7x7 -> conv3x3(4) (the decoder mirrors it with
nearest-neighbour upsampling), SiLU, pixels in [-1, 1] with an MSE loss; Adam (0.9, 0.999), lr 2e-3
with a 0.25-epoch warm-up and cosine decay to 10%, gradient-norm clip 1, batch 128, 1.5 epochs of
the 50,000 training images (585 steps, about 80 s on one CPU core; longer with
``--config.train.num_epochs=N``), validation loss every half epoch (the best parameters are
kept). The flow-prior alignment term is off here; align_mnist sets ``config.model.align``.
"""

from __future__ import annotations

import json
import os

import ml_collections

from jaxflows.models.autoencoder import default_model_config
from jaxflows.train.config import base_config

ROWS = ("ae", "kl", "smoke", "finetune_decoder", "finetune_smoke")
#: the autoencoder workdir that finetune_decoder starts from (``autoencoder_mnist.py:kl``),
#: relative to the repository root
FINETUNE_FROM = os.path.join("runs", "starflow_ae")
#: the DigitCNN params file of its perceptual term (jaxflows.eval.classifier.save_classifier_params)
FINETUNE_CLASSIFIER = os.path.join("runs", "starflow_decoder", "classifier", "params.msgpack")
#: the architecture keys that finetune_decoder copies from the workdir's config.json
ARCH_KEYS = ("mode", "kl_weight", "channels", "res_blocks", "latent_channels")


def _repo_path(rel: str) -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.join(os.path.dirname(os.path.dirname(here)), rel)


def saved_autoencoder(workdir: str) -> tuple[dict, float]:
    """``(architecture keys, latent scale)`` of a trained autoencoder workdir, from its
    ``config.json`` and ``latent_scale.json``; ``{}`` and ``0.0`` for what is missing."""
    arch, scale = {}, 0.0
    path = os.path.join(workdir, "config.json")
    if os.path.exists(path):
        with open(path) as f:
            model = json.load(f).get("model", {})
        arch = {k: (tuple(v) if isinstance(v, list) else v) for k, v in model.items()
                if k in ARCH_KEYS}
    path = os.path.join(workdir, "latent_scale.json")
    if os.path.exists(path):
        with open(path) as f:
            scale = float(json.load(f)["latent_scale"])
    return arch, scale


def finetune_init_from(workdir: str, tree: str = "best_params") -> tuple[dict, ...]:
    """``config.init_from`` entries grafting the encoder and decoder of ``workdir``'s ``tree``
    (subtree by subtree: a discriminator, when on, keeps its fresh init)."""
    return tuple({"path": workdir, "source": f"{tree}/{part}", "target": part}
                 for part in ("encoder", "decoder"))


def get_config(arg: str = "ae") -> ml_collections.ConfigDict:
    """Returns the config of row ``arg`` (see the module docstring for the rows)."""
    if arg not in ROWS:
        raise ValueError(f"unknown row {arg!r} for autoencoder_mnist; valid rows: "
                         f"{', '.join(ROWS)}")
    c = base_config()
    c.seed = 0
    c.model = default_model_config()  # keys: jaxflows.models.autoencoder
    m = c.model
    kl = arg in ("kl", "finetune_decoder")
    m.mode = "kl" if kl else "ae"
    m.kl_weight = 1e-6 if kl else 0.0
    m.channels = (16, 32)
    m.res_blocks = 0
    m.latent_channels = 4
    m.align_layout = "tokens"

    c.data.name = "mnist"
    c.train.batch_size = 128
    c.train.eval_batch_size = 1000
    c.train.num_epochs = 1.5
    c.train.eval_every_epochs = 0.5
    c.train.log_every_steps = 50
    c.train.steps_per_dispatch = 1  # XLA:CPU runs convolutions slowly inside a scan
    c.train.best_metric = "loss"

    c.optim.name = "adam"
    c.optim.learning_rate = 2e-3
    c.optim.schedule = "warmup_cosine"
    c.optim.warmup_epochs = 0.25
    c.optim.end_lr_factor = 0.1
    c.optim.grad_clip_norm = 1.0

    if arg == "smoke":
        c.data.name = "digits"
        m.channels = (8, 16)
        c.train.batch_size = 64
        c.train.eval_batch_size = 200
        c.train.num_epochs = 8.0  # 21 steps an epoch on 1,397 digits
        c.train.eval_every_epochs = 4.0
        c.train.log_every_steps = 20
        c.optim.warmup_epochs = 0.5

    if arg.startswith("finetune"):
        c.optim.freeze = ("encoder/.*",)
        c.optim.learning_rate = 5e-4
        m.latent_noise_std = 0.3  # sigma_L, in the scaled units
        c.train.best_metric = "noisy_loss"
    if arg == "finetune_decoder":
        workdir = _repo_path(FINETUNE_FROM)
        arch, m.latent_scale = saved_autoencoder(workdir)  # scale 0 (missing) is refused
        for k, v in arch.items():
            m[k] = v
        c.init_from = finetune_init_from(workdir)
        m.perceptual_weight = 1.0
        m.perceptual_classifier = _repo_path(FINETUNE_CLASSIFIER)
        m.gan_weight = 0.0
        c.train.num_epochs = 3.0
        c.train.eval_every_epochs = 1.0
    if arg == "finetune_smoke":
        c.data.name = "digits"
        m.channels = (8, 16)
        m.latent_scale = 1.0
        m.gan_weight = 0.1
        m.gan_start_step = 10
        m.disc_channels = (8, 16)
        c.train.batch_size = 64
        c.train.eval_batch_size = 200
        c.train.num_epochs = 4.0  # 21 steps an epoch on 1,397 digits
        c.train.eval_every_epochs = 2.0
        c.train.log_every_steps = 20
        c.optim.learning_rate = 2e-3
        c.optim.warmup_epochs = 0.5
    return c
