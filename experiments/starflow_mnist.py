"""STARFlow on MNIST latents against a pixel TarFlow of equal size (Gu et al. 2025, "STARFlow",
arXiv 2506.06276, at MNIST scale): guidance sweeps with both rules, sampling speed of the
deep-shallow layout and of Jacobi decoding, and the decoder fine-tuned on noisy latents.

    # the full experiment (MNIST); every stage is cached in --runs_dir and a rerun resumes
    python experiments/starflow_mnist.py --runs_dir runs/starflow_mnist
    # reusing a trained KL autoencoder and a classifier (a workdir with eval.json; msgpack)
    python experiments/starflow_mnist.py --ae_workdir runs/starflow_ae \\
        --classifier runs/align_mnist/classifier/params.msgpack
    # a test: the embedded 8 x 8 digits, everything tiny (about 4 CPU minutes, most of it
    # XLA compilation of some 25 programs; it is not under a minute)
    python experiments/starflow_mnist.py --quick --data_dir DIR --runs_dir RUNS --out OUT.json

CPU time per stage of the full run. These are **estimates**, not a measurement of the full run
(which has not been run yet): the classifier, autoencoder and fine-tuning figures are those
measured for ``starflow_decoder_finetune.py``, the training time is what the
``starflow_mnist.py`` rows are sized for, and the sampling cost was measured as process CPU time
of one batch of 1,000 with the ``cpu`` / ``uniform_cpu`` / ``pixel_cpu`` shapes and untrained
weights (guidance 1, denoiser, decoder) on this 2-core machine while it was shared: STARFlow
about 58 CPU-s per 1,000 samples, the uniform layout 49, the pixel TarFlow 68 (so at this batch
the uniform layout is *faster* on a CPU: its guided block, the only one on a doubled batch, has
2 layers, the deep block 6). Wall time is CPU time on a quiet machine at best; on this one,
shared with other jobs, wall time was 3-4x the CPU time.

=================================  ============================================================
stage                              estimate (CPU time)
=================================  ============================================================
0. classifier (600 steps)          ~3 min (none when ``--classifier`` exists)
1. KL autoencoder (1.5 epochs)     ~2 min (none with ``--ae_workdir``)
2. decoder fine-tuning (3 epochs)  ~8 min, with its reconstruction metrics
3. training                        ~2 min calibration, then 2 x 20-30 min (STARFlow's 5 epochs,
                                   the same time for the pixel TarFlow)
4. guidance sweep                  11 STARFlow settings x ~10 min + 6 pixel x ~11 min: ~3 h
5. speed and decoders              ~15 min (batches 16 and 1,000) + ~10 min (one 10,000 draw,
                                   four decodings)
=================================  ============================================================

About 4-4.5 CPU hours in all, three quarters of it the sweep (``--num_samples 2000`` cuts the
sweep five-fold, at the cost of noisier FD). The sampling figures predate the faster KV-cache
loop of :mod:`jaxflows.nn.transformer` (unrolled layers, a per-layer cache updated in place,
weights sliced once per call), which made TarFlow sampling 2.0-4.2x faster on this CPU
(``benchmarks/README.md``), so the sweep should take correspondingly less.

**Stages** (each cached under ``--runs_dir``, default ``runs/starflow_mnist``; a stage whose
output exists is skipped, an interrupted training resumes from its checkpoint; use a new
``--runs_dir`` after changing the recipe):

0. **classifier**: the project's DigitCNN (:mod:`jaxflows.eval.mnist_classifier`) in
   ``--classifier`` (default ``RUNS/classifier/params.msgpack``), trained when missing; FD-MNIST
   is the Fréchet distance between its 128-d features of the samples and of the 10,000 test
   images, class accuracy the fraction of samples it assigns to the class they were drawn for.
1. **autoencoder** (``RUNS/ae`` or ``--ae_workdir``): ``autoencoder_mnist.py:kl`` trained by the
   engine, and its latent scale (``1 / std`` of the posterior means of the training images)
   saved in ``latent_scale.json`` (:func:`starflow_decoder_finetune.get_scale`), as the
   ``starflow_mnist.py`` config docstring prescribes.
2. **decoder fine-tuning** (``RUNS/decoder``): ``starflow_decoder_finetune.main`` on that
   autoencoder and classifier (decoder trained on ``z + (0.3 / scale) eps``, encoder frozen);
   its results (reconstruction from clean and noisy latents) are kept in
   ``RUNS/decoder/starflow_decoder.json`` and summarised in ours.
3. **training, equal wall time** (``RUNS/train/{starflow,tarflow_pixel}``): the engine
   (:mod:`jaxflows.train`) has no wall-clock budget, so equal time is enforced by
   **calibration** (``--equal_time calibrate``, the default): both models' train steps are timed
   back to back (``--calib_steps`` steps each after a compiled warm-up, same data pipeline, same
   machine load), STARFlow trains its config's schedule (``starflow_mnist.py:cpu``, 5 epochs)
   and the pixel TarFlow (``starflow_mnist.py:pixel_cpu``) ``round(steps_starflow *
   rate_pixel / rate_starflow)`` steps, its learning-rate schedule compressed to that length.
   Both measured wall times (evaluations and checkpoints included, as the engine counts them)
   and their ratio are reported, so the equality is checked, not assumed. ``--equal_time
   steps`` trains both for the same schedule instead. Parameters are counted as ``jaxflows
   info`` does (the shapes of the params tree); STARFlow's frozen autoencoder is reported apart
   (``params_frozen_autoencoder``) and not in ``params``.
4. **guidance sweep** (``RUNS/sweep``): for every ``w`` in ``--weights`` (0, 0.5, 1, 2, 3, 5):
   STARFlow with the rule ``starflow`` (the Gaussian product ``p_c^{1+w} / p_u^w``, sampler rule
   ``gaussian``) and with ``tarflow`` (TarFlow's linear extrapolation of ``mu`` and
   ``log sigma``, sampler rule ``linear``), both on the deep block only, unannealed, then the
   one-step score denoiser and the original decoder (the official behaviour without a
   fine-tuned decoder); the pixel TarFlow with its own rule (linear, annealed over the tokens
   as its config says, and its one-step denoiser). ``--num_samples`` class-balanced samples
   (label ``i % 10``) per setting, in batches of ``--sample_batch``, the same noise seed for
   every setting. At ``w = 0`` the two STARFlow rules are the same computation and the entry is
   shared. Images/s of each sweep setting exclude the first batch (compilation).
   **Guidance ratio** (``RUNS/guidance_ratio``): for every ``w > 0``, ``--ratio_samples``
   (1,000) STARFlow latents drawn with the Gaussian rule, and the deep block's ``sigma_c /
   sigma_u`` on them (:func:`guidance_ratio_entry`): the rule's effective weight on ``mu``,
   which says whether it can stay flat (the paper's Fig. 8b) or acts as plain CFG.
5. **speed and decoders** (``RUNS/speed``, ``RUNS/decoders``): images/s of the whole sampling
   path (sample, denoise, decode) at each of ``--speed_batches`` (16, the paper's Table 5
   batch, and ``--sample_batch``) with guidance ``--speed_guidance``: STARFlow's deep-shallow
   layout (trained) and the uniform-depth layout of equal size (``starflow_mnist.py:uniform_cpu``,
   five 2-layer blocks, untrained: sequential sampling does the same work whatever the
   weights), both sequential; STARFlow with block-wise Jacobi (``--jacobi_chunk`` tokens,
   threshold 1e-3, at most 32 iterations: the official settings); the pixel TarFlow. The
   **flow path** (sample and denoise, latents out, no decoder) is timed for the comparison the
   paper makes (Table 5: the 1.4 B deep-shallow ``18(6)-2048`` against an equal-size TarFlow of
   8 blocks x 8 layers at width 1280, both with guidance): STARFlow deep-shallow and uniform,
   and two TarFlows on the same latent grid (patch 1, conditional and guided in every block by
   TarFlow's rule, untrained, within 10% of STARFlow's parameters; :data:`LATENT_TARFLOWS`):
   ``4 x 6-80``, the paper's proportions scaled down (blocks 4/3 = 8/6, width 80/128 =
   1280/2048, 24/10 layers against 64/28), and ``8 x 8-48``, its literal 8 x 8 shape at equal
   size. The claim's target (>= 1.8x) is checked against ``4 x 6-80``; the other ratios are
   reported beside it. ``uniform_cpu`` keeps STARFlow's width and total depth, so it isolates
   the block count and the guided block's depth, which is not what the paper compares. One
   warm-up call compiles (``compile_s`` is its time minus a timed call; about 0 when the sweep
   compiled the same sampler already), then timed calls: at least ``--speed_reps`` and as many as
   fill ``--speed_min_seconds`` (5 s; a batch-16 call takes about 0.2 s), images/s from the
   median call. Decoders: one draw
   of ``--num_samples`` STARFlow latents at its best weight (rule ``starflow``; the sweep's
   draw), decoded by the original and the fine-tuned decoder,
   each with and without the score denoiser (the official choice: the fine-tuned decoder
   without it).

Writes ``--out`` (default ``experiments/results/starflow_mnist.json``): ``rows`` (one per model:
``name``, ``params``, ``train_wall_time_s``, ``sample_images_per_s``, ``guidance[]`` of
``{rule, weight, fd_mnist, class_accuracy, ...}``, best weight), ``guidance_rows`` (the same
entries flat, for a table), ``speed_rows``, ``decoder_rows``, ``checks`` (the claims with their
numbers: STARFlow's best FD against the pixel TarFlow's, FD at ``w = 5`` over the best for both
rules, the deep-shallow / uniform speed ratio, equal size and time), ``calibration``, the
decoder fine-tuning summary, and provenance (command, git commit, machine, wall times); and the
Markdown tables next to it (``.md``). ``--quick`` runs everything tiny on the embedded 8 x 8
``digits`` (a test).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxflows.eval import mnist_classifier  # noqa: E402
from jaxflows.provenance import read_json, repo_relative  # noqa: E402

log = logging.getLogger("starflow_mnist")

CONFIG = os.path.join(HERE, "configs", "starflow_mnist.py")
WEIGHTS = "0,0.5,1,2,3,5"
#: rule names in the results -> ``StarFlowTask.sample(rule=...)``
STARFLOW_RULES = {"starflow": "gaussian", "tarflow": "linear"}
MODELS = ("starflow", "tarflow_pixel")
#: latent TarFlow baselines of the flow-path speed comparison: (blocks, layers per block, width,
#: head dim); ``QUICK_LATENT_TARFLOWS`` for ``--quick``. See stage 5 of the module docstring.
LATENT_TARFLOWS = {"tarflow_latent_4x6": (4, 6, 80, 20), "tarflow_latent_8x8": (8, 8, 48, 12)}
QUICK_LATENT_TARFLOWS = {"tarflow_latent_4x6": (2, 2, 32, 16),
                         "tarflow_latent_8x8": (3, 3, 16, 8)}
#: the baseline the deep-shallow speed target is checked against
SPEED_BASELINE = "tarflow_latent_4x6"
COLUMNS = ["name", "layout", "params", "params_frozen_autoencoder", "train_steps",
           "train_wall_time_s", "sample_images_per_s", "best_rule", "best_weight",
           "best_fd_mnist", "best_class_accuracy"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs_dir", default=os.path.join("runs", "starflow_mnist"))
    p.add_argument("--out", default=os.path.join(REPO, "experiments", "results",
                                                 "starflow_mnist.json"))
    p.add_argument("--data_dir", default="", help="dataset cache ('' = the default)")
    p.add_argument("--ae_workdir", default="", help="trained KL autoencoder ('' = RUNS/ae)")
    p.add_argument("--classifier", default="",
                   help="DigitCNN params ('' = RUNS/classifier/params.msgpack)")
    p.add_argument("--classifier_steps", type=int, default=600)
    p.add_argument("--ae_epochs", type=float, default=1.5)
    p.add_argument("--ft_epochs", type=float, default=3.0, help="decoder fine-tuning epochs")
    p.add_argument("--equal_time", default="calibrate", choices=("calibrate", "steps"))
    p.add_argument("--calib_steps", type=int, default=20)
    p.add_argument("--train_steps", type=int, default=0,
                   help="STARFlow's training steps (0 = its config's schedule)")
    p.add_argument("--weights", default=WEIGHTS)
    p.add_argument("--num_samples", type=int, default=10_000)
    p.add_argument("--sample_batch", type=int, default=1000)
    p.add_argument("--ratio_samples", type=int, default=1000,
                   help="samples per weight for the Gaussian rule's sigma_c / sigma_u")
    p.add_argument("--speed_batches", default="", help="'' = 16 and --sample_batch")
    p.add_argument("--speed_guidance", type=float, default=1.0)
    p.add_argument("--speed_reps", type=int, default=2, help="timed calls, at least")
    p.add_argument("--speed_min_seconds", type=float, default=5.0,
                   help="more timed calls until they add up to this (short calls, batch 16)")
    p.add_argument("--jacobi_chunk", type=int, default=7, help="tokens per Jacobi chunk")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="everything tiny, on digits (a test)")
    args = p.parse_args(argv)
    args.dataset = "mnist"
    if args.quick:
        args.dataset = "digits"
        quick = dict(classifier_steps=30, ae_epochs=3.0, ft_epochs=1.0, calib_steps=3,
                     train_steps=30, weights="0,5", num_samples=40, sample_batch=20,
                     ratio_samples=20,
                     speed_guidance=5.0, speed_reps=1, speed_min_seconds=0.0,
                     jacobi_chunk=2)
        for key, value in quick.items():
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, value)
    args.weight_values = [float(w) for w in args.weights.split(",") if w]
    args.sample_batch = min(args.sample_batch, args.num_samples)
    if args.num_samples % args.sample_batch:
        p.error(f"--num_samples {args.num_samples} must be a multiple of --sample_batch "
                f"{args.sample_batch} (one compiled shape)")
    args.speed_batch_values = ([int(b) for b in args.speed_batches.split(",") if b]
                               if args.speed_batches else
                               ([args.sample_batch] if args.quick
                                else sorted({16, args.sample_batch})))
    if not args.ae_workdir:
        args.ae_workdir = os.path.join(args.runs_dir, "ae")
    if not args.classifier:
        args.classifier = os.path.join(args.runs_dir, "classifier", "params.msgpack")
    return args




def _cached(path: str, key: dict):
    """The ``value`` stored in ``path`` under the same ``key``, else None."""
    if os.path.exists(path):
        saved = read_json(path)
        if saved.get("key") == json.loads(json.dumps(key)):
            return saved["value"]
    return None


def _store(path: str, key: dict, value):
    from jaxflows.provenance import write_json_atomic

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_json_atomic(path, {"key": key, "value": value}, indent=1)
    return value


def decoder_finetune_module():
    """``experiments/starflow_decoder_finetune.py`` as a module (its stages are reused)."""
    name = "starflow_decoder_finetune"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def decoder_argv(args) -> list[str]:
    """``starflow_decoder_finetune.py`` arguments for our autoencoder, classifier and runs dir."""
    argv = ["--runs_dir", os.path.join(args.runs_dir, "decoder"),
            "--out", os.path.join(args.runs_dir, "decoder", "starflow_decoder.json"),
            "--ae_workdir", args.ae_workdir, "--ae_kind", "kl",
            "--ae_epochs", str(args.ae_epochs), "--classifier", args.classifier,
            "--classifier_steps", str(args.classifier_steps), "--epochs", str(args.ft_epochs),
            "--seed", str(args.seed)]
    if args.data_dir:
        argv += ["--data_dir", args.data_dir]
    return argv + (["--quick"] if args.quick else [])


# --- configs --------------------------------------------------------------------------------

def _row_config(row: str):
    from jaxflows.train.config_loader import load_config_file

    return load_config_file(f"{CONFIG}:{row}")


def starflow_config(args, ae_workdir: str, scale: float, layout: str = "deep_shallow"):
    """``starflow_mnist.py:cpu`` (``uniform_cpu`` for ``layout='uniform'``) on the autoencoder
    in ``ae_workdir``; ``--quick``: the ``smoke`` row's sizes (uniform: 4 blocks of 1 layer)
    with that autoencoder."""
    from jaxflows.models import starflow_config as sc

    if args.quick:
        config = _row_config("smoke")
        config.model.layers_per_block = (1, 1, 2) if layout == "deep_shallow" else (1, 1, 1, 1)
        config.data.image_shape = ()
        config.train.eval_every_epochs = 0.0
        config.train.num_steps = args.train_steps
    else:
        config = _row_config("cpu" if layout == "deep_shallow" else "uniform_cpu")
        if args.train_steps:
            config.train.num_steps = args.train_steps
    m = config.model
    m.autoencoder = os.path.abspath(ae_workdir)
    m.ae = sc.ae_config_from_workdir(ae_workdir)
    m.latent_scale = float(scale)
    config.init_from = ({"path": os.path.abspath(ae_workdir), "source": "best_params",
                         "target": "autoencoder"},)
    config.optim.freeze = ("autoencoder/.*",)
    return _common(config, args)


def pixel_config(args, num_steps: int = 0):
    """``starflow_mnist.py:pixel_cpu``; ``--quick``: shrunk to the 8 x 8 digits (patch 2, width
    64, 4 blocks of 1 layer). ``num_steps > 0`` replaces the schedule's length."""
    from jaxflows.models import tarflow_config as tc

    config = _row_config("pixel_cpu")
    if args.quick:
        config.data.name = "digits"
        config.data.image_shape = ()
        config.data.num_classes = 0
        config.model = tc.default_model_config(
            patch_size=2, channels=64, head_dim=32, num_blocks=4, layers_per_block=1,
            num_classes=10, drop_label=0.1, noise_type="gaussian", noise_std=0.1,
            sample_guidance=1.0)
        config.train.batch_size = 64
        config.train.eval_batch_size = 200
        config.train.eval_every_epochs = 0.0
        config.train.log_every_steps = 10
        config.optim.warmup_epochs = 0.5
    if num_steps:
        config.train.num_steps = int(num_steps)
    return _common(config, args)


