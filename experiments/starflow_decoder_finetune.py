"""STARFlow's decoder fine-tuning on noisy latents (Gu et al. 2025, arXiv 2506.06276, Sec. 3.3;
apple/ml-starflow ``finetune_decoder.py``) at MNIST scale: reconstruction and FD-MNIST of the
original and the fine-tuned decoder, from clean and from noised latents.

    # MNIST, the table (pass --classifier runs/align_mnist/classifier/params.msgpack to reuse
    # align_mnist's classifier)
    python experiments/starflow_decoder_finetune.py
    # a test, on the embedded 8 x 8 digits
    python experiments/starflow_decoder_finetune.py --quick --data_dir DIR --runs_dir RUNS

STARFlow trains its flow on ``x = E(img) * s + sigma_L eps`` (``sigma_L = 0.3``), so its samples
are noisy latents; it fine-tunes the autoencoder's decoder, encoder frozen, on such latents with
``L2 + LPIPS + GAN``, and reports the decoder's rFID at ``sigma = 0.3`` close to its best
generation FID. Here:

1. **classifier**: DigitCNN (:mod:`jaxflows.eval.classifier`, ``--classifier_steps`` on the
   training split), the network of FD-MNIST and of the perceptual term, saved with
   :func:`jaxflows.eval.classifier.save_classifier_params` in ``--classifier`` (default
   ``RUNS_DIR/classifier/params.msgpack``; align_mnist's cache has the same format and can be
   passed instead) and trained only when that file is missing;
2. **autoencoder**: ``--ae_workdir`` (default ``runs/starflow_ae``, the workdir that
   ``autoencoder_mnist.py:finetune_decoder`` starts from), trained by the engine with
   ``experiments/configs/autoencoder_mnist.py:kl`` (``--ae_kind``; ``--ae_epochs``) when it has no
   ``eval.json``. The default is the **KL** autoencoder: STARFlow uses the SD VAE, a KL-regularised
   f8 autoencoder with a diagonal Gaussian posterior, and that is the ``kl`` row (``kl_weight =
   1e-6``, LDM's recipe; 7 x 7 x 4 latents); its decoder already sees posterior samples in
   training, the same kind of latent perturbation as ``sigma_L``. (The plain ``ae`` row
   reconstructs a little better, mse 0.0040 vs 0.0045 in align_mnist, and can be chosen with
   ``--ae_kind ae``.) Its latent scale (``1 / std`` of the posterior means of the training images)
   is computed once and saved in the workdir;
3. **fine-tuning** (``RUNS_DIR/finetuned``): ``autoencoder_mnist.py:finetune_decoder``, i.e. the
   autoencoder's ``best_params`` encoder and decoder grafted by ``config.init_from``, the encoder
   frozen (``optim.freeze``), the decoder trained for ``--epochs`` on
   ``z + (sigma_L / scale) eps`` with ``L2 + perceptual_weight * perceptual`` (DigitCNN stand-in
   for LPIPS, :mod:`jaxflows.models.autoencoder_losses`) and, with ``--gan_weight > 0``, the
   hinge PatchGAN (off by default: the CPU budget); the best parameters by validation
   ``noisy_loss``. The architecture keys are copied from the autoencoder's saved config, and its
   ``latent_scale.json`` is copied next to the fine-tuned checkpoint (the encoder is the same);
4. **metrics**, for both decoders, on ``--num_eval`` test images (all 10,000 of MNIST's), from
   the posterior means ``z`` (``latents = 'clean'``) and from ``z + (sigma_L / scale) eps``
   (``'noisy'``, one fixed ``eps`` draw shared by both decoders): ``mse`` (per pixel in
   ``[0, 1]``, decoder output clipped, mean over images), ``psnr`` (mean over images of
   ``10 log10(1 / mse_image)``) and ``fd_mnist`` (Fréchet distance between DigitCNN features of
   the reconstructions and of the test images; ``fd_mnist_train_vs_test`` is the floor).

Writes ``--out`` (default ``experiments/results/starflow_decoder.json``): ``rows`` of
``{decoder, latents, mse, psnr, fd_mnist}``, the command, git commit, machine, wall times, the
classifier, and the per-epoch curves of the autoencoder and of the fine-tuning; and its Markdown
table next to it. Stages are cached under ``--runs_dir`` (a rerun reuses the classifier, the
autoencoder and a finished fine-tuning; an interrupted one resumes). ``--quick`` shrinks
everything on the embedded 8 x 8 ``digits`` (a test).

CPU budget (MNIST; CPU seconds measured on this 2-core x86 machine, batch 128): classifier 600
steps of about 0.27 s (~3 min; none when align_mnist's is passed), KL autoencoder 1.5 epochs
(585 steps of about 0.14 s, ~1.5 min plus evaluations), fine-tuning 3 epochs (1,173 steps of
about 0.33 s with the perceptual term, ~6.5 min, plus three validations of 10,000 images),
metrics about a minute: some 12-15 CPU minutes in all; on a machine shared with other jobs the
wall time is a multiple of that.
"""

