"""Does the flow-prior alignment loss track log-likelihood? The 2-D toys of arXiv 2506.05240.

    python experiments/align_toy.py --runs_dir runs/align_toy          # CPU rows, all six
    python experiments/align_toy.py --rows paper --runs_dir runs/align_toy_paper   # 100k steps
    python experiments/align_toy.py --smoke --runs_dir /tmp/x --out /tmp/x/align_toy.json

"Aligning Latent Spaces with Flow Priors" (Li et al. 2025; official code
``liyz15/Aligning-Latent-Spaces-with-Flow-Priors``, ``continuous_tokenizer/toy_examples/``) shows
only plots for its toys. For each density of :mod:`jaxflows.data.toy2d` this script

0. trains the flow-matching prior through the engine (``jaxflows.train.train``, config
   ``experiments/configs/flow_matching_toy.py:<row>``) into ``RUNS_DIR/<density>``; an
   interrupted run resumes where it stopped, a finished one is reused;
1. (a) estimates ``L_align(y) = E_{t, eps}||v((1-t) eps + t y, t) - (y - eps)||^2`` with
   ``--draws`` draws of ``(t, eps)`` shared by every point (common random numbers; ``t``
   stratified over ``[0, 1]``), and reports its Spearman rank correlation with the true
   negative log-density over a ``--grid`` x ``--grid`` grid on ``[-E, E]^2`` and over
   ``--num_samples`` fresh samples of the density; the same against the paper's KDE NLL
   (``--kde_samples`` reference samples, bandwidth 0.1). On the samples ``L_align`` uses
   ``--sample_draws`` draws, and ``lalign_repeatability`` is the rank correlation of two
   independent such estimates (the estimator's noise); ``spearman_samples_with_c`` ranks
   ``L_align - C(y)`` instead (the bound's full right-hand side). For the mixtures (gmm5, grid)
   the same statistics of the *exact* optimal field
   (:func:`jaxflows.models.flow_matching.gaussian_mixture_velocity`, same draws) separate what
   ``L_align`` itself does from the learned prior's errors, and ``lalign_samples_by_mode`` is
   the mean ``L_align`` of the samples nearest each mode;
2. (b) optimises ``--latents`` free latents from ``N(0, I)`` by ``L_align`` alone (Adam
   ``--latent_lr``, ``--latent_steps`` steps, ``--latent_repeats`` fresh draws per latent and
   step), recording every ``--record_every`` steps the mean true NLL and the mean ``L_align``
   (common draws) of the latents; for the mixtures (gmm5, grid) the fraction of latents whose
   nearest mode is each mode (gmm5: against 0.2 each), the same for the initial latents and the
   data, the fraction of latents that changed their nearest mode, and the mean distance to the
   nearest mode (latents vs data: a collapse onto the modes shows as a smaller distance);
3. (c) the bound of Prop. 1, ``log p_1(y) >= C(y) - L_align(y)``: on a ``--bound_grid`` grid
   over the same square, the prior's exact ``log p_1`` (ODE, Tsit5, exact trace), ``L_align``
   and ``C(y) = -E[Tr dv/dz]`` with the common draws; rank correlations and the gap
   ``log p_1 - (C - L_align)``.

Writes ``--out`` (default ``experiments/results/align_toy.json``: ``rows[]`` with provenance and
the priors' training curves) after every density, heat maps ``<density>.png`` (true NLL,
``L_align``, the prior's ``-log p`` and the optimised latents) into ``--plots_dir``, and caches
each density's analysis in its workdir (``align_analysis.json``; ``--recompute`` ignores it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

log = logging.getLogger("align_toy")

#: table columns (the rest of each row stays in the JSON)
COLUMNS = ["density", "spearman_grid", "spearman_samples", "spearman_grid_kde",
           "spearman_samples_kde", "lalign_repeatability", "spearman_samples_optimal_field",
           "spearman_samples_with_c",
           "coverage_min", "coverage_max", "latent_mode_dist_mean", "data_mode_dist_mean",
           "latent_nll_start", "latent_nll_final", "data_nll", "bound_spearman",
           "bound_holds_frac", "bound_gap_median", "prior_nll_ode", "test_nll_true",
           "train_steps"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs_dir", default=os.path.join("runs", "align_toy"),
                   help="workdirs of the priors, one per density")
    p.add_argument("--rows", choices=("cpu", "paper"), default="cpu",
                   help="cpu: the CPU rows of flow_matching_toy; paper: paper_<density>")
    p.add_argument("--densities", default="gmm5,grid,moons,rings,spiral,swissroll")
    p.add_argument("--out", default=os.path.join(REPO, "experiments", "results",
                                                 "align_toy.json"))
    p.add_argument("--plots_dir", default=None,
                   help="heat maps (default: the --out path without .json)")
    p.add_argument("--data_dir", default="", help="dataset cache ('' = the default)")
    p.add_argument("--set", action="append", default=[],
                   help="config overrides for the priors, e.g. --set train.num_steps=8000")
    p.add_argument("--grid", type=int, default=200)
    p.add_argument("--extent", type=float, default=3.0, help="grid square [-E, E]^2")
    p.add_argument("--draws", type=int, default=64, help="(t, eps) draws for L_align maps")
    p.add_argument("--sample_draws", type=int, default=256,
                   help="(t, eps) draws for L_align of the samples (two independent sets)")
    p.add_argument("--record_draws", type=int, default=32,
                   help="(t, eps) draws for L_align of the latents while they train")
    p.add_argument("--num_samples", type=int, default=10_000)
    p.add_argument("--kde_samples", type=int, default=100_000)
    p.add_argument("--kde_bandwidth", type=float, default=0.1)
    p.add_argument("--latents", type=int, default=1000)
    p.add_argument("--latent_steps", type=int, default=5000)
    p.add_argument("--latent_lr", type=float, default=1e-2)
    p.add_argument("--latent_repeats", type=int, default=1)
    p.add_argument("--record_every", type=int, default=100)
    p.add_argument("--bound_grid", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--recompute", action="store_true", help="ignore cached analyses")
    p.add_argument("--smoke", action="store_true", help="everything tiny (a test)")
    args = p.parse_args(argv)
    if args.smoke:
        if args.densities == p.get_default("densities"):
            args.densities = "gmm5"
        for key, value in dict(grid=16, draws=8, sample_draws=8, record_draws=4,
                               num_samples=300, kde_samples=2000,
                               latents=64, latent_steps=60, record_every=20,
                               bound_grid=6).items():
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, value)
    args.densities = [d for d in args.densities.split(",") if d]
    if args.plots_dir is None:
        args.plots_dir = os.path.splitext(args.out)[0]
    return args


# --- the prior ----------------------------------------------------------------------------------

def prior_config(density: str, args):
    """The engine config of ``density``'s prior (the CPU row, the paper row or a tiny one)."""
    from jaxflows.train.config_loader import apply_overrides

    sys.path.insert(0, os.path.join(HERE, "configs"))
    import flow_matching_toy

    if args.smoke:
        config = flow_matching_toy.get_config("smoke")
        config.data.name = f"toy2d/{density}"
        config.train.num_steps = 60
        config.train.eval_every_epochs = 0.1
        config.model.nll_examples = 0  # the ODE NLL is tested with the task
    else:
        row = density if args.rows == "cpu" else f"paper_{density}"
        config = flow_matching_toy.get_config(row)
    config.train.progress_bar = False
    if args.data_dir:
        config.data.data_dir = args.data_dir
    if args.set:
        config = apply_overrides(config, [f"--config.{s}" for s in args.set])
    return config


