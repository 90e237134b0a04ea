"""VAEs with volume-preserving (and other) flow posteriors on dynamically binarized MNIST.

Reproduces the MNIST rows of Tomczak & Welling, "Improving Variational Auto-Encoders using
Householder Flow" (arXiv 1611.09630v4) and "Improving Variational Auto-Encoders using convex
combination linear Inverse Autoregressive Flow" (arXiv 1706.02326).

Rows (``--config experiments/configs/vae_mnist.py:ROW``):
  vae, hf_t1, hf_t10, linear_iaf, ccliniaf_k3, ccliniaf_k5, planar_t10, iaf, sylvester: the paper
    recipe (below) with the named posterior flow;
  smoke: the plain VAE, small, on the embedded ``digits`` data (trains in well under 60 s on CPU);
  smoke_ccliniaf: the same with a ccLinIAF (K = 3) posterior.

Paper recipe (``jmtomczak/vae_vpflows``): gated 784-300-300 encoder / M-300-300 decoder, M = 40,
batch 100, Adam lr 5e-4, linear KL warm-up over 100 epochs, one evaluation per epoch, early
stopping after 50 evaluations without improvement of the validation -ELBO, validation/test binarized
once with seed 777, 5000 importance samples for the test log-likelihood, at most 2000 epochs (run a
smaller committed budget with ``--config.train.num_epochs=N``). The IAF and Sylvester rows use 4
steps (the defaults of ``riannevdberg/sylvester-flows``); IAF's MADE width is 320.
"""

from __future__ import annotations

import ml_collections

from jaxflows.train.config import base_config

# row -> (flow, num_flows, num_components)
_PAPER_ROWS = {
    "vae": ("none", 0, 1),
    "hf_t1": ("householder", 1, 1),
    "hf_t10": ("householder", 10, 1),
    "linear_iaf": ("linear_iaf", 1, 1),
    "ccliniaf_k3": ("cc_linear_iaf", 1, 3),
    "ccliniaf_k5": ("cc_linear_iaf", 1, 5),
    "planar_t10": ("planar", 10, 1),
    "iaf": ("iaf", 4, 1),
    "sylvester": ("sylvester", 4, 1),
}
_SMOKE_ROWS = {
    "smoke": ("none", 0, 1),
    "smoke_ccliniaf": ("cc_linear_iaf", 1, 3),
}
ROWS = tuple(_PAPER_ROWS) + tuple(_SMOKE_ROWS)


def get_config(arg: str = "vae") -> ml_collections.ConfigDict:
    """Returns the config of table row ``arg`` (see the module docstring for the rows)."""
    if arg not in ROWS:
        raise ValueError(f"unknown row {arg!r} for vae_mnist; valid rows: {', '.join(ROWS)}")
    c = base_config()
    c.seed = 1

    m = c.model
    m.name = "jaxflows.models.vae"
    m.flow, m.num_flows, m.num_components = (_PAPER_ROWS | _SMOKE_ROWS)[arg]
    m.latent_dim = 40
    m.hidden = (300, 300)
    m.likelihood = "bernoulli"
    m.warmup_epochs = 100.0
    m.num_is_samples = 5000
    m.is_chunk = 100
    m.num_is_examples = -1  # IS-NLL on the first N test images (-1: all); -ELBO always on all

    c.data.name = "mnist"
    c.data.transforms = ("binarize_eval(seed=777)",)

    c.train.batch_size = 100
    c.train.eval_batch_size = 500
    c.train.num_epochs = 2000.0
    c.train.eval_every_epochs = 1.0
    c.train.early_stopping_patience = 50
    c.train.best_metric = "neg_elbo"

    c.optim.name = "adam"
    c.optim.learning_rate = 5e-4

    if arg in _SMOKE_ROWS:
        c.data.name = "digits"
        m.latent_dim = 8
        m.hidden = (64, 64)
        m.warmup_epochs = 5.0
        m.num_is_samples = 100
        m.is_chunk = 50
        # batch sizes divisible by 8 so the smoke rows also run on 8 (fake) devices
        c.train.batch_size = 64
        c.train.eval_batch_size = 200
        c.train.num_epochs = 15.0
        c.train.early_stopping_patience = -1
        c.train.log_every_steps = 20
        c.optim.learning_rate = 1e-3
    return c
