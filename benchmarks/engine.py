"""Engine throughput: steps/s of a smoke model on 1 and 8 (fake CPU) devices, and the engine's
overhead against a bare jitted loop on the same model and batch.

    python benchmarks/engine.py [--config experiments/configs/vae_mnist.py:smoke] [--steps 400]
        [--devices 1,8] [--dispatch 1,10]

Each device count runs in its own subprocess (the fake-device flag must precede jax's import).
The engine's rate is the mean of its own ``steps_per_s`` log lines after the first (compile)
interval; the bare loop calls the same jitted step on one fixed device batch. Prints a Markdown
table and writes ``benchmarks/results/engine.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from machine_load import add_load_args, require_quiet

from jaxflows.provenance import git_commit, machine_info

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def _worker(config_spec: str, steps: int, devices: int, dispatch: int) -> dict:
    import jax
    import numpy as np

    from jaxflows.data import pipeline
    from jaxflows.train import build, load_config, train
    from jaxflows.train.loop import open_split
    from jaxflows.train.metrics import read_metrics

    log_every = 50
    config = load_config(config_spec, [
        f"--config.mesh.data={devices}", f"--config.train.num_steps={steps}",
        f"--config.train.log_every_steps={log_every}", "--config.train.eval_every_epochs=0",
        "--config.train.progress_bar=false", f"--config.train.steps_per_dispatch={dispatch}"])
    # bare loop: the same jitted step on one fixed batch, no input pipeline, no logging
    run = build(config)
    with jax.set_mesh(run.mesh):
        src = open_split(run, config.data.train_split)
        it = pipeline.train_iterator(src, global_batch_size=config.train.batch_size, seed=0)
        batch = run.global_batch(next(it))
        state = run.init_state()
        state, m = run.train_step(state, batch)
        jax.block_until_ready(m)
        n = steps - log_every
        t0 = time.perf_counter()
        prev = None
        for _ in range(n):  # one step in flight, as the engine does
            state, m = run.train_step(state, batch)
            if prev is not None:
                jax.block_until_ready(prev)
            prev = m
        jax.block_until_ready(m)
        bare = n / (time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as wd:
        t0 = time.perf_counter()
        train(config, wd, final_eval=False)
        wall = time.perf_counter() - t0
        rates = [r["steps_per_s"] for r in read_metrics(wd) if "steps_per_s" in r][1:]
    engine = float(np.mean(rates))
    return {"devices": devices, "steps_per_dispatch": dispatch,
            "batch_size": config.train.batch_size, "steps": steps,
            "engine_steps_per_s": engine, "bare_steps_per_s": bare,
            "overhead_pct": 100.0 * (bare / engine - 1.0), "engine_wall_s_incl_compile": wall,
            "examples_per_s": engine * config.train.batch_size}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="experiments/configs/vae_mnist.py:smoke")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--devices", default="1,8")
    p.add_argument("--dispatch", default="1,10", help="train.steps_per_dispatch values")
    p.add_argument("--out", default=os.path.join(HERE, "results", "engine.json"))
    p.add_argument("--_worker", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--_k", type=int, default=1, help=argparse.SUPPRESS)
    add_load_args(p)
    args = p.parse_args(argv)
    if args._worker:
        print("RESULT " + json.dumps(_worker(args.config, args.steps, args._worker, args._k)))
        return
    load_start = require_quiet("engine", args)
    rows = []
    for d in [int(x) for x in args.devices.split(",")]:
        for k in [int(x) for x in args.dispatch.split(",")]:
            env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={d}",
                       JAX_PLATFORMS="cpu")
            out = subprocess.run([sys.executable, __file__, "--config", args.config, "--steps",
                                  str(args.steps), "--_worker", str(d), "--_k", str(k)],
                                 env=env, cwd=REPO, capture_output=True, text=True, check=False)
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            if not line:
                sys.exit(f"worker with {d} devices failed:\n{out.stderr[-3000:]}")
            rows.append(json.loads(line[0][7:]))
    commit = git_commit(REPO)
    result = {"command": "python " + " ".join(sys.argv), "git_commit": commit,
              "machine": machine_info(load_start),
              "config": args.config, "rows": rows}
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"config {args.config}, {args.steps} steps, commit {commit}\n")
    print("| devices | steps/dispatch | engine steps/s | bare jit steps/s | engine overhead "
          "| examples/s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['devices']} | {r['steps_per_dispatch']} | {r['engine_steps_per_s']:.1f} | "
              f"{r['bare_steps_per_s']:.1f} | {r['overhead_pct']:+.1f}% | "
              f"{r['examples_per_s']:.0f} |")


if __name__ == "__main__":
    main()