from __future__ import annotations

import argparse
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

import numpy as np  # noqa: E402

from jaxflows.eval import mnist_classifier  # noqa: E402
from jaxflows.eval.mnist_classifier import features, load_split  # noqa: E402
from jaxflows.provenance import read_json, repo_relative  # noqa: E402

log = logging.getLogger("starflow_decoder_finetune")

COLUMNS = ["decoder", "latents", "mse", "psnr", "fd_mnist"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs_dir", default=os.path.join("runs", "starflow_decoder"))
    p.add_argument("--out", default=os.path.join(REPO, "experiments", "results",
                                                 "starflow_decoder.json"))
    p.add_argument("--data_dir", default="", help="dataset cache ('' = the default)")
    p.add_argument("--ae_workdir", default="",
                   help="trained autoencoder ('' = runs/starflow_ae; --quick: RUNS_DIR/ae)")
    p.add_argument("--ae_kind", default="kl", choices=("kl", "ae"))
    p.add_argument("--ae_epochs", type=float, default=1.5)
    p.add_argument("--classifier", default="",
                   help="DigitCNN params file ('' = RUNS_DIR/classifier/params.msgpack)")
    p.add_argument("--classifier_steps", type=int, default=600)
    p.add_argument("--epochs", type=float, default=3.0, help="fine-tuning epochs")
    p.add_argument("--sigma", type=float, default=0.3, help="sigma_L, in the scaled units")
    p.add_argument("--perceptual_weight", type=float, default=None,
                   help="default: the finetune_decoder row's")
    p.add_argument("--gan_weight", type=float, default=0.0)
    p.add_argument("--num_eval", type=int, default=10_000, help="test images to evaluate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[],
                   help="overrides of the fine-tuning config, e.g. --set optim.learning_rate=1e-3")
    p.add_argument("--quick", action="store_true", help="everything tiny, on digits (a test)")
    args = p.parse_args(argv)
    args.dataset = "mnist"
    if args.quick:
        args.dataset = "digits"
        for key, value in dict(ae_epochs=6.0, classifier_steps=60, epochs=3.0).items():
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, value)
    if not args.ae_workdir:
        args.ae_workdir = (os.path.join(args.runs_dir, "ae") if args.quick
                           else os.path.join("runs", "starflow_ae"))
    if not args.classifier:
        args.classifier = os.path.join(args.runs_dir, "classifier", "params.msgpack")
    return args




def _config_module():
    sys.path.insert(0, os.path.join(HERE, "configs"))
    import autoencoder_mnist

    return autoencoder_mnist


# --- the classifier --------------------------------------------------------------------------

def get_classifier(args, train, test) -> tuple[dict, dict]:
    """DigitCNN params from ``args.classifier`` (trained and saved there when missing) and
    ``{test_accuracy, steps, path, ...}`` (from ``info.json`` beside it when present)."""
    params, info = mnist_classifier.get_classifier(
        args.classifier, train, test, steps=args.classifier_steps, seed=args.seed,
        dataset=args.dataset)
    return params, info | {"path": repo_relative(args.classifier, REPO)}