def _common(config, args):
    config.seed = args.seed
    config.train.progress_bar = False
    if args.data_dir:
        config.data.data_dir = args.data_dir
    return config


def param_counts(config) -> dict:
    """``{params, params_frozen_autoencoder}`` of a config from its parameter shapes (``jaxflows
    info``'s count; nothing is allocated): the ``autoencoder`` subtree apart."""
    import math

    from jaxflows.train.loop import build

    params = build(config).abstract_state().params
    count = lambda tree: int(sum(math.prod(a.shape) for a in jax.tree.leaves(tree)))  # noqa
    ae = params.get("autoencoder") if isinstance(params, dict) else None
    total = count(params)
    frozen = count(ae) if ae is not None else 0
    return {"params": total - frozen, "params_frozen_autoencoder": frozen}


def layout_name(config) -> str:
    """``l(N)-d`` for STARFlow (deep block of ``l`` layers, ``N`` blocks, width ``d``) or
    ``'uniform a-b-c-d'``; TarFlow's ``T x K-C`` (blocks x layers, width)."""
    m = config.model
    if "layers_per_block" in m and not isinstance(m.layers_per_block, int):
        layers = tuple(int(v) for v in m.layers_per_block)
        if len(set(layers)) == 1:
            return f"uniform {'-'.join(map(str, layers))}, width {m.width}"
        return f"{layers[-1]}({len(layers)})-{m.width}"
    return f"{m.num_blocks} x {m.layers_per_block}-{m.channels}, patch {m.patch_size}"


