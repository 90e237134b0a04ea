"""TarFlow throughput: training examples/s and MFU, sequential vs Jacobi sampling, compile time.

For two small models (``P-C-T-K`` on 16x16x3 random images, Gaussian noise 0.05, unconditional):
  * one jitted training step (AdamW, forward + backward + update, ``config.dtype`` matmuls):
    ms/step, examples/s, and **MFU** = XLA cost-analysis FLOPs of the compiled step / step time /
    measured matmul peak of this machine (a jitted 2048x2048 float32 matmul, best of several);
  * sampling ``--sample_batch`` images: sequential KV-cache inverse vs block-parallel Jacobi
    (chunks of ``--jacobi_chunk`` tokens, tol 1e-4 relative, at most 16 iterations), images/s,
    and the max difference between the two;
  * compile times of the train step and of each sampler.
Sampling uses the params after the timed training steps (a barely trained model: Jacobi
converges in fewer iterations than on a trained one). Prints a Markdown table and writes
``benchmarks/results/tarflow.json`` with the command, git commit and machine.

    .venv/bin/python benchmarks/tarflow.py [--steps 10] [--batch 32] [--sample_batch 16]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax
import numpy as np
from engine_step import compiled_engine_step, flops_of, matmul_peak, model_flops
from machine_load import add_load_args, require_quiet

from jaxflows.models import tarflow_sampling as ts
from jaxflows.models.tarflow import count_params
from jaxflows.models.tarflow_config import default_model_config
from jaxflows.provenance import git_commit, machine_info
from jaxflows.train.config import base_config
from jaxflows.train.task import DataInfo

ROOT = pathlib.Path(__file__).resolve().parents[1]
IMAGE = (16, 16, 3)
SIZES = {  # name -> (patch, width, blocks, layers)
    "2-128-2-2": (2, 128, 2, 2),
    "2-256-4-2": (2, 256, 4, 2),
}


def _block(tree):
    return jax.tree.map(lambda a: a.block_until_ready(), tree)


def _config(size: str, dtype: str):
    """ml-tarflow's recipe (AdamW 0.9/0.95, weight decay 1e-4, lr 1e-4) on one device."""
    p, width, blocks, layers = SIZES[size]
    c = base_config()
    c.dtype = dtype
    c.mesh.data = 1
    c.sharding_rules = tuple(c.sharding_rules) + (("layers", None),)
    c.optim.name, c.optim.b1, c.optim.b2 = "adamw", 0.9, 0.95
    c.optim.weight_decay, c.optim.learning_rate = 1e-4, 1e-4
    c.model = default_model_config(patch_size=p, channels=width, num_blocks=blocks,
                                   layers_per_block=layers, head_dim=64, noise_type="gaussian",
                                   noise_std=0.05)
    return c


def bench(size: str, args) -> dict:
    """Times the engine's compiled train step and sampling for one model size."""
    config = _config(size, args.dtype)
    config.train.batch_size = config.train.eval_batch_size = args.batch
    b = args.batch
    local = {"image": np.random.default_rng(0).integers(0, 256, (b, *IMAGE), dtype=np.uint8)}
    run, state, batch, compiled, compile_s = compiled_engine_step(
        config, DataInfo.for_images(IMAGE, 0, 10_000), local)
    task = run.task
    flops, xla_flops = model_flops(run, state, batch), flops_of(compiled)
    state, metrics = _block(compiled(state, batch))
    t = time.perf_counter()
    for _ in range(args.steps):
        state, metrics = compiled(state, batch)
    _block(metrics)
    step_s = (time.perf_counter() - t) / args.steps
    params = state.params

    row = {
        "model": size, "image": "x".join(map(str, IMAGE)), "dtype": args.dtype,
        "num_params": count_params(task.model), "batch": b,
        "train_compile_s": compile_s, "train_step_ms": 1e3 * step_s,
        "train_examples_per_s": b / step_s, "step_flops": flops, "xla_step_flops": xla_flops,
        "achieved_flops_per_s": flops / step_s, "mfu": flops / step_s / args.peak,
        "final_loss": float(metrics["loss"]),
    }
    m, n_tok, d = task.model, task.model.num_tokens, task.model.token_dim
    z = jax.random.normal(jax.random.key(1), (args.sample_batch, n_tok, d))
    outs = {}
    for name, opts in [("sequential", ts.SampleOptions()),
                       ("jacobi", ts.SampleOptions(jacobi_chunk=args.jacobi_chunk,
                                                   jacobi_max_iters=16, jacobi_tol=1e-4))]:
        fn = jax.jit(lambda p, z, opts=opts: ts.sample_tokens(m, p, z, None, opts))
        t = time.perf_counter()
        c = fn.lower(params, z).compile()
        row[f"{name}_compile_s"] = time.perf_counter() - t
        _block(c(params, z))
        t = time.perf_counter()
        for _ in range(args.sample_reps):
            x = c(params, z)
        _block(x)
        sec = (time.perf_counter() - t) / args.sample_reps
        row[f"{name}_images_per_s"] = args.sample_batch / sec
        outs[name] = np.asarray(x)
    row["jacobi_chunk"] = args.jacobi_chunk
    row["jacobi_max_abs_diff"] = float(np.abs(outs["jacobi"] - outs["sequential"]).max())
    return row


def markdown(rows: list[dict], peak: float) -> str:
    """The result rows as a Markdown table."""
    lines = [
        f"Matmul peak (jitted 2048^2 float32): {peak / 1e9:.0f} GFLOP/s. Images 16x16x3, "
        "patch 2 (64 tokens).",
        "",
        "| model P-C-T-K | params | batch | train ex/s | step ms | MFU | train compile s "
        "| seq. sampling img/s | Jacobi img/s (chunk) | Jacobi max diff | sampler compile s "
        "(seq/Jacobi) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['num_params'] / 1e6:.2f}M | {r['batch']} "
            f"| {r['train_examples_per_s']:.0f} | {r['train_step_ms']:.0f} | {100 * r['mfu']:.1f}% "
            f"| {r['train_compile_s']:.1f} | {r['sequential_images_per_s']:.1f} "
            f"| {r['jacobi_images_per_s']:.1f} ({r['jacobi_chunk']}) "
            f"| {r['jacobi_max_abs_diff']:.1e} "
            f"| {r['sequential_compile_s']:.1f} / {r['jacobi_compile_s']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    """Runs the benchmark; prints the table and writes the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--sample_batch", type=int, default=16)
    ap.add_argument("--sample_reps", type=int, default=2)
    ap.add_argument("--jacobi_chunk", type=int, default=16)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--sizes", default=",".join(SIZES))
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/tarflow.json"))
    add_load_args(ap)
    args = ap.parse_args(argv)
    load = require_quiet("tarflow", args)
    args.peak = matmul_peak()
    rows = [bench(s, args) for s in args.sizes.split(",")]
    table = markdown(rows, args.peak)
    print(table)
    result = {
        "command": " ".join([".venv/bin/python", "benchmarks/tarflow.py", *sys.argv[1:]]),
        "git_commit": git_commit(str(ROOT)),
        "machine": machine_info(load),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "matmul_peak_flops_per_s": args.peak,
        "results": rows,
        "table": table,
    }
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