def train_prior(density: str, args) -> dict:
    """Trains (or resumes, or reuses) the prior; returns its eval.json, curves and config."""
    from jaxflows.train import train

    config = prior_config(density, args)
    workdir = os.path.join(args.runs_dir, density)
    eval_path = os.path.join(workdir, "eval.json")
    t0 = time.time()
    if not os.path.exists(eval_path):
        log.info("%s: training the prior into %s", density, workdir)
        os.makedirs(workdir, exist_ok=True)
        train(config, workdir)
    with open(eval_path) as f:
        evaluation = json.load(f)
    train_rows, val_rows = [], []
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if "val_loss" in r:
                val_rows.append([r["step"], r["val_loss"]])
            elif "loss" in r:
                train_rows.append([r["step"], r["loss"]])
    summary = {}
    if os.path.exists(os.path.join(workdir, "train_summary.json")):
        with open(os.path.join(workdir, "train_summary.json")) as f:
            summary = json.load(f)
    return {"config": config, "workdir": workdir, "eval": evaluation,
            "curves": {"train_loss": train_rows, "val_loss": val_rows},
            "train_wall_time_s": summary.get("train_wall_time_s"),
            "time_here_s": time.time() - t0}


# --- analysis -----------------------------------------------------------------------------------

def _grid(n: int, extent: float) -> tuple[np.ndarray, np.ndarray]:
    g = np.linspace(-extent, extent, n)
    xx, yy = np.meshgrid(g, g, indexing="xy")
    return g, np.stack([xx, yy], -1).reshape(-1, 2).astype(np.float32)