# --- training ---------------------------------------------------------------------------------

def probe_rate(config, steps: int) -> float:
    """Training steps per second of ``config``: the engine's compiled train step on batches of
    its data pipeline, ``steps`` steps timed after two warm-up steps (compilation)."""
    from jaxflows.data import pipeline
    from jaxflows.train.loop import build, open_split

    run = build(config)
    iterator = pipeline.train_iterator(
        open_split(run, config.data.train_split), global_batch_size=config.train.batch_size,
        seed=config.seed, process_index=jax.process_index(), process_count=jax.process_count())
    with jax.set_mesh(run.mesh):
        state = run.init_state()
        for _ in range(2):
            state, metrics = run.train_step(state, run.global_batch(next(iterator)))
        jax.block_until_ready(metrics)
        t0 = time.perf_counter()
        for _ in range(steps):
            state, metrics = run.train_step(state, run.global_batch(next(iterator)))
        jax.block_until_ready(metrics)
        return steps / (time.perf_counter() - t0)


def calibrate(args, star_cfg) -> dict:
    """The pixel TarFlow's step count for STARFlow's wall time (cached in
    ``RUNS/train/calibration.json``)."""
    from jaxflows.train.loop import build

    star_steps = build(star_cfg).total_steps
    path = os.path.join(args.runs_dir, "train", "calibration.json")
    key = {"mode": args.equal_time, "calib_steps": args.calib_steps, "star_steps": star_steps}
    cached = _cached(path, key)
    if cached is not None:
        return cached
    if args.equal_time == "steps":
        out = {"starflow_steps": star_steps, "tarflow_pixel_steps": star_steps,
               "method": "the same number of steps (and schedule) for both"}
    else:
        rate_star = probe_rate(star_cfg, args.calib_steps)
        rate_pix = probe_rate(pixel_config(args, num_steps=star_steps), args.calib_steps)
        out = {"starflow_steps": star_steps,
               "tarflow_pixel_steps": max(1, int(round(star_steps * rate_pix / rate_star))),
               "starflow_steps_per_s": rate_star, "tarflow_pixel_steps_per_s": rate_pix,
               "probe_steps": args.calib_steps,
               "method": "calibrated: both train steps timed back to back, the pixel model "
                         "gets STARFlow's schedule length times the rate ratio"}
    log.info("calibration: %s", out)
    return _store(path, key, out)


