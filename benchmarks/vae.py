"""Throughput of the VP-flow VAE at the paper's size, against this machine's matmul peak.

For each row of ``experiments/configs/vae_mnist.py`` (``--rows``; 784-300-300 gated, latent 40):

  * the engine's jitted training step (batch 100, Adam, forward + backward + update) on
    MNIST-shaped random data: ms/step, examples/s, the implied epoch time on the 50,000 training
    images, its FLOPs (counted on the jaxpr, :mod:`jaxflows.train.flops`) and the **fraction of
    the matmul peak** measured in the same run (a jitted 2048^2 float32 matmul, best of 5, once
    before and once after the rows; the larger is the peak);
  * the importance-sampled ``-log p(x)`` with 5,000 samples per image as ``final_eval`` computes
    it: images in calls of ``--eval_batch`` (the config's eval batch when empty), samples drawn
    ``is_chunk`` at a time inside the call (each value of ``--is_chunks``; the config's when
    empty), compiled with or without YNNPACK library fusions (``--is_fusions``; without is what
    ``final_eval`` does on a CPU, :mod:`jaxflows.train.xla_options`),
    over ``--eval_images`` random binary images (the cost does not depend on the pixels; 10,000
    = the whole MNIST test set, timed directly; fewer = extrapolated from the calls after the
    first): seconds, images/s, achieved FLOP/s and fraction of peak, for every combination.

It refuses to run when the 1-minute load average is above ``--max_load`` (1.0) and records the
load at the start and the end. Prints a Markdown table and writes ``benchmarks/results/vae.json``.

    .venv/bin/python benchmarks/vae.py [--rows vae,ccliniaf_k3] [--eval_images 10000]
        [--eval_batch 500,100] [--is_chunks 100,20] [--is_fusions off,on]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from engine_step import compiled_engine_step, matmul_peak, model_flops
from machine_load import add_load_args, require_quiet

from jaxflows.eval.likelihood import importance_sampled_nll
from jaxflows.provenance import git_commit, machine_info, recorded_command
from jaxflows.train.flops import step_flops
from jaxflows.train.task import DataInfo
from jaxflows.train.xla_options import cpu_library_fusions_off

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


def bench_train(config, steps: int) -> tuple[dict, object, object]:
    """The engine's train step of ``config``: timings and FLOPs; also returns (task, params)."""
    bs = int(config.train.batch_size)
    rng = np.random.default_rng(0)
    local = {"image": rng.integers(0, 256, (bs, 28, 28, 1), dtype=np.uint8)}
    run, state, batch, step, compile_s = compiled_engine_step(config, MNIST, local)
    flops = model_flops(run, state, batch)
    state, metrics = _block(step(state, batch))
    t0 = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, batch)
    _block(metrics)
    step_s = (time.perf_counter() - t0) / steps
    num_params = int(sum(np.prod(p.shape) for p in jax.tree.leaves(state.params)))
    out = {"num_params": num_params, "batch_size": bs, "train_steps_timed": steps,
           "train_step_ms": 1e3 * step_s, "train_examples_per_s": bs / step_s,
           "epoch_s": MNIST.num_train // bs * step_s, "train_compile_s": compile_s,
           "train_flops_per_step": flops, "train_flops_per_s": flops / step_s}
    return out, run.task, state.params