def _spearman(a, b) -> float:
    from scipy.stats import spearmanr

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    return float(spearmanr(a[ok], b[ok]).statistic)


def _pearson(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def _draws(key, k: int) -> tuple[jax.Array, jax.Array]:
    """``k`` stratified times ``t_i = (i + u_i) / k`` and ``eps_i ~ N(0, I_2)``."""
    k_t, k_e = jax.random.split(key)
    t = (jnp.arange(k) + jax.random.uniform(k_t, (k,))) / k
    return t, jax.random.normal(k_e, (k, 2))


def _chunked(fn, points: np.ndarray, chunk: int = 4096) -> np.ndarray:
    out = []
    for s in range(0, len(points), chunk):
        part = points[s:s + chunk]
        pad = chunk - len(part) if len(points) > chunk else 0
        if pad:
            part = np.concatenate([part, np.zeros((pad, part.shape[1]), part.dtype)])
        out.append(np.asarray(jax.device_get(fn(part)))[:len(part) - pad])
    return np.concatenate(out)


def nearest_mode(points: np.ndarray, modes: np.ndarray) -> np.ndarray:
    """Index of the nearest of ``modes: [K, 2]`` for each of ``points: [N, 2]`` -> ``[N]``."""
    return np.argmin(np.sum((points[:, None, :] - modes[None, :, :]) ** 2, -1), axis=1)


def mode_coverage(latents: np.ndarray, modes: np.ndarray) -> list[float]:
    """Fraction of ``latents: [N, 2]`` whose nearest mode (``modes: [K, 2]``) is each mode."""
    nearest = nearest_mode(latents, modes)
    return [float(np.mean(nearest == k)) for k in range(len(modes))]


def mode_distance(points: np.ndarray, modes: np.ndarray) -> float:
    """Mean distance of ``points`` to their nearest mode (the spread around the modes)."""
    d = np.sqrt(np.sum((points[:, None, :] - modes[None, :, :]) ** 2, -1))
    return float(np.mean(np.min(d, axis=1)))


def mixture_std(density: str) -> float:
    """The component std of a mixture in normalised coordinates."""
    from jaxflows.data.toy2d import DENSITIES

    return {"gmm5": 0.3, "grid": 0.1}[density] / DENSITIES[density].scale


def mixture_modes(density: str) -> np.ndarray | None:
    """The component means of the mixtures in normalised coordinates (None otherwise)."""
    from jaxflows.data.toy2d import DENSITIES

    d = DENSITIES[density]
    if density == "gmm5":
        a = 2.0 * np.pi * np.arange(5) / 5
        return 3.0 * np.stack([np.cos(a), np.sin(a)], -1) / d.scale
    if density == "grid":
        ticks = np.linspace(-1.5, 1.5, 4)
        return np.stack(np.meshgrid(ticks, ticks, indexing="ij"), -1).reshape(-1, 2) / d.scale
    return None


def _test_nll_true(config, n: int) -> float | None:
    """Mean exact ``-log_density`` of the first ``n`` test points (those the ODE NLL scored)."""
    from jaxflows.data.registry import load_source
    from jaxflows.train.input import materialize

    try:
        src = materialize(load_source(config.data.name, config.data.test_split,
                                      config.data.data_dir or None))
    except Exception as e:  # noqa: BLE001 -- a missing field only drops one reference number
        log.warning("no test log-densities (%s)", e)
        return None
    ld = np.asarray(src.arrays["log_density"], np.float64)
    return float(-ld[:n].mean()) if n > 0 else float(-ld.mean())


def analyse(density: str, prior: dict, args) -> tuple[dict, dict]:
    """(a), (b), (c) for one trained prior; returns ``(row, arrays for the plots)``."""
    import optax

    from jaxflows.align import divergence_term, flow_prior_loss, flow_prior_loss_at
    from jaxflows.data.toy2d import DENSITIES, kde_log_density
    from jaxflows.models.flow_matching import (
        gaussian_mixture_velocity,
        log_likelihood_ode,
        velocity_model,
    )
    from jaxflows.train.pretrained import read_tree

    t_start = time.time()
    dens = DENSITIES[density]
    config = prior["config"]
    tree = read_tree(prior["workdir"])
    params = jax.tree.map(jnp.asarray, tree.get("best_params") or tree["params"])
    model = velocity_model(config.model, 2, config.get("dtype", "float32"))

    def apply(p, x, t):
        return model.apply({"params": p}, x, t)

    def velocity(x, t):
        return apply(params, x, t)

    key = jax.random.key(args.seed)
    t_a, e_a = _draws(jax.random.fold_in(key, 1), args.draws)
    t_s, e_s = _draws(jax.random.fold_in(key, 6), args.sample_draws)
    t_b, e_b = _draws(jax.random.fold_in(key, 2), args.sample_draws)
    t_r, e_r = _draws(jax.random.fold_in(key, 5), args.record_draws)
    lalign = jax.jit(lambda y, t, e: flow_prior_loss_at(velocity, y, t, e))
    rng = np.random.default_rng(args.seed)
    row: dict = {"density": density}
    timings: dict = {}

    # (a) rank correlation with the true NLL (and the paper's KDE) on a grid and on samples
    t0 = time.time()
    log.info("%s: (a) L_align maps, %d draws", density, args.draws)
    axis, grid_pts = _grid(args.grid, args.extent)
    nll_grid = -dens.log_density(grid_pts)
    la_grid = _chunked(lambda p: lalign(p, t_a, e_a), grid_pts)
    samples = dens.sample(rng, args.num_samples)
    nll_samples = -dens.log_density(samples)
    la_samples = _chunked(lambda p: lalign(p, t_s, e_s), samples)
    la_samples_b = _chunked(lambda p: lalign(p, t_b, e_b), samples)
    divergence = jax.jit(lambda y, t, e: divergence_term(velocity, y, t, e))
    c_samples = _chunked(lambda p: divergence(p, t_a, e_a), samples)
    timings["lalign_maps_s"] = time.time() - t0
    t0 = time.time()
    log.info("%s: (a) KDE", density)
    ref = dens.sample(rng, args.kde_samples)
    kde_grid = -kde_log_density(grid_pts, ref, args.kde_bandwidth)
    kde_samples = -kde_log_density(samples, ref, args.kde_bandwidth)
    timings["kde_s"] = time.time() - t0
    modes = mixture_modes(density)
    if modes is not None:  # the exact optimal field of the mixture, with the same draws
        vstar = gaussian_mixture_velocity(modes, mixture_std(density))
        lstar = jax.jit(lambda y, t, e: flow_prior_loss_at(vstar, y, t, e))
        row.update(
            spearman_grid_optimal_field=_spearman(
                _chunked(lambda p: lstar(p, t_a, e_a), grid_pts), nll_grid),
            spearman_samples_optimal_field=_spearman(
                _chunked(lambda p: lstar(p, t_s, e_s), samples), nll_samples))
        nearest = nearest_mode(samples, modes)
        row["lalign_samples_by_mode"] = [float(np.mean(la_samples[nearest == k]))
                                         for k in range(len(modes))]
    row.update(
        spearman_grid=_spearman(la_grid, nll_grid),
        spearman_samples=_spearman(la_samples, nll_samples),
        spearman_grid_kde=_spearman(la_grid, kde_grid),
        spearman_samples_kde=_spearman(la_samples, kde_samples),
        lalign_repeatability=_spearman(la_samples, la_samples_b),
        spearman_samples_with_c=_spearman(la_samples - c_samples, nll_samples),
        pearson_grid=_pearson(la_grid, nll_grid),
        pearson_samples=_pearson(la_samples, nll_samples),
        kde_vs_exact_spearman_samples=_spearman(kde_samples, nll_samples),
        lalign_samples_mean=float(np.mean(la_samples)),
        lalign_grid_min=float(np.min(la_grid)),
        data_nll=float(np.mean(nll_samples)),
    )

    # (b) free latents optimised by L_align alone
    t0 = time.time()
    log.info("%s: (b) %d latents, %d steps", density, args.latents, args.latent_steps)
    opt = optax.adam(args.latent_lr)
    k_lat = jax.random.fold_in(key, 3)

    def loss_fn(y, k):
        return jnp.mean(flow_prior_loss(apply, params, y, k, args.latent_repeats))

    @jax.jit
    def run_chunk(y, state, step0):
        def body(carry, i):
            yy, st = carry
            g = jax.grad(loss_fn)(yy, jax.random.fold_in(k_lat, step0 + i))
            upd, st = opt.update(g, st, yy)
            return (optax.apply_updates(yy, upd), st), None

        (y, state), _ = jax.lax.scan(body, (y, state), jnp.arange(args.record_every))
        return y, state

    y = jax.random.normal(jax.random.fold_in(key, 4), (args.latents, 2), jnp.float32)
    latents0 = np.asarray(y)
    state = opt.init(y)
    curve = []
    step = 0
    while True:
        yn = np.asarray(jax.device_get(y))
        curve.append([step, float(np.mean(-dens.log_density(yn))),
                      float(np.mean(np.asarray(lalign(y, t_r, e_r))))])
        if step >= args.latent_steps:
            break
        y, state = run_chunk(y, state, step)
        step += args.record_every
    latents = np.asarray(jax.device_get(y))
    timings["latents_s"] = time.time() - t0
    row.update(latent_nll_start=curve[0][1], latent_nll_final=curve[-1][1],
               latent_lalign_start=curve[0][2], latent_lalign_final=curve[-1][2],
               latent_curve_columns=["step", "mean_nll", "mean_lalign"], latent_curve=curve)
    if modes is not None:
        cov = mode_coverage(latents, modes)
        row.update(coverage=cov, coverage_min=min(cov), coverage_max=max(cov),
                   coverage_target=1.0 / len(modes),
                   coverage_data=mode_coverage(samples, modes),
                   coverage_init=mode_coverage(latents0, modes),
                   latents_switched_mode=float(np.mean(
                       nearest_mode(latents0, modes) != nearest_mode(latents, modes))),
                   latent_mode_dist_mean=mode_distance(latents, modes),
                   data_mode_dist_mean=mode_distance(samples, modes))
    else:
        row.update(coverage=None, coverage_min=None, coverage_max=None)

    # (c) the bound log p_1(y) >= C(y) - L_align(y) on a coarser grid
    t0 = time.time()
    log.info("%s: (c) the bound on %d points", density, args.bound_grid**2)
    baxis, bpts = _grid(args.bound_grid, args.extent)
    mc = config.model
    ode = jax.jit(lambda p: log_likelihood_ode(velocity, p, trace="exact", solver="tsit5",
                                               rtol=float(mc.rtol), atol=float(mc.atol),
                                               max_steps=int(mc.max_steps)))
    outs = [jax.device_get(ode(bpts[s:s + 1000])) for s in range(0, len(bpts), 1000)]
    logp = np.concatenate([o["log_prob"] for o in outs]).astype(np.float64)
    ode_steps = np.concatenate([o["num_steps"] for o in outs])
    la_b = np.asarray(lalign(bpts, t_a, e_a), np.float64)
    c_b = np.asarray(divergence(bpts, t_a, e_a), np.float64)
    nll_b = -dens.log_density(bpts)
    bound = c_b - la_b
    gap = logp - bound
    ok = np.isfinite(gap)
    timings["bound_s"] = time.time() - t0
    row.update(
        bound_spearman=_spearman(logp, -la_b),
        bound_pearson=_pearson(logp, -la_b),
        bound_spearman_with_c=_spearman(logp, bound),
        bound_holds_frac=float(np.mean(gap[ok] >= 0)),
        bound_gap_mean=float(np.mean(gap[ok])), bound_gap_median=float(np.median(gap[ok])),
        bound_gap_std=float(np.std(gap[ok])), bound_gap_min=float(np.min(gap[ok])),
        bound_gap_max=float(np.max(gap[ok])), bound_logp_std=float(np.std(logp[ok])),
        bound_c_mean=float(np.mean(c_b)), bound_c_std=float(np.std(c_b)),
        bound_ode_failed=int(np.sum(~np.isfinite(logp))),
        bound_ode_steps_mean=float(np.mean(ode_steps)),
        prior_logp_spearman_true=_spearman(-logp, nll_b),
        lalign_vs_true_spearman_bound_grid=_spearman(la_b, nll_b),
    )

    ev = prior["eval"]
    n_nll = int(ev.get("nll_ode_examples", 0))
    row.update(prior_nll_ode=ev.get("nll_ode"), prior_nll_ode_sem=ev.get("nll_ode_sem"),
               prior_nll_ode_examples=n_nll,
               test_nll_true=_test_nll_true(config, n_nll) if n_nll else None,
               prior_val_fm_loss=ev.get("loss"),
               train_steps=int(config.train.num_steps),
               train_wall_time_s=prior["train_wall_time_s"],
               prior=dict(width=int(mc.width), num_blocks=int(mc.num_blocks),
                          learning_rate=float(config.optim.learning_rate),
                          schedule=str(config.optim.schedule),
                          batch_size=int(config.train.batch_size)),
               prior_curves=prior["curves"],
               analysis_time_s=time.time() - t_start, timings=timings)
    arrays = {"axis": axis, "nll_grid": nll_grid.reshape(args.grid, args.grid),
              "lalign_grid": la_grid.reshape(args.grid, args.grid),
              "baxis": baxis, "prior_nll_bound_grid": (-logp).reshape(args.bound_grid,
                                                                      args.bound_grid),
              "latents": latents}
    return row, arrays


def _clim(values: np.ndarray, hi_pct: float = 90.0) -> tuple[float, float]:
    v = values[np.isfinite(values)]
    return float(np.min(v)), float(np.percentile(v, hi_pct))


def save_heatmaps(path: str, density: str, arrays: dict, row: dict, extent: float) -> str:
    """PNG: true NLL | L_align | the prior's -log p (ODE) | optimised latents over the NLL."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(18, 4.6), dpi=90)
    FigureCanvasAgg(fig)
    ext = (-extent, extent, -extent, extent)
    panels = [
        (arrays["nll_grid"], "true NLL (exact)"),
        (arrays["lalign_grid"], f"L_align (Spearman vs NLL: grid {row['spearman_grid']:.3f}, "
                                f"samples {row['spearman_samples']:.3f})"),
        (arrays["prior_nll_bound_grid"], "prior -log p (ODE)"),
        (arrays["nll_grid"], f"{len(arrays['latents'])} latents after L_align descent"),
    ]
    for i, (img, title) in enumerate(panels):
        ax = fig.add_subplot(1, 4, i + 1)
        lo, hi = _clim(img)
        im = ax.imshow(img, origin="lower", extent=ext, cmap="viridis", vmin=lo, vmax=hi,
                       interpolation="nearest")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        if i == 3:
            lat = arrays["latents"]
            ax.scatter(lat[:, 0], lat[:, 1], s=2, c="red", alpha=0.6, linewidths=0)
            ax.set_xlim(-extent, extent)
            ax.set_ylim(-extent, extent)
        ax.set_title(title, fontsize=8)
    fig.suptitle(density)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".heat-", suffix=".png",
                               dir=os.path.dirname(os.path.abspath(path)))
    with os.fdopen(fd, "wb") as f:
        fig.savefig(f, format="png")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


_ANALYSIS_KEYS = ("grid", "extent", "draws", "num_samples", "kde_samples", "kde_bandwidth",
                  "latents", "latent_steps", "latent_lr", "latent_repeats", "record_every",
                  "record_draws", "bound_grid", "seed", "sample_draws")


#: bumped whenever the analysis changes (a cached analysis of another version is recomputed)
ANALYSIS_VERSION = 2


def _cached(workdir: str, args) -> tuple[dict, dict] | None:
    path = os.path.join(workdir, "align_analysis.json")
    if args.recompute or not os.path.exists(path):
        return None
    with open(path) as f:
        saved = json.load(f)
    if saved.get("args") != {k: getattr(args, k) for k in _ANALYSIS_KEYS}:
        return None
    if saved.get("version") != ANALYSIS_VERSION:  # written by an older version of this script
        return None
    arrays = dict(np.load(os.path.join(workdir, "align_analysis.npz")))
    return saved["row"], arrays


def _cache(workdir: str, args, row: dict, arrays: dict) -> None:
    from jaxflows.provenance import write_json_atomic

    tmp = os.path.join(workdir, "align_analysis.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, os.path.join(workdir, "align_analysis.npz"))
    write_json_atomic(os.path.join(workdir, "align_analysis.json"),
                      {"args": {k: getattr(args, k) for k in _ANALYSIS_KEYS},
                       "version": ANALYSIS_VERSION, "row": row})


def _rel(path: str) -> str:
    path = os.path.abspath(path)
    return os.path.relpath(path, REPO) if path.startswith(REPO + os.sep) else path


def main(argv=None) -> dict:
    """Runs the experiment; returns (and writes) the results dict."""
    from jaxflows.data.toy2d import NAMES
    from jaxflows.provenance import git_commit, machine_info, machine_summary, write_json_atomic

    args = parse_args(argv)
    unknown = [d for d in args.densities if d not in NAMES]
    if unknown:
        raise SystemExit(f"unknown densities {unknown}; valid: {', '.join(NAMES)}")
    load0 = os.getloadavg()[0]
    t0 = time.time()
    command = "python experiments/align_toy.py " + " ".join(
        sys.argv[1:] if argv is None else list(argv))
    results = {
        "title": "Flow-prior alignment on the 2-D toys (arXiv 2506.05240, Sec. 4.1 / App. B)",
        "protocol": (f"priors: experiments/configs/flow_matching_toy.py "
                     f"{'smoke' if args.smoke else args.rows} rows; L_align with {args.draws} "
                     f"(grid) / {args.sample_draws} (samples) (t, eps) draws shared by all "
                     f"points (t stratified); grid "
                     f"{args.grid}x{args.grid} on [-{args.extent}, {args.extent}]^2, "
                     f"{args.num_samples} samples; KDE: {args.kde_samples} samples, bandwidth "
                     f"{args.kde_bandwidth}; {args.latents} latents, Adam {args.latent_lr}, "
                     f"{args.latent_steps} steps, {args.latent_repeats} draw(s) per latent and "
                     f"step; bound on a {args.bound_grid}x{args.bound_grid} grid"),
        "command": command,
        "git_commit": git_commit(),
        "machine": machine_summary(),
        "columns": COLUMNS,
        "rows": [],
    }
    for density in args.densities:
        prior = train_prior(density, args)
        cached = _cached(prior["workdir"], args)
        if cached is None:
            row, arrays = analyse(density, prior, args)
            _cache(prior["workdir"], args, row, arrays)
        else:
            row, arrays = cached
            log.info("%s: analysis reused from %s", density, prior["workdir"])
        row["prior_workdir"] = _rel(prior["workdir"])
        plot = save_heatmaps(os.path.join(args.plots_dir, f"{density}.png"), density, arrays,
                             row, args.extent)
        row["heatmap"] = _rel(plot)
        results["rows"].append(row)
        results["wall_time_s"] = time.time() - t0
        results["machine_info"] = machine_info(load0)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        write_json_atomic(args.out, results, indent=1)
        log.info("%s: spearman grid %.4f samples %.4f (%.0f s so far)", density,
                     row["spearman_grid"], row["spearman_samples"], time.time() - t0)
    return results


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    log.setLevel(logging.INFO)
    main()