def train_model(workdir: str, config) -> dict:
    """Trains (resumes; reuses a workdir with ``eval.json``) and returns its summary."""
    from jaxflows.train import train

    if not os.path.exists(os.path.join(workdir, "eval.json")):
        log.info("training %s", workdir)
        os.makedirs(workdir, exist_ok=True)
        train(config, workdir)
    summary = read_json(os.path.join(workdir, "train_summary.json"))
    evals = read_json(os.path.join(workdir, "eval.json"))
    curve, rates = [], []
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if "loss" in r and "val_loss" not in r:
                curve.append([r["step"], r["loss"]])
            if "steps_per_s" in r:
                rates.append(r["steps_per_s"])
    rate = float(np.median(rates)) if rates else None
    steps = curve[-1][0] if curve else 0
    return {"workdir": repo_relative(workdir, REPO),
            "train_wall_time_s": summary["train_wall_time_s"],
            # the wall time counts everything else the machine did meanwhile; the median of the
            # logged step rates is robust to such stretches
            "train_steps_per_s_median": rate,
            "train_time_at_median_rate_s": steps / rate if rate else None,
            "epochs": summary.get("epochs"),
            "test": {k: v for k, v in evals.items() if isinstance(v, (int, float))},
            "loss_curve": curve}


def load_trained(workdir: str, config):
    """``(run, eval params, checkpoint step)`` of a trained workdir."""
    from jaxflows.train.loop import build, restore_for_eval

    run = build(config)
    step, state = restore_for_eval(run, workdir)
    return run, state.eval_params(), int(step)


# --- sampling -----------------------------------------------------------------------------------

def starflow_fn(task, params, *, weight: float, rule: str, denoise: bool = True,
                jacobi_chunk: int = 0, return_latents: bool = False):
    """``(key, labels [B]) -> samples [B, ...]`` of a STARFlow task (sampler rule ``rule``)."""
    def fn(key, labels):
        return task.sample(params, key, len(labels), guidance=weight, rule=rule,
                           class_label=labels, denoise=denoise, jacobi_chunk=jacobi_chunk,
                           batch_size=len(labels), return_latents=return_latents)
    return fn


def tarflow_fn(task, params, *, weight: float):
    """``(key, labels [B]) -> images [B, H, W, C]`` in [0, 1] of the pixel TarFlow (its own
    rule and annealing from its config, the one-step denoiser)."""
    def fn(key, labels):
        return task.sample(params, key, len(labels), guidance=weight, class_label=labels,
                           denoise=True, batch_size=len(labels))
    return fn


def latent_tarflow(star_config, star_task, shape: tuple[int, int, int, int], guidance: float,
                   seed: int):
    """A class-conditional TarFlow (patch 1) on STARFlow's latent grid with ``shape`` = (blocks,
    layers per block, width, head dim), untrained (for timing): ``(sample fn, params count,
    layout name)``; the fn maps ``(key, labels [B])`` to denoised latents (TarFlow's own rule in
    every block, its one-step denoiser at STARFlow's noise level)."""
    import math

    import flax.linen as nn

    from jaxflows.models import tarflow_config as tc
    from jaxflows.models.tarflow_task import TarFlowTask
    from jaxflows.train.config_loader import load_config_file
    from jaxflows.train.task import DataInfo

    blocks, layers, width, head_dim = shape
    config = load_config_file(f"{CONFIG}:pixel_cpu")
    m = star_config.model
    num_classes = int(m.num_classes)
    config.model = tc.default_model_config(
        patch_size=1, channels=width, head_dim=head_dim, num_blocks=blocks,
        layers_per_block=layers, num_classes=num_classes, drop_label=float(m.drop_label),
        noise_type="gaussian", noise_std=float(m.noise_std), sample_guidance=guidance)
    task = TarFlowTask(config, DataInfo.for_images(tuple(star_task.latent_shape), num_classes,
                                                   1, 1))
    params = nn.unbox(jax.jit(lambda k: task.init(k, None))(jax.random.key(seed)))
    count = int(sum(math.prod(a.shape) for a in jax.tree.leaves(params)))

    def fn(key, labels):
        return task.sample(params, key, len(labels), guidance=guidance, class_label=labels,
                           denoise=True, batch_size=len(labels))

    return fn, count, f"latent TarFlow {blocks} x {layers}-{width}, patch 1"


def draw(fn, labels: np.ndarray, batch: int, seed: int, mesh) -> tuple[np.ndarray, dict]:
    """All of ``labels`` through ``fn`` in batches (batch ``i`` with key ``fold_in(key(seed),
    i)``); returns the samples and timings: ``images_per_s`` over the batches after the first
    (which compiles), ``compile_s`` the first batch's extra time (with one batch: the rate
    includes compilation, ``timed_without_compile`` False)."""
    rng = jax.random.key(seed)
    outs, times = [], []
    with jax.set_mesh(mesh):
        for i, start in enumerate(range(0, len(labels), batch)):
            t0 = time.perf_counter()
            out = np.asarray(jax.device_get(fn(jax.random.fold_in(rng, i),
                                               labels[start:start + batch])))
            times.append(time.perf_counter() - t0)
            outs.append(out)
    steady = len(times) > 1
    n_rest = len(labels) - min(batch, len(labels))
    timing = {"sample_s": float(sum(times)), "first_batch_s": times[0],
              "images_per_s": (n_rest / sum(times[1:]) if steady
                               else len(labels) / times[0]),
              "compile_s": (max(0.0, times[0] - float(np.mean(times[1:]))) if steady
                            else None),
              "timed_without_compile": steady}
    return np.concatenate(outs), timing


def time_sampler(fn, labels: np.ndarray, reps: int, seed: int, mesh,
                 min_seconds: float = 0.0) -> dict:
    """``images_per_s`` of ``fn`` on one batch ``labels`` from the median of the timed calls
    after a warm-up call: at least ``reps`` calls and, for short calls, as many more as make
    ``min_seconds`` of timed calls; ``compile_s`` = warm-up time minus the median call."""
    with jax.set_mesh(mesh):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(jax.random.key(seed), labels))
        first = time.perf_counter() - t0
        times: list[float] = []
        while len(times) < reps or sum(times) < min_seconds:
            t0 = time.perf_counter()
            jax.block_until_ready(fn(jax.random.key(seed + 1 + len(times)), labels))
            times.append(time.perf_counter() - t0)
    call = float(np.median(times))
    return {"images_per_s": len(labels) / call, "call_s": call, "call_s_mean": float(
        np.mean(times)), "first_call_s": first, "compile_s": max(0.0, first - call),
        "reps": len(times)}


