"""TarFlow on MNIST (and the 8x8 digits smoke run).

Rows (``experiments/configs/tarflow_mnist.py:ROW``):
  * ``likelihood``: 4-128-4-4 (ml-tarflow's MNIST notebook size), uniform dequantisation, fp32,
    unconditional; reports bits/dim (ml-tarflow's protocol, ``- D log 128``).
  * ``conditional``: the notebook's run: 4-128-4-4, Gaussian noise 0.1, 10 classes, label
    dropout 0.1 (mean class embedding as the null class), lr 2e-3, batch 256, 100 epochs.
  * ``smoke``: 8x8 digits, patch 2, width 64, 2 blocks x 1 layer, conditional; < 60 s on a CPU.
Optimiser (ml-tarflow): AdamW (0.9, 0.95), weight decay 1e-4, one warmup epoch, cosine to 1e-6.
"""

from jaxflows.models.tarflow import default_model_config, official_recipe_config


def get_config(arg: str = "conditional"):
    """Returns the config of row ``arg`` (likelihood | conditional | smoke)."""
    c = official_recipe_config(learning_rate=2e-3)
    c.data.name = "mnist"
    c.train.batch_size = 256
    c.train.eval_batch_size = 500
    c.train.num_epochs = 100.0
    c.train.eval_every_epochs = 5.0
    c.dtype = "float32"
    if arg == "likelihood":
        c.model = default_model_config(noise_type="uniform", noise_std=0.0)
    elif arg == "conditional":
        c.model = default_model_config(noise_type="gaussian", noise_std=0.1, num_classes=10,
                                       drop_label=0.1)
    elif arg == "smoke":
        c.data.name = "digits"
        c.model = default_model_config(
            patch_size=2, channels=64, head_dim=32, num_blocks=2, layers_per_block=1,
            noise_type="gaussian", noise_std=0.1, num_classes=10, drop_label=0.1)
        c.train.batch_size = 64
        c.train.eval_batch_size = 200
        c.train.num_steps = 60
        c.train.eval_every_epochs = 1.0
        c.train.log_every_steps = 10
        c.optim.learning_rate = 2e-3
    else:
        raise ValueError(f"unknown row {arg!r}; rows: likelihood, conditional, smoke")
    return c