def bench_is(task, params, *, num_is: int, chunk: int, fusions: str, eval_batch: int,
             eval_images: int) -> dict:
    """Importance-sampled NLL of ``eval_images`` random binary images, ``eval_batch`` per call,
    ``chunk`` samples per scan step; the whole test set's time, measured or extrapolated."""
    rng = np.random.default_rng(1)
    calls = -(-eval_images // eval_batch)

    def is_nll_fn(p, x, key):
        return importance_sampled_nll(task.log_weights, p, x, key, num_is, chunk)

    # as final_eval compiles it: without CPU library fusions unless fusions == "on"
    opts = cpu_library_fusions_off() if fusions == "off" else {}
    is_nll = jax.jit(is_nll_fn, compiler_options=opts)
    x0 = jnp.zeros((eval_batch, 28 * 28), jnp.float32)
    flops_call = step_flops(is_nll_fn, params, x0, jax.random.key(0))["flops"]
    times = []
    for i in range(calls):
        x = jnp.asarray(rng.integers(0, 2, (eval_batch, 28 * 28)).astype(np.float32))
        t0 = time.perf_counter()
        nll = _block(is_nll(params, x, jax.random.key(i)))
        times.append(time.perf_counter() - t0)
    if not np.all(np.isfinite(np.asarray(nll))):
        raise FloatingPointError(f"non-finite IS-NLL with is_chunk={chunk}, fusions {fusions}")
    steady = times[1:] or times
    call_s = float(np.mean(steady))
    full_calls = -(-MNIST.num_eval // eval_batch)
    measured = calls * eval_batch >= MNIST.num_eval
    return {
        "is_samples": num_is, "is_chunk": chunk, "cpu_library_fusions": fusions,
        "eval_batch": eval_batch,
        "eval_images": calls * eval_batch, "is_calls": calls,
        "is_first_call_s": times[0], "is_call_s": call_s,
        "is_images_per_s": eval_batch / call_s,
        "is_flops_per_call": flops_call, "is_flops_per_s": flops_call / call_s,
        "test_set_eval_s": (float(sum(times)) if measured
                            else times[0] + (full_calls - 1) * call_s),
        "test_set_measured": measured,
    }


def markdown(record: dict) -> str:
    """The measurements as two Markdown tables (train step; IS-NLL)."""
    peak = record["matmul_peak_flops_per_s"]
    out = [f"Matmul peak (jitted 2048^2 float32, best of 5): {peak / 1e9:.0f} GFLOP/s.", "",
           "| row | params | train step (ms, batch 100) | ex/s | epoch (s, 50k) | GFLOP/step "
           "| GFLOP/s | of peak | compile (s) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in record["results"]:
        out.append(f"| {r['row']} | {r['num_params']:,} | {r['train_step_ms']:.2f} "
                   f"| {r['train_examples_per_s']:,.0f} | {r['epoch_s']:.1f} "
                   f"| {r['train_flops_per_step'] / 1e9:.3f} "
                   f"| {r['train_flops_per_s'] / 1e9:.0f} | {r['train_fraction_of_peak']:.0%} "
                   f"| {r['train_compile_s']:.1f} |")
    out += ["", "| row | IS samples | is_chunk | CPU library fusions | images per call "
            "| images timed | s per call | images/s | GFLOP/s | of peak | 10,000 test images (s) |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in record["results"]:
        for e in r["is_nll"]:
            how = "measured" if e["test_set_measured"] else "extrapolated"
            out.append(f"| {r['row']} | {e['is_samples']} | {e['is_chunk']} "
                       f"| {e['cpu_library_fusions']} | {e['eval_batch']} "
                       f"| {e['eval_images']} | {e['is_call_s']:.2f} "
                       f"| {e['is_images_per_s']:.1f} | {e['is_flops_per_s'] / 1e9:.0f} "
                       f"| {e['is_fraction_of_peak']:.0%} | {e['test_set_eval_s']:.0f} ({how}) |")
    return "\n".join(out)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="vae,ccliniaf_k3")
    p.add_argument("--steps", type=int, default=50, help="timed training steps")
    p.add_argument("--eval_images", type=int, default=1000,
                   help="images for the IS-NLL timing (10000 = the whole test set)")
    p.add_argument("--eval_batch", default="",
                   help="images per IS call, comma-separated ('' = the config's eval batch)")
    p.add_argument("--is_chunks", default="", help="samples per scan step ('' = the config's)")
    p.add_argument("--is_fusions", default="off",
                   help="YNNPACK library fusions in the IS computation on a CPU: off (the "
                        "task's default), on, or both ('off,on')")
    p.add_argument("--num_is_samples", type=int, default=5000)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/vae.json"))
    add_load_args(p)
    args = p.parse_args(argv)
    args.row_names = [r for r in args.rows.split(",") if r]
    try:
        args.batch_values = [int(c) for c in args.eval_batch.split(",") if c]
        args.chunk_values = [int(c) for c in args.is_chunks.split(",") if c]
    except ValueError as e:
        p.error(f"--eval_batch and --is_chunks take comma-separated integers: {e}")
    args.fusion_values = [f for f in args.is_fusions.split(",") if f]
    if not args.fusion_values or any(f not in ("off", "on") for f in args.fusion_values):
        p.error(f"--is_fusions takes off, on or off,on; got {args.is_fusions!r}")
    if args.steps < 1 or args.eval_images < 1 or args.num_is_samples < 1 or any(
            c < 1 for c in args.chunk_values + args.batch_values):
        p.error("--steps, --eval_images, --num_is_samples, --eval_batch and --is_chunks must "
                "be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    """Parses flags, runs every row, prints the tables and writes the JSON."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    load_at_start = require_quiet("vae", args)
    peaks = [matmul_peak()]
    results = []
    for row in args.row_names:
        config = _config(row)
        config.mesh.data = 1
        r, task, params = bench_train(config, args.steps)
        r["is_nll"] = [bench_is(task, params, num_is=args.num_is_samples, chunk=c, fusions=f,
                                eval_batch=min(b, args.eval_images),
                                eval_images=args.eval_images)
                       for b in (args.batch_values or [int(config.train.eval_batch_size)])
                       for c in (args.chunk_values or [task.is_chunk])
                       for f in args.fusion_values]
        results.append({"row": row, "flow": config.model.flow, **r})
    peaks.append(matmul_peak())
    peak = max(peaks)
    for r in results:
        r["train_fraction_of_peak"] = r["train_flops_per_s"] / peak
        for e in r["is_nll"]:
            e["is_fraction_of_peak"] = e["is_flops_per_s"] / peak
    record = {
        "command": recorded_command("benchmarks/vae.py", argv, str(ROOT), {}),
        "git_commit": git_commit(str(ROOT)),
        "machine": machine_info(load_at_start),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "matmul_peak_flops_per_s": peak,
        "matmul_peaks_start_end": peaks,
        "targets": {"train_fraction_of_peak": 0.4, "test_set_eval_s": 300.0},
        "results": results,
    }
    record["table_markdown"] = markdown(record)
    print(record["table_markdown"])
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwrote {out}")
    return record


if __name__ == "__main__":
    main()
