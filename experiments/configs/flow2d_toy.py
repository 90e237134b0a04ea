"""RealNVP density estimation on the 2-D toy densities of "Aligning Latent Spaces with Flow
Priors" (arXiv 2506.05240, App. B; official code ``liyz15/Aligning-Latent-Spaces-with-Flow-Priors``,
``continuous_tokenizer/toy_examples/``).

Rows (``--config experiments/configs/flow2d_toy.py:ROW``):
  gmm5, grid, moons, rings, spiral, swissroll: the task ``jaxflows.models.flow2d`` on
    ``toy2d/<row>`` (50,000 train / 5,000 validation / 5,000 test points, normalised to unit
    pooled std as in the paper; the datasets are embedded and built on first use). The NLL (nats)
    can be compared with the exact test-set NLL of the density, the mean of ``-log_density``
    stored with each test point;
  smoke: moons with a tiny flow, 200 steps (well under a minute on a CPU).

Schedule: Adam, batch 256, linear warm-up over one epoch then cosine decay to 0, gradient-norm
clip 1; 20k steps for the easy rows (gmm5, moons), 40k with a wider, deeper flow for the others.
The paper trains a flow-matching prior on these toys (100k steps, lr 1e-4, batch 256); this config
fits a normalizing flow to the same data, which gives exact likelihoods to compare against.
"""

from __future__ import annotations

import ml_collections

from jaxflows.train.config import base_config

# row -> (num_layers, hidden widths, num_steps)
_ROWS = {
    "gmm5": (8, (128, 128), 20000),
    "moons": (8, (128, 128), 20000),
    "grid": (12, (256, 256), 40000),
    "rings": (12, (256, 256), 40000),
    "spiral": (12, (256, 256), 40000),
    "swissroll": (12, (256, 256), 40000),
}
ROWS = (*_ROWS, "smoke")


def get_config(arg: str = "moons") -> ml_collections.ConfigDict:
    """Returns the config of row ``arg`` (see the module docstring for the rows)."""
    if arg not in ROWS:
        raise ValueError(f"unknown row {arg!r} for flow2d_toy; valid rows: {', '.join(ROWS)}")
    c = base_config()
    c.seed = 0

    density = "moons" if arg == "smoke" else arg
    num_layers, hidden, num_steps = _ROWS[density]
    m = c.model
    m.name = "jaxflows.models.flow2d"  # keys: jaxflows.models.flow2d.default_model_config()
    m.num_layers = num_layers
    m.hidden = hidden
    m.max_log_scale = 3.0
    m.actnorm = True
    m.permutation = "reverse"
    m.perm_seed = 0

    c.data.name = f"toy2d/{density}"

    # batch sizes divisible by 8 (devices); 1000 divides the 5,000-point eval and test splits
    c.train.batch_size = 256
    c.train.eval_batch_size = 1000
    c.train.num_steps = num_steps
    c.train.eval_every_epochs = 5.0  # 50,000 / 256 = 195 steps an epoch
    c.train.log_every_steps = 100
    c.train.best_metric = "nll"

    c.optim.name = "adam"
    c.optim.learning_rate = 1e-3
    c.optim.schedule = "warmup_cosine"
    c.optim.warmup_epochs = 1.0
    c.optim.grad_clip_norm = 1.0

    if arg == "smoke":
        m.num_layers = 4
        m.hidden = (32, 32)
        c.train.batch_size = 128
        c.train.num_steps = 200
        c.train.eval_every_epochs = 0.25  # ~100 steps
        c.train.log_every_steps = 20
        c.optim.learning_rate = 2e-3
        c.optim.schedule = "constant"
        c.optim.warmup_epochs = 0.0
    return c