# --- the autoencoder and the fine-tuning --------------------------------------------------------

def ae_config(args):
    """The autoencoder's engine config: ``autoencoder_mnist.py:kl|ae`` (``:smoke`` in the chosen
    mode with ``--quick``), ``--ae_epochs`` epochs."""
    cfg = _config_module()
    if args.quick:
        config = cfg.get_config("smoke")
        config.train.eval_every_epochs = args.ae_epochs / 2
        if args.ae_kind == "kl":
            config.model.mode, config.model.kl_weight = "kl", 1e-6
    else:
        config = cfg.get_config(args.ae_kind)
    config.seed = args.seed
    config.train.num_epochs = args.ae_epochs
    config.train.progress_bar = False
    if args.data_dir:
        config.data.data_dir = args.data_dir
    return config


def finetune_config(args, ae_workdir: str, scale: float):
    """``autoencoder_mnist.py:finetune_decoder`` (``:finetune_smoke`` with ``--quick``) pointed
    at ``ae_workdir`` and ``args.classifier``, with the autoencoder's architecture and scale."""
    from jaxflows.train.config_loader import apply_overrides
    from jaxflows.train.loop import load_saved_config

    cfg = _config_module()
    config = cfg.get_config("finetune_smoke" if args.quick else "finetune_decoder")
    saved = load_saved_config(ae_workdir)
    for key in cfg.ARCH_KEYS:  # the autoencoder's architecture
        config.model[key] = saved.model[key]
    config.init_from = cfg.finetune_init_from(ae_workdir)
    config.model.latent_scale = float(scale)
    config.model.latent_noise_std = args.sigma
    if args.perceptual_weight is not None:
        config.model.perceptual_weight = args.perceptual_weight
    elif args.quick:  # the smoke row runs without a classifier; the experiment has one
        config.model.perceptual_weight = cfg.get_config("finetune_decoder").model.perceptual_weight
    config.model.perceptual_classifier = os.path.abspath(args.classifier)
    config.model.gan_weight = args.gan_weight
    config.seed = args.seed
    config.train.num_epochs = args.epochs
    config.train.progress_bar = False
    if args.quick:
        config.train.eval_every_epochs = 1.0
    if args.data_dir:
        config.data.data_dir = args.data_dir
    if args.set:
        config = apply_overrides(config, [f"--config.{s}" for s in args.set])
    return config


def train_workdir(workdir: str, config) -> dict:
    """Trains (or resumes, or reuses when ``eval.json`` exists) ``workdir``; returns its per-log
    and per-evaluation curves and the training wall time."""
    from jaxflows.train import train

    if not os.path.exists(os.path.join(workdir, "eval.json")):
        log.info("training %s", workdir)
        os.makedirs(workdir, exist_ok=True)
        train(config, workdir)
    train_cols = ["step", "loss", "mse", "perceptual", "d_loss", "g_loss"]
    val_cols = ["step", "epoch", "loss", "mse", "psnr", "noisy_loss", "noisy_mse", "noisy_psnr",
                "perceptual"]
    train_curve, val_curve = [], []
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if "val_loss" in r:
                val_curve.append([r["step"], r.get("val_epoch")] + [r.get(f"val_{c}")
                                                                     for c in val_cols[2:]])
            elif "loss" in r:
                train_curve.append([r.get(c) for c in train_cols])
    summary_path = os.path.join(workdir, "train_summary.json")
    summary = read_json(summary_path) if os.path.exists(summary_path) else {}
    return {"workdir": repo_relative(workdir, REPO),
            "eval": read_json(os.path.join(workdir, "eval.json")),
            "train_wall_time_s": summary.get("train_wall_time_s"),
            "curves": {"train_columns": train_cols, "train": train_curve,
                       "val_columns": val_cols, "val": val_curve}}


