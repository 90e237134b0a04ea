"""SeqFlow (NF-BO's autoregressive flow over SELFIES tokens) pretrained on MOSES.

Task ``jaxflows.models.seqflow_task`` on ``moses_selfies`` (1,574,663 training molecules after
RDKit canonicalisation; ``L`` = 56 = longest SELFIES + 1), padded with ``<stop>`` by
``pad_tokens``. Prepare the data once: ``jaxflows data prepare moses_selfies``.

Rows (``--config experiments/configs/seqflow_moses.py:ROW``):
  paper: the official configuration (``mlvlab/NFBO`` ``config/generative_model/seqflow.yaml``):
    F = 40, 5 flow layers, each a 2-layer LSTM of 500 with dropout 0.2, 10 NLSq couplings with
    MLPs 2x100, positional one-hot of ``max_T`` = 288, sigma 0.1, 100 rejection rounds,
    lambda = 1; the official pretraining loop's Adam 1e-3, batch 128, gradient-norm clip 1.
    31.3M parameters (``jaxflows info``). 10 epochs: meant for an accelerator;
  cpu: the same model family shrunk to train on a 2-core CPU in about two hours: F = 40,
    3 flow layers, LSTM 2x128, 4 couplings with MLPs 2x64, positional one-hot of L = 56;
    Adam 1e-3, batch 128, clip 1, 2,000 steps (about 0.16 epoch: 2-core CPUs are slow for
    LSTMs; the model reconstructs exactly from the start, the density keeps improving);
  smoke: a tiny model for a tiny ``moses_selfies`` (tests), seconds.
"""

from __future__ import annotations

import ml_collections

from jaxflows.models.seqflow_task import default_model_config
from jaxflows.train.config import base_config

ROWS = ("paper", "cpu", "smoke")


def get_config(arg: str = "cpu") -> ml_collections.ConfigDict:
    """Returns the config of row ``arg`` (see the module docstring)."""
    if arg not in ROWS:
        raise ValueError(f"unknown row {arg!r} for seqflow_moses; valid rows: {', '.join(ROWS)}")
    c = base_config()
    c.seed = 0
    c.data.name = "moses_selfies"
    c.data.transforms = ("pad_tokens",)

    c.model = default_model_config()   # the paper's sizes
    c.train.batch_size = 128
    c.train.eval_batch_size = 1000
    c.train.num_epochs = 10.0
    c.train.eval_every_epochs = 1.0
    c.train.log_every_steps = 100
    c.train.best_metric = "loss"

    c.optim.name = "adam"
    c.optim.learning_rate = 1e-3
    c.optim.weight_decay = 0.0
    c.optim.schedule = "constant"
    c.optim.warmup_epochs = 0.0
    c.optim.grad_clip_norm = 1.0

    if arg == "cpu":
        c.model = default_model_config(hidden=128, num_flow_layers=3, num_couplings=4,
                                       coupling_hidden=64, max_len=0)
        c.train.num_steps = 2000
        c.train.eval_every_epochs = 0.2
        c.train.eval_batch_size = 500
    elif arg == "smoke":
        c.model = default_model_config(features=8, hidden=16, num_flow_layers=2,
                                       num_couplings=2, coupling_hidden=16, max_len=0,
                                       dequant_tries=10, sample_batch_size=16)
        c.train.batch_size = 8
        c.train.eval_batch_size = 8
        c.train.num_epochs = 1.0
        c.train.num_steps = 60
        c.train.eval_every_epochs = 100.0
        c.train.log_every_steps = 20
        c.optim.learning_rate = 3e-3
    return c
