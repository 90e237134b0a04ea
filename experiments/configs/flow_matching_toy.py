"""Flow-matching priors on the 2-D toy densities of "Aligning Latent Spaces with Flow Priors"
(arXiv 2506.05240, Sec. 4.1 and App. B; official code ``liyz15/Aligning-Latent-Spaces-with-Flow-
Priors``, ``continuous_tokenizer/toy_examples/flow_train_then_guide.py``).

Task ``jaxflows.models.flow_matching`` on ``toy2d/<density>`` (50,000 train / 5,000 validation /
5,000 test points, normalised to unit pooled std as in the paper). Rows
(``--config experiments/configs/flow_matching_toy.py:ROW``), ``DENSITY`` one of ``gmm5, grid,
moons, rings, spiral, swissroll``:

  paper_DENSITY: the paper's recipe: AdaLN MLP 512 wide with 4 residual blocks, Adam
    (0.9, 0.999), no weight decay, constant lr 1e-4, batch 256, 100k steps (the paper samples a
    fresh batch each step; here the 50,000 training points are reshuffled every epoch). The exact
    ODE NLL of all 5,000 test points at the end;
  DENSITY (CPU rows): 128 wide, 4 blocks, Adam lr 1e-3 with one warm-up epoch and cosine decay
    to 0, gradient-norm clip 1, batch 256, 8,000 steps (2-4 minutes each on 2 shared CPU cores);
    ODE NLL of the first 1,000 test points;
  smoke: moons, 32 wide, 2 blocks, 150 steps (seconds).

Validation (every 10 epochs; the best parameters are kept) is the flow-matching loss with 8
``(t, eps)`` draws per point; ``jaxflows eval`` adds the exact ODE NLL (Tsit5, rtol = atol =
1e-5, exact trace), comparable with the mean ``-log_density`` of the same test points.
"""

from __future__ import annotations

import ml_collections

from jaxflows.data.toy2d import NAMES
from jaxflows.train.config import base_config

#: CPU rows: (width, num_blocks, num_steps, learning rate)
CPU_ROW = (128, 4, 8000, 1e-3)
PAPER_ROW = (512, 4, 100_000, 1e-4)
ROWS = (*NAMES, *(f"paper_{d}" for d in NAMES), "smoke")


def get_config(arg: str = "gmm5") -> ml_collections.ConfigDict:
    """Returns the config of row ``arg`` (see the module docstring for the rows)."""
    if arg not in ROWS:
        raise ValueError(f"unknown row {arg!r} for flow_matching_toy; valid rows: "
                         f"{', '.join(ROWS)}")
    paper = arg.startswith("paper_")
    density = "moons" if arg == "smoke" else arg.removeprefix("paper_")
    width, blocks, num_steps, lr = PAPER_ROW if paper else CPU_ROW

    c = base_config()
    c.seed = 0
    m = c.model
    m.name = "jaxflows.models.flow_matching"  # keys: flow_matching.default_model_config()
    m.field = "x"
    m.width = width
    m.num_blocks = blocks
    m.freq_dim = 256
    m.time_scale = 1.0
    m.loss_repeats = 1
    m.eval_repeats = 8
    m.nll_examples = 5000 if paper else 1000
    m.nll_batch = 500
    m.solver = "tsit5"
    m.rtol = 1e-5
    m.atol = 1e-5
    m.euler_steps = 100
    m.max_steps = 4096
    m.trace = "auto"
    m.exact_trace_max_dim = 16

    c.data.name = f"toy2d/{density}"

    # batch sizes divisible by 8 (devices); 1000 divides the 5,000-point eval and test splits
    c.train.batch_size = 256
    c.train.eval_batch_size = 1000
    c.train.num_steps = num_steps
    c.train.eval_every_epochs = 10.0  # 50,000 / 256 = 195 steps an epoch
    c.train.log_every_steps = 100
    c.train.steps_per_dispatch = 10
    c.train.best_metric = "loss"

    c.optim.name = "adam"
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.weight_decay = 0.0
    c.optim.learning_rate = lr
    if paper:
        c.optim.schedule = "constant"
        c.optim.warmup_epochs = 0.0
        c.optim.grad_clip_norm = 0.0
    else:
        c.optim.schedule = "warmup_cosine"
        c.optim.warmup_epochs = 1.0
        c.optim.grad_clip_norm = 1.0

    if arg == "smoke":
        m.width = 32
        m.num_blocks = 2
        m.freq_dim = 32
        m.nll_examples = 16
        m.nll_batch = 16
        m.rtol = 1e-3
        m.atol = 1e-3
        c.train.batch_size = 128
        c.train.num_steps = 150
        c.train.eval_every_epochs = 0.25  # ~100 steps
        c.train.log_every_steps = 25
        c.train.steps_per_dispatch = 5
        c.optim.learning_rate = 3e-3
        c.optim.schedule = "constant"
        c.optim.warmup_epochs = 0.0
    return c