def get_scale(workdir: str, train_x: np.ndarray, image_shape) -> float:
    """The autoencoder's latent scale, computed from the training images and saved once."""
    from jaxflows.errors import UserError
    from jaxflows.models.autoencoder import (
        latent_scale,
        load_autoencoder,
        load_latent_scale,
        save_latent_scale,
    )

    try:
        return load_latent_scale(workdir)
    except UserError:
        task, params = load_autoencoder(workdir, image_shape=image_shape)
        scale = latent_scale(task, params, train_x)
        save_latent_scale(workdir, scale, num_images=len(train_x), params="best_params",
                          what="1 / std of the posterior means of the training images")
        return scale


# --- metrics ------------------------------------------------------------------------------------

def recon_metrics(recon: np.ndarray, images: np.ndarray, cls_params, test_stats) -> dict:
    """``mse``, ``psnr`` and ``fd_mnist`` of reconstructions ``[N, H, W, C]`` in ``[0, 1]`` of
    uint8 ``images``."""
    from jaxflows.eval.frechet import feature_stats, frechet_distance_from_stats

    err = (np.asarray(recon, np.float64) - images.astype(np.float64) / 255.0) ** 2
    per = err.reshape(len(err), -1).mean(-1)
    return {"mse": float(per.mean()),
            "psnr": float(np.mean(-10.0 * np.log10(np.maximum(per, 1e-10)))),
            "fd_mnist": frechet_distance_from_stats(*feature_stats(features(cls_params, recon)),
                                                    *test_stats)}


def evaluate_decoder(workdir: str, name: str, z: np.ndarray, eps: np.ndarray, scale: float,
                     args, ctx) -> list[dict]:
    """Rows ``{decoder, latents, mse, psnr, fd_mnist}`` of ``workdir``'s best decoder from
    the clean latents ``z`` and from ``z + (sigma / scale) eps``."""
    from jaxflows.models.autoencoder import decode_all, load_autoencoder

    task, params = load_autoencoder(workdir, image_shape=ctx["image_shape"])
    rows = []
    for latents, zz in (("clean", z), ("noisy", z + (args.sigma / scale) * eps)):
        rec = decode_all(task, params, zz)
        rows.append({"decoder": name, "latents": latents,
                     **recon_metrics(rec, ctx["test_x"], ctx["cls"], ctx["test_stats"])})
        log.info("%s decoder, %s latents: %s", name, latents, rows[-1])
    return rows