def balanced_labels(num: int, num_classes: int = 10) -> np.ndarray:
    """``i % num_classes`` for ``i < num``: class-balanced labels ``[num]`` int32."""
    return (np.arange(num) % num_classes).astype(np.int32)


def _save_first(path: str, images: np.ndarray, labels: np.ndarray, n: int = 100) -> None:
    """The first ``n`` samples (sorted by label) as uint8 ``.npy`` for figures."""
    first = np.asarray(images[:n])
    first = first[np.argsort(labels[:n], kind="stable")]
    if first.dtype != np.uint8:
        first = np.round(np.clip(first, 0.0, 1.0) * 255).astype(np.uint8)
    np.save(path, first)


def sweep_entry(name: str, rule: str, weight: float, fn, args, ctx, extra: dict) -> dict:
    """One guidance setting: ``--num_samples`` class-balanced samples scored (cached in
    ``RUNS/sweep/<name>_<rule>_w<weight>.json``)."""
    directory = os.path.join(args.runs_dir, "sweep")
    stem = os.path.join(directory, f"{name}_{rule}_w{weight:g}")
    key = {"num_samples": args.num_samples, "sample_batch": args.sample_batch,
           "seed": args.seed, "checkpoint": ctx["checkpoints"][name]}
    cached = _cached(stem + ".json", key)
    if cached is not None:
        return cached
    labels = balanced_labels(args.num_samples)
    images, timing = draw(fn, labels, args.sample_batch, args.seed + 100, ctx["mesh"][name])
    scores = mnist_classifier.score_samples(ctx["cls"], images, labels, ctx["test_stats"])
    entry = {"rule": rule, "weight": weight, "fd_mnist": scores["fd_mnist"],
             "class_accuracy": scores["class_accuracy"], **extra, **timing,
             "num_samples": args.num_samples,
             "class_accuracy_per_class": scores["class_accuracy_per_class"]}
    os.makedirs(directory, exist_ok=True)
    _save_first(stem + "_first100.npy", images, labels)
    log.info("%s %s w=%g: fd %.3f acc %.4f (%.1f img/s)", name, rule, weight, entry["fd_mnist"],
             entry["class_accuracy"], entry["images_per_s"])
    return _store(stem + ".json", key, entry)


def best_of(entries: list[dict], rule: str | None = None) -> dict | None:
    """The entry with the lowest FD-MNIST (of ``rule`` when given)."""
    pool = [e for e in entries if rule is None or e["rule"] == rule]
    return min(pool, key=lambda e: e["fd_mnist"]) if pool else None


def guidance_ratio_entry(task, params, weight: float, args, ctx) -> dict:
    """How the Gaussian rule acted at ``weight``: ``--ratio_samples`` class-balanced STARFlow
    latents drawn with it (no denoiser), and on them, by teacher forcing, the deep block's
    ``sigma_c / sigma_u`` at every token and channel
    (:func:`jaxflows.models.starflow_sampling.deep_block_sigma_ratio`, the ratios the sampler
    combined) with ``s = min(ratio, 1)^2`` and the effective weight on ``mu_c - mu_u``
    (:func:`~jaxflows.models.starflow_sampling.effective_guidance`; ``= weight`` is plain CFG).
    Cached in ``RUNS/guidance_ratio/w<weight>.json``."""
    import flax.linen as nn

    from jaxflows.models import starflow_sampling as ss

    path = os.path.join(args.runs_dir, "guidance_ratio", f"w{weight:g}.json")
    key = {"num_samples": args.ratio_samples, "seed": args.seed,
           "checkpoint": ctx["checkpoints"]["starflow"]}
    cached = _cached(path, key)
    if cached is not None:
        return cached
    labels = balanced_labels(args.ratio_samples)
    flow = nn.unbox(params)["flow"]
    ratio_fn = jax.jit(lambda p, x, y: ss.deep_block_sigma_ratio(task.model, p, x, y))
    ratios = []
    with jax.set_mesh(ctx["mesh"]["starflow"]):
        for i, start in enumerate(range(0, len(labels), args.sample_batch)):
            y = labels[start:start + args.sample_batch]
            x = task.sample(params, jax.random.fold_in(jax.random.key(args.seed + 200), i),
                            len(y), guidance=weight, rule="gaussian", class_label=y,
                            denoise=False, batch_size=len(y), return_latents=True)
            ratios.append(np.asarray(ratio_fn(flow, x, y)).reshape(-1))
    r = np.concatenate(ratios)
    s = np.square(np.minimum(r, 1.0))
    w_eff = np.asarray(ss.effective_guidance(r, weight))
    entry = {"weight": weight, "num_samples": args.ratio_samples,
             "sigma_ratio_median": float(np.median(r)),
             "sigma_ratio_p10": float(np.percentile(r, 10)),
             "sigma_ratio_p90": float(np.percentile(r, 90)),
             "s_mean": float(s.mean()), "frac_s_below_0_9": float(np.mean(s < 0.9)),
             "w_eff_mean": float(w_eff.mean()), "w_eff_median": float(np.median(w_eff)),
             "w_eff_mean_over_w": float(w_eff.mean() / weight)}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return _store(path, key, entry)


# --- the decoders -------------------------------------------------------------------------------

def decoder_rows(task, params, ft_dir: str, weight: float, args, ctx) -> list[dict]:
    """One draw of STARFlow latents at ``weight`` (rule ``starflow``), decoded by the original
    and the fine-tuned decoder, each with and without the one-step score denoiser."""
    from jaxflows.models.autoencoder import load_autoencoder

    path = os.path.join(args.runs_dir, "decoders", f"w{weight:g}.json")
    key = {"num_samples": args.num_samples, "sample_batch": args.sample_batch,
           "seed": args.seed, "checkpoint": ctx["checkpoints"]["starflow"],
           "finetuned": repo_relative(ft_dir, REPO)}
    cached = _cached(path, key)
    if cached is not None:
        return cached
    labels = balanced_labels(args.num_samples)
    mesh = ctx["mesh"]["starflow"]
    fn = starflow_fn(task, params, weight=weight, rule=STARFLOW_RULES["starflow"],
                     denoise=False, return_latents=True)
    latents, _ = draw(fn, labels, args.sample_batch, args.seed + 100, mesh)  # the sweep's draw
    _, ft = load_autoencoder(ft_dir, image_shape=ctx["image_shape"])
    if jax.tree.structure(ft["decoder"]) != jax.tree.structure(params["autoencoder"]["decoder"]):
        raise ValueError(f"the fine-tuned decoder in {ft_dir} is not STARFlow's decoder")
    decoders = {"original": params,
                "finetuned": {**params, "autoencoder": {**params["autoencoder"],
                                                        "decoder": ft["decoder"]}}}
    sigma = task.noise_std
    denoise = jax.jit(lambda p, x, c: task.denoise(p, x, c, sigma))
    decode = jax.jit(task.decode)
    b = args.sample_batch
    with jax.set_mesh(mesh):
        cond = np.asarray(task.resolve_labels(jax.random.key(0), len(labels), labels))
        denoised = np.concatenate([np.asarray(denoise(params["flow"], latents[s:s + b],
                                                      cond[s:s + b]))
                                   for s in range(0, len(labels), b)])
        rows = []
        for name, p in decoders.items():
            for den, x in ((True, denoised), (False, latents)):
                images = np.concatenate([np.asarray(decode(p, x[s:s + b]))
                                         for s in range(0, len(x), b)])
                sc = mnist_classifier.score_samples(ctx["cls"], images, labels,
                                                    ctx["test_stats"])
                rows.append({"decoder": name, "score_denoise": den, "rule": "starflow",
                             "weight": weight, "fd_mnist": sc["fd_mnist"],
                             "class_accuracy": sc["class_accuracy"],
                             "official": name == "finetuned" and not den
                             or name == "original" and den})
                log.info("decoder %s denoise %s: fd %.3f", name, den, sc["fd_mnist"])
    return _store(path, key, rows)


