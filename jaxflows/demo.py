"""``make demo``: prepare the embedded digits data, train three smoke configs (the VAE, the
ccLinIAF VAE and TarFlow: :data:`DEMO_RUNS`), print a results table, and write sample (and
reconstruction) PNGs.

    python -m jaxflows.demo --out demo_out

Runs resume from ``OUT/<run>`` if interrupted. Everything runs on the embedded scikit-learn
digits (8x8), so it needs no download.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np

from jaxflows.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: (run name, config spec relative to the repo, metrics shown in the table)
DEMO_RUNS = (
    ("vae", "experiments/configs/vae_mnist.py:smoke", ("neg_elbo", "nll_is")),
    ("ccliniaf", "experiments/configs/vae_mnist.py:smoke_ccliniaf", ("neg_elbo", "nll_is")),
    ("tarflow", "experiments/configs/tarflow_mnist.py:smoke", ("bpd",)),
)


def _run_one(name: str, spec: str, out: str) -> dict:
    from jaxflows.eval.grid import save_grid
    from jaxflows.train import load_config, train
    from jaxflows.train.sample import sample_from_workdir

    config = load_config(os.path.join(REPO, spec), ["--config.train.progress_bar=false"])
    workdir = os.path.join(out, name)
    t0 = time.time()
    result = train(config, workdir)
    result["train_and_eval_s"] = time.time() - t0
    _, images = sample_from_workdir(workdir, num=64, seed=0)
    save_grid(_upscale(images), os.path.join(out, f"{name}_samples.png"))
    if name in ("vae", "ccliniaf"):
        _reconstructions(workdir, os.path.join(out, f"{name}_reconstructions.png"))
    return result


def _upscale(images: np.ndarray, factor: int = 4) -> np.ndarray:
    """Nearest-neighbour upscaling of ``[N, H, W, C]`` so 8x8 digits are visible in a PNG."""
    return np.repeat(np.repeat(np.asarray(images), factor, axis=1), factor, axis=2)


def _reconstructions(workdir: str, path: str) -> None:
    """Top rows: test digits (binarized); bottom rows: their reconstructions."""
    from jaxflows.eval.grid import save_grid
    from jaxflows.train.loop import build, load_saved_config, open_split, restore_for_eval

    config = load_saved_config(workdir)
    run = build(config)
    _, state = restore_for_eval(run, workdir)
    source = open_split(run, config.data.test_split)
    images = source.get_batch(np.arange(32))["image"]
    with jax.set_mesh(run.mesh):
        recon = run.task.reconstruct(state.eval_params(), images, jax.random.key(0))
    grid = np.concatenate([images.astype(np.float32) / 255.0, np.asarray(recon)], axis=0)
    save_grid(_upscale(grid), path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="demo_out")
    p.add_argument("--only", default="", help="comma-separated run names")
    args = p.parse_args(argv)
    from jaxflows.data.registry import prepare

    print("preparing digits ...", flush=True)
    sizes = prepare("digits")
    print("digits:", ", ".join(f"{k} {v}" for k, v in sizes.items()), flush=True)
    rows = []
    for name, spec, keys in DEMO_RUNS:
        if args.only and name not in args.only.split(","):
            continue
        if not os.path.exists(os.path.join(REPO, spec.split(":")[0])):
            continue
        print(f"training {name} ({spec}) ...", flush=True)
        try:
            result = _run_one(name, spec, args.out)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        rows.append((name, spec, keys, result))
    print("\n| run | config | test metrics | train+eval s |")
    print("|---|---|---|---|")
    for name, spec, keys, r in rows:
        shown = ", ".join(f"{k} {r[k]:.3f}" for k in keys if k in r)
        print(f"| {name} | `{spec.split('/')[-1]}` | {shown} | {r['train_and_eval_s']:.0f} |")
    pngs = sorted(f for f in os.listdir(args.out) if f.endswith(".png"))
    print(f"\nsample grids in {args.out}/: {', '.join(pngs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