def main(argv=None) -> dict:
    """Runs the experiment; returns (and writes) the results dict."""
    from jaxflows.eval.frechet import feature_stats, frechet_distance_from_stats
    from jaxflows.eval.tables import render_table
    from jaxflows.models.autoencoder import SCALE_FILE, encode_all, load_autoencoder
    from jaxflows.provenance import git_commit, machine_info, machine_summary, write_json_atomic
    from jaxflows.train.loop import load_saved_config

    args = parse_args(argv)
    load0 = os.getloadavg()[0]
    t0 = time.time()
    timings: dict = {}
    command = "python experiments/starflow_decoder_finetune.py " + " ".join(
        sys.argv[1:] if argv is None else list(argv))
    os.makedirs(args.runs_dir, exist_ok=True)

    train = load_split(args.dataset, "train", args.data_dir or None)
    test = load_split(args.dataset, "test", args.data_dir or None)
    n_eval = min(args.num_eval, len(test[0]))
    ctx = {"image_shape": train[0].shape[1:], "test_x": test[0][:n_eval]}
    ctx["cls"], cls_info = get_classifier(args, train, test)
    timings["classifier_s"] = time.time() - t0
    ctx["test_stats"] = feature_stats(features(ctx["cls"], ctx["test_x"]))
    n_ref = min(len(train[0]), n_eval)
    fd_floor = frechet_distance_from_stats(*feature_stats(features(ctx["cls"], train[0][:n_ref])),
                                           *ctx["test_stats"])

    t1 = time.time()
    ae = train_workdir(args.ae_workdir, ae_config(args))
    scale = get_scale(args.ae_workdir, train[0], ctx["image_shape"])
    ae_mode = str(load_saved_config(args.ae_workdir).model.mode)  # a reused workdir's own
    timings["autoencoder_s"] = time.time() - t1

    # the test latents (the frozen encoder: the same for both decoders) and one noise draw
    t1 = time.time()
    task, params = load_autoencoder(args.ae_workdir, image_shape=ctx["image_shape"])
    z = encode_all(task, params, ctx["test_x"])
    eps = np.random.default_rng(args.seed + 11).standard_normal(z.shape).astype(np.float32)
    rows = evaluate_decoder(args.ae_workdir, "original", z, eps, scale, args, ctx)
    timings["eval_original_s"] = time.time() - t1

    t1 = time.time()
    ft_dir = os.path.join(args.runs_dir, "finetuned")
    config = finetune_config(args, args.ae_workdir, scale)
    ft = train_workdir(ft_dir, config)
    if not os.path.exists(os.path.join(ft_dir, SCALE_FILE)):
        shutil.copyfile(os.path.join(args.ae_workdir, SCALE_FILE), os.path.join(ft_dir, SCALE_FILE))
    timings["finetune_s"] = time.time() - t1
    t1 = time.time()
    ft_task, ft_params = load_autoencoder(ft_dir, image_shape=ctx["image_shape"])
    z_ft = encode_all(ft_task, ft_params, ctx["test_x"])
    encoder_unchanged = bool(np.array_equal(z_ft, z))
    rows += evaluate_decoder(ft_dir, "finetuned", z, eps, scale, args, ctx)
    timings["eval_finetuned_s"] = time.time() - t1

    m = config.model
    results = {
        "title": "STARFlow decoder fine-tuning on noisy latents (arXiv 2506.06276 Sec. 3.3 at "
                 "MNIST scale)",
        "protocol": (
            f"{args.dataset}; {ae_mode} autoencoder "
            f"({repo_relative(args.ae_workdir, REPO)}, latents "
            f"{'x'.join(str(d) for d in z.shape[1:])}, scale {scale:.4f}); decoder fine-tuned "
            f"{args.epochs:g} epochs, encoder frozen, on z + ({args.sigma:g}/scale) eps with "
            f"L2 + {m.perceptual_weight:g} perceptual (DigitCNN {list(m.perceptual_layers)}) "
            f"+ {m.gan_weight:g} GAN, lr {config.optim.learning_rate:g}, best by noisy_loss; "
            f"metrics on {n_eval} test images: clean = posterior mean, noisy = + "
            f"{args.sigma:g}/scale eps (one draw, both decoders); FD-MNIST vs the test "
            f"images"),
        "command": command,
        "git_commit": git_commit(),
        "machine": machine_summary(),
        "columns": COLUMNS,
        "rows": rows,
        "sigma_l": args.sigma,
        "latent_scale": scale,
        "num_eval": n_eval,
        "fd_mnist_train_vs_test": fd_floor,
        "encoder_unchanged": encoder_unchanged,
        "classifier": cls_info,
        "autoencoder": {"kind": ae_mode, "epochs": args.ae_epochs, **ae},
        "finetune": {"epochs": args.epochs, "perceptual_weight": m.perceptual_weight,
                     "perceptual_layers": list(m.perceptual_layers), "gan_weight": m.gan_weight,
                     "learning_rate": config.optim.learning_rate, **ft},
        "wall_time_s": time.time() - t0,
        "timings": timings,
        "machine_info": machine_info(load0),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_json_atomic(args.out, results, indent=1)
    stem = os.path.splitext(args.out)[0]
    with open(stem + ".md", "w") as f:
        f.write(render_table(os.path.basename(stem), os.path.dirname(os.path.abspath(args.out)))
                + "\n")
    return results


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    log.setLevel(logging.INFO)
    main()