# --- main ---------------------------------------------------------------------------------------

def _ratio(a, b):
    return None if a is None or b is None or not b else a / b


def checks(rows: dict, speed: list[dict], decoders: list[dict], args) -> list[dict]:
    """The claims of the experiment with their numbers (``holds`` None when not applicable)."""
    out = []
    star, pix = rows["starflow"], rows["tarflow_pixel"]
    sb, pb = best_of(star["guidance"], "starflow"), best_of(pix["guidance"])
    out.append({"check": "FD-MNIST at the best weight: STARFlow (starflow rule) vs pixel "
                         "TarFlow", "value": sb["fd_mnist"], "reference": pb["fd_mnist"],
                "target": "value < reference", "holds": sb["fd_mnist"] < pb["fd_mnist"]})
    for name, rule in (("starflow", "starflow"), ("starflow", "tarflow"),
                       ("tarflow_pixel", "tarflow")):
        entries = [e for e in rows[name]["guidance"] if e["rule"] == rule]
        at5 = [e for e in entries if e["weight"] == 5.0]
        best = best_of(entries)
        ratio = _ratio(at5[0]["fd_mnist"], best["fd_mnist"]) if at5 and best else None
        out.append({"check": f"FD-MNIST at w=5 / at the best weight (w={best['weight']:g}): "
                             f"{name}, {rule} rule",
                    "value": ratio, "reference": None,
                    "target": "<= 1.2 (flat)" if name == "starflow" and rule == "starflow"
                    else "beside it",
                    "holds": (ratio <= 1.2 if ratio is not None else None)
                    if name == "starflow" and rule == "starflow" else None})
    rate = {(s["model"], s["sampler"], s.get("path", "image"), s["batch"]): s["images_per_s"]
            for s in speed}
    layouts = {s["model"]: s["layout"] for s in speed}
    for b in args.speed_batch_values:
        r = _ratio(rate.get(("starflow", "sequential", "image", b)),
                   rate.get(("starflow_uniform", "sequential", "image", b)))
        out.append({"check": "sampling images/s (sample, denoise, decode), deep-shallow / "
                             f"uniform layout of the same width and depth (batch {b})",
                    "value": r, "reference": None, "target": "report", "holds": None})
        for base in [m for m in dict.fromkeys(s["model"] for s in speed
                                              if s.get("path") == "flow")
                     if m != "starflow"]:
            r = _ratio(rate.get(("starflow", "sequential", "flow", b)),
                       rate.get((base, "sequential", "flow", b)))
            target = base == SPEED_BASELINE
            out.append({"check": f"flow sampling images/s (sample, denoise), deep-shallow / "
                                 f"{base} ({layouts[base]}) (batch {b})",
                        "value": r, "reference": None, "target": ">= 1.8" if target
                        else "report", "holds": (None if r is None else r >= 1.8)
                        if target else None})
        r = _ratio(rate.get(("starflow", "jacobi", "image", b)),
                   rate.get(("starflow", "sequential", "image", b)))
        out.append({"check": f"sampling images/s, Jacobi / sequential (batch {b})",
                    "value": r, "reference": None, "target": "report", "holds": None})
    params = {name: rows[name]["params"] for name in ("tarflow_pixel", "starflow_uniform")}
    params.update({s["model"]: s["params"] for s in speed if "params" in s})
    for other, n in params.items():
        r = _ratio(n, star["params"])
        out.append({"check": f"parameters {other} / starflow", "value": r, "reference": None,
                    "target": "within 10%", "holds": None if r is None else abs(r - 1) <= 0.1})
    r = _ratio(pix["train_wall_time_s"], star["train_wall_time_s"])
    out.append({"check": "training wall time tarflow_pixel / starflow", "value": r,
                "reference": None, "target": "within 10%",
                "holds": None if r is None else abs(r - 1) <= 0.1})
    med = [(rows[n].get("trained") or {}).get("train_time_at_median_rate_s")
           for n in ("tarflow_pixel", "starflow")]
    r = _ratio(*med)
    out.append({"check": "training time at the median logged step rate tarflow_pixel / "
                         "starflow", "value": r, "reference": None, "target": "within 10%",
                "holds": None if r is None else abs(r - 1) <= 0.1})
    by = {(d["decoder"], d["score_denoise"]): d["fd_mnist"] for d in decoders}
    if by:
        out.append({"check": "FD-MNIST at STARFlow's best weight: fine-tuned decoder (no "
                             "denoiser) vs original decoder + score denoiser",
                    "value": by[("finetuned", False)], "reference": by[("original", True)],
                    "target": "value < reference",
                    "holds": by[("finetuned", False)] < by[("original", True)]})
    return out


def ratio_checks(ratio_rows: list[dict]) -> list[dict]:
    """The Gaussian rule's mean effective weight over ``w`` at the largest weight (why its FD is
    or is not flat: near 1 it acts as plain CFG on ``mu``)."""
    if not ratio_rows:
        return []
    top = max(ratio_rows, key=lambda e: e["weight"])
    return [{"check": f"starflow rule at w={top['weight']:g}: mean effective weight on "
                      "mu_c - mu_u over w (1 = plain CFG on mu)",
             "value": top["w_eff_mean_over_w"], "reference": None, "target": "report",
             "holds": None}]


def write_markdown(path_json: str, results: dict) -> str:
    """All tables of the results file into ``<stem>.md``."""
    from jaxflows.eval.tables import render_table

    stem = os.path.splitext(path_json)[0]
    directory, name = os.path.dirname(os.path.abspath(path_json)), os.path.basename(stem)
    parts = [render_table(name, directory, rows_key=k)
             for k in ("checks", "rows", "guidance_rows", "guidance_ratio_rows", "speed_rows",
                       "decoder_rows")
             if results.get(k)]
    with open(stem + ".md", "w") as f:
        f.write("\n\n".join(parts) + "\n")
    return stem + ".md"


