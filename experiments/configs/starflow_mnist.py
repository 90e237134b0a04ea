"""STARFlow on MNIST latents, and a pixel TarFlow of equal size for the latent-vs-pixel comparison
(Gu et al. 2025, "STARFlow: Scaling Latent Normalizing Flows for High-resolution Image
Synthesis", arXiv 2506.06276).

Rows (``experiments/configs/starflow_mnist.py:ROW``):
  * ``cpu``: a class-conditional STARFlow ``6(3)-128`` (two shallow blocks of 2 layers, then a
    deep block of 6 next to the prior; width 128, head dim 32, RoPE, SOS, softplus, soft clip,
    final norm) on the 7x7x4 latents of a trained MNIST autoencoder in ``runs/starflow_ae``
    (49 tokens of 4 dims, patch 1). The autoencoder is the ``autoencoder`` params subtree,
    loaded from that workdir's best params with ``config.init_from`` and frozen with
    ``config.optim.freeze``; its architecture (``config.model.ae``) and latent scale are read from
    the workdir's ``config.json`` and ``latent_scale.json`` when the config loads. Latents are
    ``E(x) * scale + 0.3 eps`` (the paper's sigma_L), labels through the one-hot prefix with
    dropout 0.1, STARFlow's loss with the 1e-4 latent-norm term. About 2.0M flow parameters
    (+18k frozen autoencoder). Sampling: guidance 1.0 with the Gaussian-product rule, one-step
    score denoising, then the frozen decoder.
  * ``pixel_cpu``: the pixel-space baseline, a class-conditional TarFlow 4-128-5-2 (patch 4 on
    28x28 pixels: also 49 tokens, of 16 dims; 5 blocks of 2 layers, width 128, head dim 32,
    learned positions, class embeddings, Gaussian noise 0.1 in [-1, 1] pixel units, label
    dropout 0.1): about 2.05M parameters, within 3% of ``cpu``'s total. Same optimiser, batch
    and schedule as ``cpu``.
  * ``uniform_cpu``: ``cpu`` with a uniform-depth layout of the same size, ``2-2-2-2-2``: five
    blocks of 2 layers (TarFlow's layout, that of ``pixel_cpu``) instead of ``6(3)``, same width,
    head dim and everything else; the same 10 Transformer layers, so the parameter count is
    within 1% of ``cpu``'s. For the sampling-speed comparison of the deep-shallow layout
    (``experiments/starflow_mnist.py``: 3 x 49 sequential token steps against 5 x 49);
    untrained parameters suffice for timing.
  * ``smoke``: ``cpu``'s structure, tiny, on the embedded 8x8 digits with a randomly initialised
    frozen autoencoder (``autoencoder='random'``, one stride-2 level: 4x4x4 latents), so it
    needs no pretrained workdir; < 60 s on a CPU.

Recipe of ``cpu`` / ``pixel_cpu`` (sized for about 20-30 minutes on a quiet 2-core CPU, about
0.25-0.4 s a step): batch 64, 5 epochs of the 50,000 training images (3,905 steps); AdamW (0.9,
0.95), weight decay 1e-4, lr 1e-3 with a quarter-epoch warmup and cosine decay to 1e-6, global-norm
clipping at 1 (STARFlow-V's clip; the paper's lr 1e-4 is for batch 512 and 1.4B parameters).

**The autoencoder workdir** (before ``cpu``)::

    jaxflows train --config experiments/configs/autoencoder_mnist.py:kl --workdir runs/starflow_ae

and its latent scale (``1 / std`` of the posterior means of the training images)::

    from jaxflows.data.registry import load_source
    from jaxflows.models import autoencoder as ae
    task, params = ae.load_autoencoder("runs/starflow_ae")
    src = load_source("mnist", "train")
    images = np.stack([src[i]["image"] for i in range(len(src))])
    ae.save_latent_scale("runs/starflow_ae", ae.latent_scale(task, params, images))

Without ``latent_scale.json`` the task stops with a ConfigError saying so (``jaxflows info``
needs ``--config.model.latent_scale=1`` then).
"""

import os

from tarflow_recipe import official_recipe_config

from jaxflows.models import starflow_config as sc
from jaxflows.models import tarflow_config as tc

ROWS = ("cpu", "pixel_cpu", "uniform_cpu", "smoke")
#: ``layers_per_block`` of the deep-shallow ``cpu`` row and of its uniform-depth twin
DEEP_SHALLOW_LAYERS = (2, 2, 6)
UNIFORM_LAYERS = (2, 2, 2, 2, 2)
#: the autoencoder workdir of the ``cpu`` row, relative to the repository root
AE_WORKDIR = os.path.join("runs", "starflow_ae")


def _repo_path(rel: str) -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.join(os.path.dirname(os.path.dirname(here)), rel)


def _cpu_schedule(c):
    c.train.batch_size = 64
    c.train.eval_batch_size = 500
    c.train.num_epochs = 5.0
    c.train.eval_every_epochs = 1.0
    c.train.log_every_steps = 50
    c.optim.learning_rate = 1e-3
    c.optim.end_lr_factor = 1e-6 / 1e-3
    c.optim.warmup_epochs = 0.25
    c.optim.grad_clip_norm = 1.0
    return c


def get_config(arg: str = "cpu"):
    """Returns the config of row ``arg`` (cpu | pixel_cpu | uniform_cpu | smoke)."""
    if arg not in ROWS:
        raise ValueError(f"unknown row {arg!r}; rows: {', '.join(ROWS)}")
    c = official_recipe_config(learning_rate=1e-3)
    c.data.name = "mnist"
    c.data.image_shape = (28, 28, 1)
    c.data.num_classes = 10
    c.dtype = "float32"
    if arg in ("cpu", "uniform_cpu"):
        workdir = _repo_path(AE_WORKDIR)
        ae = sc.ae_config_from_workdir(workdir) or sc.default_ae_config(mode="kl")
        layers = DEEP_SHALLOW_LAYERS if arg == "cpu" else UNIFORM_LAYERS
        c.model = sc.default_model_config(
            width=128, layers_per_block=layers, head_dim=32, num_classes=10,
            autoencoder=workdir, ae=ae, latent_scale=sc.latent_scale_from_workdir(workdir),
            noise_std=0.3, drop_label=0.1, sample_guidance=1.0, sample_rule="gaussian")
        c.init_from = ({"path": workdir, "source": "best_params", "target": "autoencoder"},)
        c.optim.freeze = ("autoencoder/.*",)
        _cpu_schedule(c)
    elif arg == "pixel_cpu":
        c.model = tc.default_model_config(
            patch_size=4, channels=128, head_dim=32, num_blocks=5, layers_per_block=2,
            num_classes=10, drop_label=0.1, noise_type="gaussian", noise_std=0.1,
            sample_guidance=1.0)
        _cpu_schedule(c)
    else:  # smoke
        c.data.name = "digits"
        c.data.image_shape = ()
        c.data.num_classes = 0
        c.model = sc.default_model_config(
            width=64, layers_per_block=(1, 1, 2), head_dim=32, num_classes=10,
            autoencoder="random", ae=sc.default_ae_config(channels=(8,)), latent_scale=8.0,
            noise_std=0.3, drop_label=0.1)
        c.optim.freeze = ("autoencoder/.*",)
        c.train.batch_size = 64
        c.train.eval_batch_size = 200
        c.train.num_steps = 60
        c.train.eval_every_epochs = 1.0
        c.train.log_every_steps = 10
        c.optim.learning_rate = 1e-3
        c.optim.end_lr_factor = 1e-3
    return c
