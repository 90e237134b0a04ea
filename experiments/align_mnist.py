"""Flow-prior alignment of an MNIST autoencoder's latents (arXiv 2506.05240's tokenizer experiment
at MNIST scale): reconstruction, generation (FD-MNIST) and a k-NN NLL proxy per target and weight.

    python experiments/align_mnist.py --runs_dir runs/align_mnist              # the full table
    python experiments/align_mnist.py --rows none,semantic_0.01 --runs_dir runs/align_mnist
    python experiments/align_mnist.py --quick --data_dir DIR --runs_dir RUNS --out OUT.json

"Aligning Latent Spaces with Flow Priors" (Li et al. 2025; official code
``liyz15/Aligning-Latent-Spaces-with-Flow-Priors``) trains a flow-matching prior on target
features, freezes it, and adds ``lambda * L_align`` of the tokenizer's latents to the tokenizer's
loss (Table 1: targets; Table 2b: lambda). Here, on MNIST, with the convolutional autoencoder of
:mod:`jaxflows.models.autoencoder` (7 x 7 x 4 latents, aligned per spatial position: 49 tokens of
4 dims, the paper's per-token layout):

1. **classifier**: the project's DigitCNN (:mod:`jaxflows.eval.classifier`) trained on the training
   split (``--classifier_steps``), cached in ``RUNS_DIR/classifier``; its 128-d penultimate
   features give the semantic target and FD-MNIST;
2. **KL autoencoder** (``experiments/configs/autoencoder_mnist.py:kl``, ``kl_weight = 1e-6``),
   trained by the engine: the low-level target's source and a row of its own (Table 1's "KL");
3. **targets** (``RUNS_DIR/targets``), one 4-d vector per sample, each scaled by one scalar to unit
   std over all entries (the flow's noise is N(0, I); a target's scale would otherwise set the
   size of ``L_align`` and so the meaning of lambda):
   ``semantic``: classifier features of the 50,000 training images, ``FixedProjection`` 128 -> 4
   (seed 42, the paper's fixed Gaussian matrix); ``lowlevel``: the KL autoencoder's posterior-mean
   latent tokens of the training images (4-d already: no projection), as many as there are
   training images (50,000 of the 2.45M, drawn at random), times its latent scale;
4. **priors** (``RUNS_DIR/priors/<target>``): ``jaxflows.models.flow_matching`` (AdaLN MLP, see
   :func:`prior_config`) trained through the engine's pieces (``build``, ``multi_step``) on the
   target array, saved as a workdir that ``config.model.align.prior_workdir`` loads, frozen;
5. **autoencoders** (``RUNS_DIR/ae/<row>``): ``autoencoder_mnist.py:ae`` trained by the engine
   (``jaxflows.train.train``), unaligned (row ``none``) and with ``lambda * L_align`` of every
   latent token under each prior for lambda in ``--lambdas`` (``align.repeats = 1``: each token
   gets one ``(t, eps)`` draw per step; 49 tokens per image already give 49 draws, where the
   official code repeats each of its 64 tokens 4 times; ``reduction = 'mean'`` as officially);
6. **per autoencoder** (``RUNS_DIR/gen/<row>``): the latent scale (``1 / std`` of the training
   latents, saved in the AE workdir); one latent generator per seed of ``--gen_seeds``
   (``RUNS_DIR/gen/<row>/steps<N>_seed<S>``), a flow-matching model on the scaled training
   latents flattened to 196-d (:func:`generator_config`, the same budget for every row:
   ``--gen_steps`` steps of batch 256), ``--num_samples`` samples by Euler (``--euler_steps``,
   noise at t = 0 to data at t = 1), divided by the scale and decoded; then the metrics below.

Metrics (one row per autoencoder; ``experiments/results/align_mnist.json``):

* ``mse``, ``psnr``: test-set reconstruction from the posterior mean, pixels in [0, 1], decoder
  output clipped; ``mse`` is the mean over pixels and images, ``psnr`` the mean over images of
  ``10 log10(1 / mse_image)`` (the engine's ``jaxflows eval`` of the best-validation params);
* ``fd_mnist``: Fréchet distance between DigitCNN features of the ``--num_samples`` decoded
  generator samples and of the 10,000 test images, the mean over the generator seeds
  (``fd_mnist_per_seed``; ``fd_mnist_sem`` its standard error: how much of a difference between
  rows is generator noise); ``rfd_mnist`` the same for the test reconstructions (the paper's
  rFID analogue);
* ``knn_nll``, the k-NN NLL proxy (the paper diagnoses alignment with a k-NN estimate built on
  ``log r_k(y)`` of 10k latents, Faiss, ``k`` not reported; the exact quantity is defined here):
  for ``--knn_queries`` latent tokens ``y`` (one spatial position drawn at random from each of
  the first ``--knn_queries`` test images; the raw, unscaled posterior mean, the tensor that
  ``L_align`` acts on) and the ``N = 50,000`` samples of the target distribution the prior was
  trained on, ``r_k(y)`` is the Euclidean distance to the ``k``-th nearest target sample
  (``k = --knn_k = 5``) and the k-NN density estimate gives
  ``-log p_hat(y) = d log r_k(y) + log V_d + log N - log k`` (``d = 4``, ``V_d`` the volume of the
  unit ``d``-ball; Loftsgaarden & Quesenberry 1965); ``knn_nll`` is its mean over the queries for
  the row's own target (``None`` for the unaligned rows), ``knn_nll_semantic`` and
  ``knn_nll_lowlevel`` are given for every row (so the unaligned rows are the baselines), and
  ``log_rk_*`` the mean ``log r_k``. (The ``kl`` row's raw latents are the low-level target only
  up to its latent scale, so its ``knn_nll_lowlevel`` is not small);
* ``lalign_semantic``, ``lalign_lowlevel``: mean ``L_align`` of the test latent tokens under each
  frozen prior (first ``--lalign_images`` test images, 4 draws per token);
* ``latent_fd`` and ``rfd_noised_<sigma>`` (:func:`decomposition`): the generator's error in its
  own latent space, and what a latent error of size sigma costs after decoding;
* ``analysis`` (:func:`analysis`): the best aligned row against ``none`` with the generator-seed
  standard error, and the Spearman correlations of ``fd_mnist`` with the other columns;
* ``latent_scale``; training wall times; per-epoch validation curves of each autoencoder and the
  loss curves of the priors and generators.

Every stage caches its output under ``--runs_dir`` (an interrupted run resumes: the engine resumes
the autoencoders, finished priors, generators and rows are reused; use a new ``--runs_dir`` after
changing the recipe). ``--rows`` picks rows
(``kl``, ``none``, ``semantic_<lambda>``, ``lowlevel_<lambda>``; default all). ``--quick`` shrinks
everything on the embedded 8 x 8 ``digits`` (rows ``kl``, ``semantic_0.01``, ``lowlevel_0.01``;
a test).

CPU budget: the full table (a classifier of 600 steps, 2 priors of 2,000 steps, 10 autoencoders of
1.5 epochs = 585 steps, 10 generators of 1,500 steps, 10 x 10,000 samples) is sized to finish
within an hour on one core of a 2-core x86 machine beside another job (rates measured on one
core: a plain autoencoder step of batch 128 about 0.14 s, an aligned one 0.22 s, a generator
step about 0.04 s, a classifier step 0.27 s; about 40-45 minutes in all; see the JSON's
``wall_time_s`` and ``timings``).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxflows.eval import mnist_classifier  # noqa: E402
from jaxflows.eval.mnist_classifier import features, load_split  # noqa: E402
from jaxflows.provenance import read_json, repo_relative  # noqa: E402

log = logging.getLogger("align_mnist")

TARGETS = ("semantic", "lowlevel")
#: table columns (the rest of each row stays in the JSON)
COLUMNS = ["autoencoder", "target", "lambda", "mse", "psnr", "rfd_mnist", "fd_mnist",
           "fd_mnist_sem", "latent_fd", "rfd_noised_0.1", "rfd_noised_0.3", "knn_nll",
           "knn_nll_semantic", "knn_nll_lowlevel", "lalign_semantic", "lalign_lowlevel",
           "latent_scale", "ae_train_s"]
LAMBDAS = "0.001,0.005,0.01,0.05"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs_dir", default=os.path.join("runs", "align_mnist"))
    p.add_argument("--out", default=os.path.join(REPO, "experiments", "results",
                                                 "align_mnist.json"))
    p.add_argument("--data_dir", default="", help="dataset cache ('' = the default)")
    p.add_argument("--rows", default="", help="comma-separated rows ('' = all)")
    p.add_argument("--lambdas", default=LAMBDAS)
    p.add_argument("--ae_epochs", type=float, default=1.5)
    p.add_argument("--classifier_steps", type=int, default=600)
    p.add_argument("--prior_steps", type=int, default=2000)
    p.add_argument("--gen_steps", type=int, default=1500)
    p.add_argument("--gen_seeds", default="",
                   help="comma-separated generator seeds per autoencoder ('' = --seed)")
    p.add_argument("--num_samples", type=int, default=10_000)
    p.add_argument("--euler_steps", type=int, default=50)
    p.add_argument("--knn_k", type=int, default=5)
    p.add_argument("--knn_queries", type=int, default=10_000)
    p.add_argument("--lalign_images", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[],
                   help="config overrides for every autoencoder, e.g. --set train.batch_size=64")
    p.add_argument("--quick", action="store_true", help="everything tiny, on digits (a test)")
    args = p.parse_args(argv)
    args.dataset = "mnist"
    if args.quick:
        args.dataset = "digits"
        if args.lambdas == LAMBDAS:
            args.lambdas = "0.01"
        for key, value in dict(ae_epochs=3.0, classifier_steps=40, prior_steps=60, gen_steps=60,
                               num_samples=200, euler_steps=8, knn_queries=200,
                               lalign_images=50).items():
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, value)
    args.lambda_values = [float(v) for v in args.lambdas.split(",") if v]
    return args


def all_rows(lambdas) -> list[dict]:
    """``[{'name', 'autoencoder', 'target', 'lambda'}]`` in table order."""
    rows = [dict(name="kl", autoencoder="kl", target="none", lam=0.0),
            dict(name="none", autoencoder="ae", target="none", lam=0.0)]
    for target in TARGETS:
        for lam in lambdas:
            rows.append(dict(name=f"{target}_{lam:g}", autoencoder="ae", target=target, lam=lam))
    return rows




# --- the classifier --------------------------------------------------------------------------

def get_classifier(args, train, test) -> tuple[dict, dict]:
    """DigitCNN params (cached in ``RUNS_DIR/classifier``, retrained unless its ``info.json``
    has this run's dataset, steps and seed) and ``{steps, test_accuracy, ...}``."""
    path = os.path.join(args.runs_dir, "classifier", "params.msgpack")
    return mnist_classifier.get_classifier(path, train, test, steps=args.classifier_steps,
                                           seed=args.seed, dataset=args.dataset, check_key=True)


# --- flow-matching models on arrays (priors and generators) -------------------------------------

def flow_config(dim: int, n: int, *, width: int, blocks: int, freq: int, steps: int,
                batch: int, lr: float, seed: int, name: str):
    """Engine config of a ``jaxflows.models.flow_matching`` model of ``dim``-d vectors ``x``
    trained ``steps`` steps on ``n`` points (Adam, 5% warm-up then cosine to 0, clip 1; time
    features of ``1000 t``, the DiT/MAR convention)."""
    from jaxflows.models import flow_matching
    from jaxflows.train.config import base_config

    c = base_config()
    c.seed = seed
    c.model = flow_matching.default_model_config()
    m = c.model
    m.field = "x"
    m.width, m.num_blocks, m.freq_dim = width, blocks, freq
    m.time_scale = 1000.0
    m.loss_repeats = 1
    m.eval_repeats = 4
    m.nll_examples = 0
    m.solver = "euler"
    c.data.name = f"in_memory/{name}"  # arrays handed to the engine's steps, not a dataset
    c.train.batch_size = batch
    c.train.eval_batch_size = 1000 if n >= 1000 else 8 * max(1, n // 8)
    c.train.num_steps = steps
    c.train.eval_every_epochs = 0.0
    c.train.progress_bar = False
    c.optim.name = "adam"
    c.optim.learning_rate = lr
    c.optim.schedule = "warmup_cosine"
    c.optim.warmup_epochs = 0.05 * steps / max(1, n // batch)
    c.optim.grad_clip_norm = 1.0
    return c


def prior_config(n: int, args):
    """The frozen priors: AdaLN MLP 64 wide, 3 blocks, 32 time features; batch 512, lr 2e-3
    (small, because ``L_align`` runs it on every latent token of every training step)."""
    return flow_config(4, n, width=64, blocks=3, freq=32, steps=args.prior_steps,
                       batch=64 if args.quick else 512, lr=2e-3, seed=args.seed, name="prior")


def generator_config(dim: int, n: int, args):
    """The latent generator: AdaLN MLP 256 wide, 3 blocks, 64 time features on the flattened
    scaled latents; batch 256, lr 1e-3; ``--gen_steps`` steps (the same for every row)."""
    return flow_config(dim, n, width=256, blocks=3, freq=64, steps=args.gen_steps,
                       batch=64 if args.quick else 256, lr=1e-3, seed=args.seed,
                       name="latents")


_RUNS: dict = {}


def _build_cached(config, info):
    """``build(config, info)``, reused for an equal config and data spec: every generator (and
    both priors) share one set of compiled steps."""
    from jaxflows.train.loop import build

    key = json.dumps([config.to_dict(), {k: [list(v.shape), str(v.dtype)] for k, v in
                                         info.element_spec.items()}, info.num_train],
                     sort_keys=True, default=str)
    if key not in _RUNS:
        _RUNS[key] = build(config, info)
    return _RUNS[key]


def train_flow(workdir: str, config, x: np.ndarray, x_val: np.ndarray, *,
               log_every: int = 100) -> dict:
    """Trains ``config`` on the rows of ``x: [N, d]`` with the engine's pieces
    (:func:`jaxflows.train.loop.build`, its ``multi_step``, the input pipeline,
    ``evaluate_params``) and saves the workdir like
    ``jaxflows train`` does (``config.json``, an Orbax checkpoint whose ``best_params`` are the
    final params), so :func:`jaxflows.align.load_prior` reads it. Returns (and caches in
    ``done.json``) the loss curve, the validation flow-matching loss and the wall time; a
    finished workdir is reused."""
    from jaxflows.data import pipeline
    from jaxflows.data.registry import InMemorySource
    from jaxflows.provenance import write_json_atomic
    from jaxflows.train.checkpoint import Checkpointer
    from jaxflows.train.loop import evaluate_params
    from jaxflows.train.task import DataInfo

    done = os.path.join(workdir, "done.json")
    if os.path.exists(done):
        return read_json(done)
    if os.path.isdir(os.path.join(workdir, "checkpoints")):  # an interrupted save: start over
        import shutil

        shutil.rmtree(os.path.join(workdir, "checkpoints"))
    os.makedirs(workdir, exist_ok=True)
    t0 = time.time()
    x = np.asarray(x, np.float32)
    info = DataInfo({"x": jax.ShapeDtypeStruct((x.shape[1],), jnp.float32)}, len(x),
                    len(x_val))
    run = _build_cached(config, info)
    state = run.init_state()
    iterator = pipeline.train_iterator(
        InMemorySource.from_arrays({"x": x}), global_batch_size=config.train.batch_size,
        seed=config.seed, process_index=jax.process_index(), process_count=jax.process_count())
    curve, step, total = [], 0, int(config.train.num_steps)
    dispatch = math.gcd(total, 50)  # steps per jitted scan (the engine's steps_per_dispatch)
    with jax.set_mesh(run.mesh):
        while step < total:
            local = [next(iterator) for _ in range(dispatch)]
            stacked = {"x": np.stack([b["x"] for b in local])}
            state, metrics = run.multi_step(state, run.global_batch(stacked, stacked=True))
            step += dispatch
            if step % log_every == 0 or step == total:
                curve.append([step, float(metrics["loss"])])
    val = evaluate_params(run, state.params,
                          InMemorySource.from_arrays({"x": np.asarray(x_val, np.float32)}),
                          seed=config.seed + 1)
    state = state.replace(best_params=state.params)
    write_json_atomic(os.path.join(workdir, "config.json"), config.to_dict(), indent=2,
                      sort_keys=True)
    ckpt = Checkpointer(workdir, keep=1)
    ckpt.save(step, state, data_state={}, loop={}, config=config.to_dict(), force=True)
    ckpt.close()
    result = {"steps": step, "train_loss_curve": curve, "val_fm_loss": float(val["loss"]),
              "train_wall_time_s": time.time() - t0, "num_train": len(x),
              "width": int(config.model.width), "num_blocks": int(config.model.num_blocks)}
    write_json_atomic(done, result, indent=1)
    return result


def flow_params(workdir: str):
    """The saved params of a :func:`train_flow` workdir and its velocity model."""
    from jaxflows.models.flow_matching import velocity_model
    from jaxflows.train.loop import load_saved_config
    from jaxflows.train.pretrained import read_tree

    config = load_saved_config(workdir)
    params = jax.tree.map(jnp.asarray, read_tree(workdir)["params"])
    dim = int(params["input_proj"]["kernel"].shape[0])
    return velocity_model(config.model, dim), params


@functools.partial(jax.jit, static_argnums=(0, 3))
def _euler(model, params, x, steps: int):
    dt = 1.0 / steps

    def body(i, x):
        t = jnp.full((1,), i * dt, jnp.float32)
        return x + dt * model.apply({"params": params}, x, t)

    return jax.lax.fori_loop(0, steps, body, x)


def euler_sample(model, params, rng, num: int, steps: int, chunk: int = 5000) -> np.ndarray:
    """``num`` samples of a flow-matching model: ``x_0 = eps ~ N(0, I)`` (drawn as
    ``jax.random.normal(rng, (num, d))``, as ``FlowMatchingTask.sample`` does), then ``steps``
    Euler steps of ``dx/dt = v(x, t)`` from ``t = 0`` to 1 with the time shared by the batch
    (the time path runs once per step). Same ODE and noise as ``FlowMatchingTask.sample`` with
    ``solver='euler'``."""
    noise = np.asarray(jax.random.normal(rng, (num, model.dim), jnp.float32))
    out = []
    for s in range(0, num, chunk):
        part = noise[s:s + chunk]
        pad = min(chunk, num) - len(part)  # one compiled shape
        if pad:
            part = np.concatenate([part, np.zeros((pad, part.shape[1]), part.dtype)])
        out.append(np.asarray(_euler(model, params, part, int(steps)))[:len(part) - pad])
    return np.concatenate(out)


# --- k-NN NLL proxy -------------------------------------------------------------------------------

def knn_log_radius(queries: np.ndarray, reference: np.ndarray, k: int) -> np.ndarray:
    """``log r_k`` of each query ``[Q, d]``: the log Euclidean distance to its ``k``-th nearest
    row of ``reference: [N, d]`` (exact, a k-d tree; float64)."""
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(np.asarray(reference, np.float64)).query(
        np.asarray(queries, np.float64), k=[int(k)])
    return np.log(np.maximum(dist[:, 0], 1e-12))


def knn_nll(queries: np.ndarray, reference: np.ndarray, k: int) -> dict:
    """The k-NN NLL proxy: ``-log p_hat(y) = d log r_k + log V_d + log N - log k`` per query
    (``V_d = pi^(d/2) / Gamma(d/2 + 1)``); returns the means of it and of ``log r_k``."""
    n, d = reference.shape
    log_rk = knn_log_radius(queries, reference, k)
    log_vd = 0.5 * d * math.log(math.pi) - math.lgamma(0.5 * d + 1.0)
    nll = d * log_rk + log_vd + math.log(n) - math.log(k)
    return {"knn_nll": float(np.mean(nll)), "log_rk": float(np.mean(log_rk))}


# --- the stages -----------------------------------------------------------------------------------

def ae_config(args, kind: str, align: dict | None = None):
    """The engine config of an autoencoder: ``autoencoder_mnist.py:ae|kl`` (``:smoke`` with
    ``--quick``), ``--ae_epochs`` epochs, the alignment block when given."""
    from jaxflows.train.config_loader import apply_overrides

    sys.path.insert(0, os.path.join(HERE, "configs"))
    import autoencoder_mnist

    if args.quick:
        config = autoencoder_mnist.get_config("smoke")
        config.train.eval_every_epochs = args.ae_epochs
        if kind == "kl":
            config.model.mode, config.model.kl_weight = "kl", 1e-6
    else:
        config = autoencoder_mnist.get_config(kind)
    config.seed = args.seed
    config.train.num_epochs = args.ae_epochs
    config.train.progress_bar = False
    if args.data_dir:
        config.data.data_dir = args.data_dir
    if align:
        for k, v in align.items():
            config.model.align[k] = v
    if args.set:
        config = apply_overrides(config, [f"--config.{s}" for s in args.set])
    return config


def train_ae(name: str, config, args) -> dict:
    """Trains (or resumes, or reuses) one autoencoder; returns its eval, curves and times."""
    from jaxflows.train import train

    workdir = os.path.join(args.runs_dir, "ae", name)
    eval_path = os.path.join(workdir, "eval.json")
    if not os.path.exists(eval_path):
        log.info("%s: training the autoencoder into %s", name, workdir)
        os.makedirs(workdir, exist_ok=True)
        train(config, workdir)
    train_curve, val_curve = [], []
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if "val_loss" in r:
                val_curve.append([r["step"], r.get("val_epoch"), r["val_loss"], r["val_mse"],
                                  r["val_psnr"], r.get("val_align_loss")])
            elif "loss" in r:
                train_curve.append([r["step"], r["loss"], r["mse"], r.get("align_loss")])
    summary = read_json(os.path.join(workdir, "train_summary.json"))
    return {"workdir": workdir, "eval": read_json(eval_path),
            "curves": {"train_columns": ["step", "loss", "mse", "align_loss"],
                       "train": train_curve,
                       "val_columns": ["step", "epoch", "loss", "mse", "psnr", "align_loss"],
                       "val": val_curve},
            "train_wall_time_s": summary.get("train_wall_time_s")}


_AUTOENCODERS: dict = {}


def autoencoder_latents(workdir: str, train_x: np.ndarray, image_shape) -> tuple:
    """``(task, params, scale, train latents [N, h, w, c])`` of a trained autoencoder; the latent
    scale is computed from the training latents once and saved in the workdir."""
    from jaxflows.models.autoencoder import (
        encode_all,
        load_autoencoder,
        load_latent_scale,
        save_latent_scale,
    )

    if workdir in _AUTOENCODERS:
        return _AUTOENCODERS[workdir]
    task, params = load_autoencoder(workdir, image_shape=image_shape)
    z = encode_all(task, params, train_x)
    try:
        scale = load_latent_scale(workdir)
    except Exception:  # noqa: BLE001 -- not saved yet
        scale = 1.0 / float(z.astype(np.float64).std())  # = latent_scale(task, params, train_x)
        save_latent_scale(workdir, scale, num_images=len(train_x), params="best_params",
                          what="1 / std of the posterior means of the training images")
    _AUTOENCODERS.clear()  # keep one (the KL autoencoder is used twice in a row)
    _AUTOENCODERS[workdir] = (task, params, scale, z)
    return task, params, scale, z


def build_targets(args, needed, cls_params, train_x, kl_latents, kl_scale) -> dict:
    """``{target: (vectors [N, 4] at unit std, info)}`` (cached in ``RUNS_DIR/targets``)."""
    from jaxflows.align import FixedProjection

    out = {}
    directory = os.path.join(args.runs_dir, "targets")
    os.makedirs(directory, exist_ok=True)
    for target in needed:
        path = os.path.join(directory, f"{target}.npz")
        if os.path.exists(path):
            data = np.load(path)
            out[target] = (data["x"], json.loads(str(data["info"])))
            continue
        rng = np.random.default_rng(args.seed + (1 if target == "semantic" else 2))
        if target == "semantic":
            feats = features(cls_params, train_x)
            proj = FixedProjection(feats.shape[1], 4, seed=42)
            raw = np.asarray(proj(feats), np.float64)
            info = {"source": "DigitCNN 128-d penultimate features of the training images",
                    "projection": "FixedProjection 128 -> 4, seed 42"}
        else:
            tokens = kl_latents.reshape(-1, kl_latents.shape[-1]).astype(np.float64)
            pick = rng.choice(len(tokens), size=len(train_x), replace=False)
            raw = tokens[pick] * kl_scale
            info = {"source": "posterior-mean latent tokens of the KL autoencoder (training "
                              "images) times its latent scale", "projection": "none (4-d)",
                    "kl_latent_scale": kl_scale}
        scale = 1.0 / float(raw.std())
        x = (raw * scale).astype(np.float32)
        info.update(num=len(x), unit_std_scale=scale, mean=x.mean(0).tolist(),
                    std=x.std(0).tolist())
        np.savez(path + ".tmp.npz", x=x, info=json.dumps(info))
        os.replace(path + ".tmp.npz", path)
        out[target] = (x, info)
    return out


@functools.partial(jax.jit, static_argnums=(0, 4))
def _lalign(model, params, tokens, rng, draws: int):
    from jaxflows.align import flow_prior_loss

    return flow_prior_loss(lambda p, x, t: model.apply({"params": p}, x, t), params, tokens,
                           rng, draws, reduction="mean")


def mean_lalign(prior_workdir: str, z: np.ndarray, seed: int, draws: int = 4,
                chunk: int = 250) -> float:
    """Mean ``L_align`` (reduction 'mean') of the latent tokens of ``z: [B, h, w, c]`` under a
    frozen prior, ``draws`` draws of ``(t, eps)`` per token."""
    model, params = flow_params(prior_workdir)
    tokens = np.asarray(z.reshape(len(z), -1, z.shape[-1]), np.float32)
    vals = []
    for s in range(0, len(tokens), chunk):
        part = tokens[s:s + chunk]
        pad = min(chunk, len(tokens)) - len(part)
        if pad:
            part = np.concatenate([part, np.zeros((pad, *part.shape[1:]), part.dtype)])
        vals.append(np.asarray(_lalign(model, params, part, jax.random.key(seed + s),
                                       draws))[:len(part) - pad])
    return float(np.mean(np.concatenate(vals)))


def gen_seed_list(args) -> list[int]:
    """The generator seeds of ``--gen_seeds`` (default: ``--seed`` alone)."""
    if not args.gen_seeds:
        return [args.seed]
    return [int(v) for v in args.gen_seeds.split(",") if v]


def generator_run(row: dict, task, params, scale, z_train, z_test, args, ctx,
                  seed: int) -> dict:
    """One latent generator of a row (``RUNS_DIR/gen/<row>/steps<N>_seed<S>``): trained on the
    scaled, flattened training latents with ``seed``, ``--num_samples`` samples decoded, their
    FD-MNIST. Cached in ``gen.json`` there."""
    from jaxflows.eval.frechet import feature_stats, frechet_distance_from_stats
    from jaxflows.models.autoencoder import decode_all
    from jaxflows.provenance import write_json_atomic

    gen_dir = os.path.join(args.runs_dir, "gen", row["name"], f"steps{args.gen_steps}_seed{seed}")
    cache = os.path.join(gen_dir, "gen.json")
    key = {k: getattr(args, k) for k in ("gen_steps", "num_samples", "euler_steps")}
    key["seed"] = seed
    if os.path.exists(cache) and read_json(cache).get("key") == key:
        return read_json(cache)["gen"]
    flat = (z_train.reshape(len(z_train), -1) * scale).astype(np.float32)
    n_val = min(1000, len(z_test))
    val = (z_test[:n_val].reshape(n_val, -1) * scale).astype(np.float32)
    gen_args = argparse.Namespace(**{**vars(args), "seed": seed})
    gen = train_flow(gen_dir, generator_config(flat.shape[1], len(flat), gen_args), flat, val)
    model, gparams = flow_params(gen_dir)
    t_s = time.time()
    samples = euler_sample(model, gparams, jax.random.key(seed + 11), args.num_samples,
                           args.euler_steps)
    images = decode_all(task, params, (samples / scale).reshape(-1, *z_test.shape[1:]))
    out = {"seed": seed, "fd_mnist": frechet_distance_from_stats(
        *feature_stats(features(ctx["cls"], images)), *ctx["test_stats"]),
        "gen_train_s": gen["train_wall_time_s"], "gen_val_fm_loss": gen["val_fm_loss"],
        "sample_decode_s": time.time() - t_s, "gen_curve": gen["train_loss_curve"],
        "gen_workdir": repo_relative(gen_dir, REPO)}
    np.save(os.path.join(gen_dir, "samples_grid.npy"), images[:16])
    write_json_atomic(cache, {"key": key, "gen": out}, indent=1)
    return out


NOISE_SIGMAS = (0.1, 0.3)


def decomposition(row: dict, task, params, scale, z_test, args, ctx) -> dict:
    """Where a row's generation FD comes from (cached in ``RUNS_DIR/gen/<row>/decomposition.json``):

    * ``latent_fd``: Fréchet distance, in the generator's own (scaled, flattened) latent space,
      between the first generator seed's ``--num_samples`` samples (the same Euler draw as its
      FD-MNIST) and the scaled test latents: the generator's error before decoding;
    * ``rfd_noised_<sigma>``: FD-MNIST of the test images decoded from ``z * scale + sigma * eps``
      (divided back by the scale), ``sigma`` in :data:`NOISE_SIGMAS`: how much a latent error of a
      given size in the generator's units costs after decoding.
    """
    from jaxflows.eval.frechet import feature_stats, frechet_distance_from_stats
    from jaxflows.models.autoencoder import decode_all
    from jaxflows.provenance import write_json_atomic

    seed = gen_seed_list(args)[0]
    row_dir = os.path.join(args.runs_dir, "gen", row["name"])
    cache = os.path.join(row_dir, "decomposition.json")
    key = {"gen_steps": args.gen_steps, "num_samples": args.num_samples,
           "euler_steps": args.euler_steps, "seed": seed, "sigmas": list(NOISE_SIGMAS)}
    if os.path.exists(cache) and read_json(cache).get("key") == key:
        return read_json(cache)["decomposition"]
    t0 = time.time()
    gen_dir = os.path.join(row_dir, f"steps{args.gen_steps}_seed{seed}")
    model, gparams = flow_params(gen_dir)
    samples = euler_sample(model, gparams, jax.random.key(seed + 11), args.num_samples,
                           args.euler_steps)
    test_flat = (z_test.reshape(len(z_test), -1) * scale).astype(np.float64)
    out = {"latent_fd": frechet_distance_from_stats(
        *feature_stats(np.asarray(samples, np.float64)), *feature_stats(test_flat))}
    rng = np.random.default_rng(args.seed + 13)
    for sigma in NOISE_SIGMAS:
        noisy = z_test * scale + sigma * rng.standard_normal(z_test.shape)
        images = decode_all(task, params, (noisy / scale).astype(np.float32))
        out[f"rfd_noised_{sigma}"] = frechet_distance_from_stats(
            *feature_stats(features(ctx["cls"], images)), *ctx["test_stats"])
    out["decomposition_s"] = time.time() - t0
    write_json_atomic(cache, {"key": key, "decomposition": out}, indent=1)
    return out


def _spearman(a, b) -> float | None:
    from scipy.stats import spearmanr

    ok = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    if len(ok) < 3:
        return None
    return float(spearmanr(*zip(*ok, strict=True)).statistic)


def analysis(rows: list[dict]) -> dict:
    """The verdict on the issue's question and what FD-MNIST follows across the autoencoders of
    the ``ae`` architecture (the unaligned one and every aligned one): the best aligned row
    against ``none`` (difference in FD and its standard error from the generator seeds, PSNR
    cost) and Spearman correlations of ``fd_mnist`` with the other columns."""
    ae_rows = [r for r in rows if r.get("autoencoder") == "ae"]
    base = next((r for r in ae_rows if r["target"] == "none"), None)
    aligned = [r for r in ae_rows if r["target"] != "none"]
    out: dict = {"rows": [r["name"] for r in ae_rows]}
    if base is None or not aligned:
        return out
    best = min(aligned, key=lambda r: r["fd_mnist"])
    sems = [r.get("fd_mnist_sem") for r in (best, base)]
    se = math.sqrt(sum(s * s for s in sems)) if all(s is not None for s in sems) else None
    within_1db = [r for r in aligned if base["psnr"] - r["psnr"] <= 1.0]
    rises = {}
    for target in TARGETS:
        ordered = sorted((r for r in aligned if r["target"] == target), key=lambda r: r["lambda"])
        if ordered:
            rises[target] = all(a["fd_mnist"] < b["fd_mnist"]
                                for a, b in zip(ordered, ordered[1:], strict=False))
    out.update(
        best_aligned=best["name"], best_aligned_fd=best["fd_mnist"], none_fd=base["fd_mnist"],
        best_minus_none_fd=best["fd_mnist"] - base["fd_mnist"],
        best_minus_none_se=se,
        best_psnr_cost_db=base["psnr"] - best["psnr"],
        aligned_better_within_1db=[r["name"] for r in within_1db
                                   if r["fd_mnist"] < base["fd_mnist"]],
        fd_rises_with_lambda=rises,
        spearman_fd={k: _spearman([r["fd_mnist"] for r in ae_rows], [r.get(k) for r in ae_rows])
                     for k in ("lambda", "psnr", "rfd_mnist", "latent_fd",
                               *(f"rfd_noised_{s}" for s in NOISE_SIGMAS), "gen_val_fm_loss",
                               "latent_std_test")})
    return out


def evaluate_row(row: dict, ae: dict, args, ctx: dict) -> dict:
    """Latent scale, reconstruction and alignment metrics of one trained autoencoder (cached in
    ``RUNS_DIR/gen/<row>/row.json``) and its generators, one per generator seed
    (:func:`generator_run`): ``fd_mnist`` is their mean, ``fd_mnist_sem`` the standard error
    over generator seeds, ``fd_mnist_per_seed`` the values."""
    from jaxflows.eval.frechet import feature_stats, frechet_distance_from_stats
    from jaxflows.models.autoencoder import decode_all, encode_all
    from jaxflows.provenance import write_json_atomic

    row_dir = os.path.join(args.runs_dir, "gen", row["name"])
    cache = os.path.join(row_dir, "row.json")
    key = {k: getattr(args, k) for k in ("knn_k", "knn_queries", "lalign_images", "seed")}
    t0 = time.time()
    train_x, test_x = ctx["train"][0], ctx["test"][0]
    task, params, scale, z_train = autoencoder_latents(ae["workdir"], train_x, ctx["image_shape"])
    z_test = encode_all(task, params, test_x)
    saved = read_json(cache) if os.path.exists(cache) else {}
    if all(saved.get("key", {}).get(k, object()) == v for k, v in key.items()):
        out = saved["row"]
    else:
        rec = decode_all(task, params, z_test)
        out = {"autoencoder": row["autoencoder"], "target": row["target"], "lambda": row["lam"],
               "mse": ae["eval"]["mse"], "psnr": ae["eval"]["psnr"]}
        out["rfd_mnist"] = frechet_distance_from_stats(
            *feature_stats(features(ctx["cls"], rec)), *ctx["test_stats"])
        # alignment diagnostics of the test latents against both targets
        rng = np.random.default_rng(args.seed + 5)
        nq = min(args.knn_queries, len(z_test))
        hw = z_test.shape[1] * z_test.shape[2]
        pos = rng.integers(0, hw, size=nq)
        queries = z_test[:nq].reshape(nq, hw, -1)[np.arange(nq), pos]
        for target, (ref, _) in ctx["targets"].items():
            stats = knn_nll(queries, ref, args.knn_k)
            out[f"knn_nll_{target}"] = stats["knn_nll"]
            out[f"log_rk_{target}"] = stats["log_rk"]
            out[f"lalign_{target}"] = mean_lalign(ctx["prior_dirs"][target],
                                                  z_test[:args.lalign_images], args.seed + 7)
        out["knn_nll"] = out.get(f"knn_nll_{row['target']}")
        out.update(
            latent_scale=scale, latent_std_test=float(z_test.std()),
            align_loss_test=ae["eval"].get("align_loss"), ae_train_s=ae["train_wall_time_s"],
            ae_workdir=repo_relative(ae["workdir"], REPO), ae_curves=ae["curves"],
            eval_s=time.time() - t0)
        os.makedirs(row_dir, exist_ok=True)
        write_json_atomic(cache, {"key": key, "row": out}, indent=1)
    gens = [generator_run(row, task, params, scale, z_train, z_test, args, ctx, seed)
            for seed in gen_seed_list(args)]
    parts = decomposition(row, task, params, scale, z_test, args, ctx)
    fds = [g["fd_mnist"] for g in gens]
    out = dict(out)
    out.update(
        fd_mnist=float(np.mean(fds)),
        fd_mnist_sem=float(np.std(fds, ddof=1) / np.sqrt(len(fds))) if len(fds) > 1 else None,
        fd_mnist_per_seed=fds, gen_seeds=[g["seed"] for g in gens], gen_steps=args.gen_steps,
        gen_train_s=float(np.mean([g["gen_train_s"] for g in gens])),
        gen_val_fm_loss=float(np.mean([g["gen_val_fm_loss"] for g in gens])),
        sample_decode_s=float(np.mean([g["sample_decode_s"] for g in gens])),
        gen_workdirs=[g["gen_workdir"] for g in gens],
        gen_curves=[g["gen_curve"] for g in gens], **parts)
    return out


def save_sample_figure(path: str, rows: list[dict], runs_dir: str, gen_steps: int,
                       seed: int) -> str | None:
    """One PNG: 16 decoded samples of each row's generator (``gen_steps``, ``seed``), rows in
    table order."""
    from PIL import Image

    from jaxflows.eval.grid import make_grid

    grids = []
    for r in rows:
        p = os.path.join(runs_dir, "gen", r["name"], f"steps{gen_steps}_seed{seed}",
                         "samples_grid.npy")
        if os.path.exists(p):
            grids.append(np.load(p))
    if not grids:
        return None
    grid = make_grid(np.concatenate(grids), ncol=16)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(grid[..., 0]).save(path + ".tmp.png", format="PNG")
    os.replace(path + ".tmp.png", path)
    return path


def main(argv=None) -> dict:
    """Runs the experiment; returns (and writes) the results dict."""
    from jaxflows.eval.frechet import feature_stats, frechet_distance_from_stats
    from jaxflows.eval.tables import render_table
    from jaxflows.provenance import git_commit, machine_info, machine_summary, write_json_atomic

    args = parse_args(argv)
    rows = all_rows(args.lambda_values)
    if args.rows:
        wanted = [r for r in args.rows.split(",") if r]
        names = [r["name"] for r in rows]
        unknown = [w for w in wanted if w not in names]
        if unknown:
            raise SystemExit(f"unknown rows {unknown}; valid: {', '.join(names)}")
        rows = [r for r in rows if r["name"] in wanted]
    elif args.quick:  # the KL autoencoder row (target none) and one lambda per target
        rows = [r for r in rows if r["name"] == "kl" or r["lam"] == 0.01]
    load0 = os.getloadavg()[0]
    t0 = time.time()
    timings: dict = {}
    command = "python experiments/align_mnist.py " + " ".join(
        sys.argv[1:] if argv is None else list(argv))
    os.makedirs(args.runs_dir, exist_ok=True)

    train = load_split(args.dataset, "train", args.data_dir or None)
    test = load_split(args.dataset, "test", args.data_dir or None)
    ctx = {"train": train, "test": test, "image_shape": train[0].shape[1:]}
    ctx["cls"], cls_info = get_classifier(args, train, test)
    timings["classifier_s"] = time.time() - t0
    ctx["test_stats"] = feature_stats(features(ctx["cls"], test[0]))
    n_ref = min(len(train[0]), len(test[0]))
    fd_floor = frechet_distance_from_stats(*feature_stats(features(ctx["cls"], train[0][:n_ref])),
                                           *ctx["test_stats"])

    # the KL autoencoder (low-level target and its own row), then the targets and priors
    t1 = time.time()
    kl_ae = train_ae("kl", ae_config(args, "kl"), args)
    _, _, kl_scale, kl_latents = autoencoder_latents(kl_ae["workdir"], train[0],
                                                     ctx["image_shape"])
    timings["kl_autoencoder_s"] = time.time() - t1
    t1 = time.time()
    ctx["targets"] = build_targets(args, TARGETS, ctx["cls"], train[0], kl_latents, kl_scale)
    del kl_latents
    ctx["prior_dirs"], priors = {}, {}
    for target, (x, info) in ctx["targets"].items():
        workdir = os.path.join(args.runs_dir, "priors", target)
        rng = np.random.default_rng(args.seed + 3)
        val = x[rng.choice(len(x), size=min(1000, len(x)), replace=False)]
        priors[target] = {**train_flow(workdir, prior_config(len(x), args), x, val),
                          "target": info, "workdir": repo_relative(workdir, REPO)}
        ctx["prior_dirs"][target] = workdir
    timings["targets_and_priors_s"] = time.time() - t1

    results = {
        "title": "Flow-prior alignment of an MNIST autoencoder (arXiv 2506.05240 at MNIST "
                 "scale)",
        "protocol": (
            f"{args.dataset}; conv autoencoder 7x7x4 (autoencoder_mnist.py), {args.ae_epochs:g} "
            f"epochs; L_align per latent token (49 x 4-d), repeats 1, reduction mean; priors: "
            f"flow matching 64x3, {args.prior_steps} steps on unit-std targets (semantic: "
            f"DigitCNN features, FixedProjection 128->4; lowlevel: KL-AE latent tokens); "
            f"generator: flow matching 256x3 on flattened scaled latents, {args.gen_steps} "
            f"steps, seeds {gen_seed_list(args)}, {args.num_samples} samples, Euler "
            f"{args.euler_steps}; FD-MNIST vs the test "
            f"set; k-NN NLL: k={args.knn_k}, {args.knn_queries} test tokens vs the target "
            f"samples"),
        "command": command,
        "git_commit": git_commit(),
        "machine": machine_summary(),
        "columns": COLUMNS,
        "classifier": {k: v for k, v in cls_info.items() if k != "key"} | {
            "steps": args.classifier_steps},
        "fd_mnist_train_vs_test": fd_floor,
        "priors": priors,
        "rows": [],
    }
    for row in rows:
        t1 = time.time()
        if row["name"] == "kl":
            ae = kl_ae
        else:
            align = None
            if row["target"] != "none":
                align = {"prior_workdir": ctx["prior_dirs"][row["target"]],
                         "weight": row["lam"], "repeats": 1, "reduction": "mean",
                         "params": "params"}
            ae = train_ae(row["name"], ae_config(args, "ae", align), args)
        out = evaluate_row(row, ae, args, ctx)
        results["rows"].append({"name": row["name"], **out})
        results["analysis"] = analysis(results["rows"])
        timings[f"row_{row['name']}_s"] = time.time() - t1
        results["wall_time_s"] = time.time() - t0
        results["timings"] = timings
        results["machine_info"] = machine_info(load0)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        write_json_atomic(args.out, results, indent=1)
        log.info("%s: mse %.5f psnr %.2f fd %.2f knn_nll %s (%.0f s so far)", row["name"],
                 out["mse"], out["psnr"], out["fd_mnist"], out["knn_nll"], time.time() - t0)
    stem = os.path.splitext(args.out)[0]
    figure = save_sample_figure(stem + "_samples.png", rows, args.runs_dir, args.gen_steps,
                                gen_seed_list(args)[0])
    if figure:
        results["samples_figure"] = repo_relative(figure, REPO)
        write_json_atomic(args.out, results, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(render_table(os.path.basename(stem), os.path.dirname(os.path.abspath(args.out)))
                + "\n")
    return results


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    log.setLevel(logging.INFO)
    main()