def save_figure(path: str, runs_dir: str, settings: list[tuple[str, str, float]]) -> str | None:
    """A PNG of 20 samples (2 per class) of each setting ``(model, rule, weight)``, one row
    each."""
    from PIL import Image

    from jaxflows.eval.grid import make_grid

    rows = []
    for model, rule, weight in settings:
        p = os.path.join(runs_dir, "sweep", f"{model}_{rule}_w{weight:g}_first100.npy")
        if os.path.exists(p):
            imgs = np.load(p)  # sorted by label, 10 per class
            per = max(1, len(imgs) // 10)
            rows.append(np.concatenate([imgs[k * per:k * per + 2] for k in range(10)]))
    if not rows:
        return None
    grid = make_grid(np.concatenate(rows).astype(np.float32) / 255.0, ncol=20)
    Image.fromarray(grid[..., 0]).save(path + ".tmp.png", format="PNG")
    os.replace(path + ".tmp.png", path)
    return path


def main(argv=None) -> dict:
    """Runs the experiment; returns (and writes) the results dict."""
    from jaxflows.models.autoencoder import SCALE_FILE
    from jaxflows.provenance import git_commit, machine_info, machine_summary, write_json_atomic
    from jaxflows.train.loop import build

    args = parse_args(argv)
    sdf = decoder_finetune_module()
    load0 = os.getloadavg()[0]
    t0 = time.time()
    timings: dict = {}
    command = "python experiments/starflow_mnist.py " + " ".join(
        sys.argv[1:] if argv is None else list(argv))
    os.makedirs(args.runs_dir, exist_ok=True)

    # 0. data and the classifier
    train_xy = mnist_classifier.load_split(args.dataset, "train", args.data_dir or None)
    test_xy = mnist_classifier.load_split(args.dataset, "test", args.data_dir or None)
    image_shape = train_xy[0].shape[1:]
    cls, cls_info = mnist_classifier.get_classifier(
        args.classifier, train_xy, test_xy, steps=args.classifier_steps, seed=args.seed,
        dataset=args.dataset)
    test_stats = mnist_classifier.reference_stats(cls, test_xy[0])
    timings["classifier_s"] = time.time() - t0

    # 1. the autoencoder and its latent scale (starflow_decoder_finetune's stages)
    t1 = time.time()
    sdf_args = sdf.parse_args(decoder_argv(args))
    ae = sdf.train_workdir(args.ae_workdir, sdf.ae_config(sdf_args))
    scale = sdf.get_scale(args.ae_workdir, train_xy[0], image_shape)
    timings["autoencoder_s"] = time.time() - t1

    # 2. the decoder fine-tuned on sigma_L-noised latents
    t1 = time.time()
    ft_json = os.path.join(args.runs_dir, "decoder", "starflow_decoder.json")
    ft_results = (read_json(ft_json) if os.path.exists(ft_json)
                  else sdf.main(decoder_argv(args)))
    ft_dir = os.path.join(args.runs_dir, "decoder", "finetuned")
    if not os.path.exists(os.path.join(ft_dir, SCALE_FILE)):
        shutil.copyfile(os.path.join(args.ae_workdir, SCALE_FILE),
                        os.path.join(ft_dir, SCALE_FILE))
    timings["decoder_finetune_s"] = time.time() - t1

    # 3. both models, equal wall time
    t1 = time.time()
    configs = {"starflow": starflow_config(args, args.ae_workdir, scale)}
    calib = calibrate(args, configs["starflow"])
    configs["tarflow_pixel"] = pixel_config(args, num_steps=calib["tarflow_pixel_steps"])
    configs["starflow_uniform"] = starflow_config(args, args.ae_workdir, scale, "uniform")
    trained = {name: train_model(os.path.join(args.runs_dir, "train", name), configs[name])
               for name in MODELS}
    timings["train_s"] = time.time() - t1

    ctx = {"cls": cls, "test_stats": test_stats, "image_shape": image_shape, "mesh": {},
           "checkpoints": {}}
    models = {}
    for name in MODELS:
        run, params, step = load_trained(os.path.join(args.runs_dir, "train", name),
                                         configs[name])
        models[name] = (run.task, params)
        ctx["mesh"][name], ctx["checkpoints"][name] = run.mesh, step

    # 4. guidance sweep
    t1 = time.time()
    guidance = {name: [] for name in MODELS}
    task, params = models["starflow"]
    for rule, sampler_rule in STARFLOW_RULES.items():
        for w in args.weight_values:
            if w == 0 and rule != "starflow":  # no guidance: the same computation
                shared = next(e for e in guidance["starflow"] if e["weight"] == 0)
                guidance["starflow"].append({**shared, "rule": rule, "sampler_rule":
                                             sampler_rule, "shared_with": "starflow rule"})
                continue
            fn = starflow_fn(task, params, weight=w, rule=sampler_rule)
            guidance["starflow"].append(sweep_entry(
                "starflow", rule, w, fn, args, ctx,
                {"sampler_rule": sampler_rule, "annealed": False, "denoise": True,
                 "decoder": "original"}))
    task_p, params_p = models["tarflow_pixel"]
    for w in args.weight_values:
        guidance["tarflow_pixel"].append(sweep_entry(
            "tarflow_pixel", "tarflow", w, tarflow_fn(task_p, params_p, weight=w), args, ctx,
            {"sampler_rule": "linear", "annealed": bool(configs["tarflow_pixel"].model.get(
                "sample_annealed", True)), "denoise": True}))
    timings["sweep_s"] = time.time() - t1
    t1 = time.time()
    ratio_rows = [guidance_ratio_entry(task, params, w, args, ctx)
                  for w in args.weight_values if w > 0]
    timings["guidance_ratio_s"] = time.time() - t1

    # 5. speed: deep-shallow vs uniform, sequential vs Jacobi; the decoders
    t1 = time.time()
    uniform: dict = {}

    def uniform_fn(latents: bool):  # built only when a uniform timing is not cached yet
        if not uniform:
            run = build(configs["starflow_uniform"])
            with jax.set_mesh(run.mesh):
                uniform["params"] = run.init_state().params  # untrained flow, trained AE
            uniform["task"], uniform["mesh"] = run.task, run.mesh
        return starflow_fn(uniform["task"], uniform["params"], weight=args.speed_guidance,
                           rule="gaussian", return_latents=latents), uniform["mesh"]

    star_mesh = ctx["mesh"]["starflow"]
    latent_shapes = QUICK_LATENT_TARFLOWS if args.quick else LATENT_TARFLOWS
    latent_info: dict = {}

    def latent_fn(name: str):
        fn, count, layout = latent_tarflow(configs["starflow"], task, latent_shapes[name],
                                           args.speed_guidance, args.seed)
        latent_info[name] = {"params": count, "layout": layout}
        return fn, star_mesh

    # (model, sampler, path): "image" = sample, denoise, decode; "flow" = sample and denoise
    speed_models = {
        ("starflow", "sequential", "image"): lambda: (starflow_fn(
            task, params, weight=args.speed_guidance, rule="gaussian"), star_mesh),
        ("starflow_uniform", "sequential", "image"): lambda: uniform_fn(False),
        ("starflow", "jacobi", "image"): lambda: (starflow_fn(
            task, params, weight=args.speed_guidance, rule="gaussian",
            jacobi_chunk=args.jacobi_chunk), star_mesh),
        ("tarflow_pixel", "sequential", "image"): lambda: (tarflow_fn(
            task_p, params_p, weight=args.speed_guidance), ctx["mesh"]["tarflow_pixel"]),
        ("starflow", "sequential", "flow"): lambda: (starflow_fn(
            task, params, weight=args.speed_guidance, rule="gaussian", return_latents=True),
            star_mesh),
        ("starflow_uniform", "sequential", "flow"): lambda: uniform_fn(True),
        **{(name, "sequential", "flow"): (lambda name=name: latent_fn(name))
           for name in latent_shapes},
    }
    speed = []
    for batch in args.speed_batch_values:
        for (model, sampler, path_kind), make in speed_models.items():
            suffix = "" if path_kind == "image" else "_flow"
            path = os.path.join(args.runs_dir, "speed", f"{model}_{sampler}{suffix}_b{batch}.json")
            key = {"reps": args.speed_reps, "min_seconds": args.speed_min_seconds,
                   "statistic": "median", "guidance": args.speed_guidance, "seed": args.seed,
                   "jacobi_chunk": args.jacobi_chunk if sampler == "jacobi" else 0,
                   "checkpoint": ctx["checkpoints"].get(model),
                   **({"shape": list(latent_shapes[model])} if model in latent_shapes else {})}
            value = _cached(path, key)
            if value is None:
                fn, mesh = make()
                value = time_sampler(fn, balanced_labels(batch), args.speed_reps, args.seed,
                                     mesh, args.speed_min_seconds)
                if model in latent_shapes:
                    value.update(latent_info[model])
                value = _store(path, key, value)
            layout = value.get("layout") or layout_name(configs[model])
            speed.append({"model": model, "layout": layout, "sampler": sampler,
                          "path": path_kind, "jacobi_chunk": key["jacobi_chunk"],
                          "batch": batch, "guidance": args.speed_guidance, **value})
            log.info("speed %s %s (%s) batch %d: %.1f img/s", model, sampler, path_kind, batch,
                     value["images_per_s"])
    timings["speed_s"] = time.time() - t1
    t1 = time.time()
    star_best = best_of(guidance["starflow"], "starflow")
    decoders = decoder_rows(task, params, ft_dir, star_best["weight"], args, ctx)
    timings["decoders_s"] = time.time() - t1

    # 6. the results
    big = max(args.speed_batch_values)
    rows = {}
    for name in (*MODELS, "starflow_uniform"):
        counts = param_counts(configs[name])
        entries = guidance.get(name, [])
        best = best_of(entries)
        rate = next(s["images_per_s"] for s in speed if s["model"] == name
                    and s["sampler"] == "sequential" and s["path"] == "image"
                    and s["batch"] == big)
        tr = trained.get(name, {})
        rows[name] = {
            "name": name, "layout": layout_name(configs[name]), **counts,
            "train_steps": calib.get(f"{name}_steps"),
            "train_wall_time_s": tr.get("train_wall_time_s"),
            "sample_images_per_s": rate,
            "best_rule": best["rule"] if best else None,
            "best_weight": best["weight"] if best else None,
            "best_fd_mnist": best["fd_mnist"] if best else None,
            "best_class_accuracy": best["class_accuracy"] if best else None,
            "guidance": entries,
            **({"trained": tr} if tr else {"trained": None,
                                          "note": "untrained: sampling speed only"}),
        }
    flat = [{"model": name, "rule": e["rule"], "weight": e["weight"],
             "fd_mnist": e["fd_mnist"], "class_accuracy": e["class_accuracy"],
             "images_per_s": e["images_per_s"]} for name in MODELS for e in guidance[name]]
    speed_table = [{k: s.get(k) for k in ("model", "layout", "sampler", "path", "batch",
                                          "guidance", "images_per_s", "compile_s")}
                   for s in speed]
    results = {
        "title": "STARFlow on MNIST latents vs a pixel TarFlow of equal size "
                 "(arXiv 2506.06276 at MNIST scale)",
        "protocol": (
            f"{args.dataset}; STARFlow {layout_name(configs['starflow'])} on the KL "
            f"autoencoder's latents (scale {scale:.4f}, sigma_L "
            f"{configs['starflow'].model.noise_std:g}) vs pixel TarFlow "
            f"{layout_name(configs['tarflow_pixel'])}; equal wall time by "
            f"{args.equal_time} ({calib['starflow_steps']} vs {calib['tarflow_pixel_steps']} "
            f"steps); guidance w in {args.weight_values}, {args.num_samples} class-balanced "
            f"samples per setting (batch {args.sample_batch}), score denoiser, original "
            f"decoder; FD-MNIST vs the {len(test_xy[0])} test images and class accuracy with "
            f"DigitCNN; speed at batches {args.speed_batch_values}, w={args.speed_guidance:g}, "
            f"median of >= {args.speed_reps} timed calls (>= {args.speed_min_seconds:g} s) "
            f"after a warm-up, Jacobi chunk {args.jacobi_chunk}"),
        "command": command,
        "git_commit": git_commit(),
        "machine": machine_summary(),
        "columns": COLUMNS,
        "rows": list(rows.values()),
        "checks": checks(rows, speed, decoders, args) + ratio_checks(ratio_rows),
        "guidance_ratio_rows": ratio_rows,
        "guidance_rows": flat,
        "speed_rows": speed_table,
        "speed": speed,
        "decoder_rows": decoders,
        "calibration": calib,
        "decoder_finetune": {"workdir": repo_relative(ft_dir, REPO), "rows": ft_results.get("rows"),
                             "results": repo_relative(ft_json, REPO), "epochs": args.ft_epochs},
        "autoencoder": {"workdir": repo_relative(args.ae_workdir, REPO), "latent_scale": scale,
                        "eval": ae.get("eval"), "train_wall_time_s": ae.get("train_wall_time_s")},
        "classifier": cls_info | {"path": repo_relative(args.classifier, REPO)},
        "num_samples": args.num_samples,
        "weights": args.weight_values,
        "wall_time_s": time.time() - t0,
        "timings": timings,
        "machine_info": machine_info(load0),
    }
    out = os.path.abspath(args.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    figure = save_figure(os.path.splitext(out)[0] + "_samples.png", args.runs_dir, [
        ("starflow", "starflow", star_best["weight"]),
        ("tarflow_pixel", "tarflow", best_of(guidance["tarflow_pixel"])["weight"])])
    if figure:
        results["samples_figure"] = repo_relative(figure, REPO)
        results["samples_figure_rows"] = ["STARFlow, starflow rule, its best weight",
                                          "pixel TarFlow, its best weight"]
    if os.path.exists(out):  # a rerun over cached stages: keep the earlier invocations' record
        prev = read_json(out)
        results["earlier_invocations"] = prev.get("earlier_invocations", []) + [
            {k: prev[k] for k in ("command", "git_commit", "wall_time_s", "timings",
                                  "machine_info")
             if k in prev}]
    write_json_atomic(out, results, indent=1)
    write_markdown(out, results)
    return results


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    log.setLevel(logging.INFO)
    main()
