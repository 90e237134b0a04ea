"""Convolutional autoencoders of MNIST with a 7 x 7 x 4 latent grid (task
``jaxflows.models.autoencoder``), the autoencoders of the MNIST flow-prior alignment experiment
(``experiments/align_mnist.py``; Li et al. 2025, "Aligning Latent Spaces with Flow Priors", arXiv
2506.05240) and the latent space a later latent flow reuses.

Rows (``--config experiments/configs/autoencoder_mnist.py:ROW``):

  ae: plain (deterministic) autoencoder, ``kl_weight = 0``;
  kl: KL-regularised autoencoder (diagonal Gaussian posterior, ``kl_weight = 1e-6``, the latent-
    diffusion recipe); the low-level alignment target of align_mnist;
  smoke: the ``ae`` row, narrower, on the embedded 8 x 8 ``digits`` (2 x 2 x 4 latents; seconds).

Recipe (sized for the CPU budget of align_mnist, 1 core): encoder 28x28 conv3x3(16) -> stride-2
conv3x3(16) -> 14x14 -> stride-2 conv3x3(32) -> 7x7 -> conv3x3(4) (the decoder mirrors it with
nearest-neighbour upsampling), SiLU, pixels in [-1, 1] with an MSE loss; Adam (0.9, 0.999), lr 2e-3
with a 0.25-epoch warm-up and cosine decay to 10%, gradient-norm clip 1, batch 128, 1.5 epochs of
the 50,000 training images (585 steps, about 80 s on one CPU core; longer with
``--config.train.num_epochs=N``), validation loss every half epoch (the best parameters are
kept). The flow-prior alignment term is off here; align_mnist sets ``config.model.align``.
"""

from __future__ import annotations

import ml_collections

from jaxflows.models.autoencoder import default_model_config
from jaxflows.train.config import base_config

ROWS = ("ae", "kl", "smoke")


def get_config(arg: str = "ae") -> ml_collections.ConfigDict:
    """Returns the config of row ``arg`` (see the module docstring for the rows)."""
    if arg not in ROWS:
        raise ValueError(f"unknown row {arg!r} for autoencoder_mnist; valid rows: "
                         f"{', '.join(ROWS)}")
    c = base_config()
    c.seed = 0
    c.model = default_model_config()  # keys: jaxflows.models.autoencoder
    m = c.model
    m.mode = "kl" if arg == "kl" else "ae"
    m.kl_weight = 1e-6 if arg == "kl" else 0.0
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
    return c
