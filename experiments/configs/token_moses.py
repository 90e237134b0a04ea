"""An autoregressive SELFIES token model on MOSES (``jaxflows.models.token_ar``).

Data: ``moses_selfies`` (MOSES molecules as SELFIES token ids, vocabulary from the training
split), padded with ``<stop>`` to the longest sequence + 1 by the ``pad_tokens`` transform --
the token sequences NF-BO (Lee et al., ICLR 2025; code ``mlvlab/NFBO``) models with its
SeqFlow. This model is the simple discrete baseline: a causal Transformer LM whose ``nll`` is
``-log p(molecule)`` in nats.

Rows (``--config experiments/configs/token_moses.py:ROW``):
  default: width 256, 4 layers, batch 256, AdamW 3e-4 with warm-up and cosine decay, 4 epochs
    of the 1.57M training molecules (prepare the data first: ``jaxflows data prepare
    moses_selfies``);
  smoke: width 32, 2 layers, batch 8, 200 steps; meant for a tiny ``moses_selfies`` built from
    a few dozen SMILES (point ``--config.data.data_dir`` at it); well under 30 s on a CPU.
"""

from __future__ import annotations

import ml_collections

from jaxflows.models.token_ar import default_model_config
from jaxflows.train.config import base_config

ROWS = ("default", "smoke")


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
    """Returns the config of row ``arg`` (see the module docstring)."""
    if arg not in ROWS:
        raise ValueError(f"unknown row {arg!r} for token_moses; valid rows: {', '.join(ROWS)}")
    c = base_config()
    c.seed = 0
    c.sharding_rules = tuple(c.sharding_rules) + (("layers", None),)  # scanned layers

    c.data.name = "moses_selfies"
    c.data.transforms = ("pad_tokens",)

    c.model = default_model_config(width=256, num_layers=4, head_dim=64, sample_batch_size=1000)

    c.train.batch_size = 256
    c.train.eval_batch_size = 1000  # a multiple of 8 (devices)
    c.train.num_epochs = 4.0
    c.train.eval_every_epochs = 0.5
    c.train.log_every_steps = 100
    c.train.best_metric = "loss"

    c.optim.name = "adamw"
    c.optim.learning_rate = 3e-4
    c.optim.weight_decay = 0.01
    c.optim.schedule = "warmup_cosine"
    c.optim.warmup_epochs = 0.05
    c.optim.grad_clip_norm = 1.0

    if arg == "smoke":
        c.model = default_model_config(width=32, num_layers=2, head_dim=16, mlp_ratio=2)
        c.train.batch_size = 8
        c.train.eval_batch_size = 8
        c.train.num_epochs = 1.0
        c.train.num_steps = 200
        c.train.eval_every_epochs = 100.0  # the fixture's train split is about one batch
        c.train.log_every_steps = 20
        c.optim.name = "adam"
        c.optim.learning_rate = 3e-3
        c.optim.weight_decay = 0.0
        c.optim.schedule = "constant"
        c.optim.warmup_epochs = 0.0
    return c
