"""Throughput of the VP-flow VAE at the paper's size on MNIST-shaped random data.

Measures, for the plain VAE and ccLinIAF (``experiments/configs/vae_mnist.py`` rows):
  * one jitted training step (batch 100, Adam, forward + backward + update): ms/step,
    examples/s and the implied epoch time on the 50,000-image MNIST training split;
  * the importance-sampled NLL of a batch of images with 5,000 samples each (chunked as in
    ``final_eval``): seconds per batch, images/s and the implied time for the 10,000-image test set.
The first call of each (compile + one run) is reported separately. Prints a Markdown table and
writes ``benchmarks/results/vae.json`` with the command, git commit and machine.

    .venv/bin/python benchmarks/vae.py [--rows vae,ccliniaf_k3] [--steps 50] [--eval_images 100]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from engine_step import compiled_engine_step

from jaxflows.eval.likelihood import importance_sampled_nll
from jaxflows.provenance import git_commit, machine_info
from jaxflows.train.task import DataInfo

ROOT = pathlib.Path(__file__).resolve().parents[1]
MNIST = DataInfo.for_images((28, 28, 1), num_classes=10, num_train=50_000, num_eval=10_000)


def _config(row: str):
    """Loads ``get_config(row)`` from experiments/configs/vae_mnist.py."""
    spec = importlib.util.spec_from_file_location(
        "vae_mnist", ROOT / "experiments/configs/vae_mnist.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(row)


def _block(tree):
    return jax.tree.map(lambda a: a.block_until_ready(), tree)


def bench_row(row: str, steps: int, eval_images: int, num_is: int) -> dict:
    """Times one config row; returns a dict of measurements."""
    config = _config(row)
    config.mesh.data = 1
    bs = int(config.train.batch_size)
    rng = np.random.default_rng(0)
    local = {"image": rng.integers(0, 256, (bs, 28, 28, 1), dtype=np.uint8)}
    run, state, batch, step, compile_train = compiled_engine_step(config, MNIST, local)
    task = run.task
    num_params = int(sum(np.prod(p.shape) for p in jax.tree.leaves(state.params)))
    state, metrics = _block(step(state, batch))
    t0 = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, batch)
    _block(metrics)
    step_s = (time.perf_counter() - t0) / steps
    params = state.params
    steps_per_epoch = MNIST.num_train // bs

    # importance-sampled NLL of a batch of fixed binary images
    x = jnp.asarray(rng.integers(0, 2, (eval_images, 28 * 28)).astype(np.float32))
    chunk = task.is_chunk

    def is_nll(params, x, key):
        return importance_sampled_nll(task.log_weights, params, x, key, num_is, chunk)

    t0 = time.perf_counter()
    _block(is_nll(params, x, jax.random.key(2)))
    compile_eval = time.perf_counter() - t0
    t0 = time.perf_counter()
    nll = _block(is_nll(params, x, jax.random.key(3)))
    eval_s = time.perf_counter() - t0
    assert np.all(np.isfinite(np.asarray(nll)))
    return {
        "row": row,
        "flow": config.model.flow,
        "num_params": num_params,
        "batch_size": bs,
        "train_step_ms": 1e3 * step_s,
        "train_examples_per_s": bs / step_s,
        "epoch_s": steps_per_epoch * step_s,
        "train_compile_s": compile_train,
        "is_samples": num_is,
        "is_chunk": chunk,
        "eval_images": eval_images,
        "eval_batch_s": eval_s,
        "eval_images_per_s": eval_images / eval_s,
        "test_set_eval_s": MNIST.num_eval * eval_s / eval_images,
        "eval_compile_s": compile_eval,
    }


def markdown(results: list[dict]) -> str:
    """Renders the measurements as a Markdown table."""
    head = (
        "| row | params | train step (ms, batch 100) | train ex/s | epoch (s, 50k) "
        f"| IS-NLL, {results[0]['is_samples']} samples: s per batch | images/s "
        "| test set (s, 10k) "
        "| first call train / eval (s, compile + run) |\n|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['row']} | {r['num_params']:,} | {r['train_step_ms']:.2f} "
        f"| {r['train_examples_per_s']:,.0f} | {r['epoch_s']:.1f} "
        f"| {r['eval_batch_s']:.2f} ({r['eval_images']} images) | {r['eval_images_per_s']:.1f} "
        f"| {r['test_set_eval_s']:.0f} | {r['train_compile_s']:.1f} / {r['eval_compile_s']:.1f} |"
        for r in results
    ]
    return head + "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Parses flags, runs every row, prints the table and writes the JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="vae,ccliniaf_k3")
    p.add_argument("--steps", type=int, default=50, help="timed training steps")
    p.add_argument("--eval_images", type=int, default=100)
    p.add_argument("--num_is_samples", type=int, default=5000)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/vae.json"))
    args = p.parse_args(argv)
    load_at_start = os.getloadavg()[0]
    results = [
        bench_row(row, args.steps, args.eval_images, args.num_is_samples)
        for row in args.rows.split(",")
    ]
    table = markdown(results)
    print(table)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "command": " ".join([".venv/bin/python", "benchmarks/vae.py", *sys.argv[1:]]),
        "git_commit": git_commit(str(ROOT)),
        "machine": machine_info(load_at_start),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "results": results,
        "table_markdown": table,
    }
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
