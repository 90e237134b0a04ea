"""Arithmetic of the STARFlow-on-MNIST sampling-speed comparison: XLA's FLOP counts of each
layout's sampling path beside the images/s ``starflow_mnist.py`` measured.

``experiments/results/starflow_mnist.json`` times the **flow path** (KV-cache sampling with
guidance, then the one-step score denoiser; latents out) of STARFlow's deep-shallow ``6(3)-128``
against layouts of about the same size: the uniform ``2-2-2-2-2`` at width 128 and two latent
TarFlows (``4 x 6-80`` and ``8 x 8-48``, patch 1), at batches 16 and 1,000. This script counts
the floating-point work of those paths, with XLA's cost analysis of the compiled functions:

* **sampling**: a KV-cache pass over a block does the matmuls of that block's teacher-forced
  forward pass (one token at a time, attention over the cached positions), so the sampler's
  count is the sum of the blocks' forward passes, each on ``2B`` rows where the sampler guides
  it (STARFlow: the deep block only; TarFlow: every block) and on ``B`` rows elsewhere;
* **denoise**: the gradient of the summed negative log-likelihood with respect to the ``B``
  latents (the score step).

With the measured images/s it reports each path's achieved GFLOP/s, and the ratio of the two
layouts' FLOPs beside the ratio of their measured speeds: when a path is bound by arithmetic,
not by per-step latency, a layout is faster by about the ratio of the work it saves. Nothing is
timed here (the speeds are read from the committed results), so it runs on a busy machine.

    python experiments/starflow_sampling_cost.py [--results experiments/results/starflow_mnist.json]

Writes ``experiments/results/starflow_sampling_cost.json`` (``--out``) with the command, git
commit and machine, and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

CONFIG = "experiments/configs/starflow_mnist.py"
#: the latent grid of ``starflow_mnist.py:cpu`` (the KL autoencoder's 7 x 7 x 4)
LATENT_SHAPE = (7, 7, 4)
#: STARFlow rows: model name in the results -> config row
STARFLOW_ROWS = {"starflow": "cpu", "starflow_uniform": "uniform_cpu"}
#: latent TarFlows: name -> (blocks, layers per block, width, head dim), as starflow_mnist.py
LATENT_TARFLOWS = {"tarflow_latent_4x6": (4, 6, 80, 20), "tarflow_latent_8x8": (8, 8, 48, 12)}
NUM_CLASSES = 10


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    results = os.path.join(ROOT, "experiments/results")
    p.add_argument("--results", default=os.path.join(results, "starflow_mnist.json"))
    p.add_argument("--batches", default="16,1000")
    p.add_argument("--out", default=os.path.join(results, "starflow_sampling_cost.json"))
    args = p.parse_args(argv)
    args.batch_values = [int(b) for b in args.batches.split(",") if b]
    if not args.batch_values or min(args.batch_values) < 1:
        p.error(f"--batches {args.batches!r}: positive integers expected")
    return args


def flops(fn, *args) -> float:
    """XLA's FLOP count of the compiled ``fn(*args)``."""
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


def count(params) -> int:
    return int(sum(math.prod(a.shape) for a in jax.tree.leaves(params)))


def starflow_costs(row: str, batch: int) -> dict:
    """FLOPs of STARFlow config row ``row``'s guided sampling and denoising at ``batch``."""
    from jaxflows.models import starflow_config as sc
    from jaxflows.models import starflow_sampling as ss
    from jaxflows.models import tarflow_sampling as ts
    from jaxflows.models.starflow import example_cond
    from jaxflows.train.config_loader import load_config_file

    config = load_config_file(os.path.join(ROOT, f"{CONFIG}:{row}"))
    model = sc.model_from_config(config, LATENT_SHAPE)
    params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, *LATENT_SHAPE)),
                                 example_cond(model, 1)))["params"]
    n, d = model.num_tokens, model.token_dim
    labels = jnp.arange(batch) % NUM_CLASSES
    opts = ss.SampleOptions(guidance=1.0, rule="gaussian")
    last = model.num_blocks - 1
    sampling = 0.0
    for t in range(model.num_blocks):
        rows = 2 * batch if t == last else batch
        prefix = None
        if t == last:
            prefix, _ = ss._deep_prefix(model, params, batch, labels, None, opts)
        block = ts.apply_block(model, params, t, "affine_params")
        x = jnp.zeros((rows, n, d), jnp.float32)
        sampling += flops(lambda x, p, block=block: block(x, None, 1.0, p), x, prefix)

    def nll(v):
        z, logdets, _ = model.apply({"params": params}, v, labels)
        return 0.5 * jnp.sum(jnp.square(z)) - sum(jnp.sum(ld) for ld in logdets)

    denoise = flops(jax.grad(nll), jnp.zeros((batch, *LATENT_SHAPE), jnp.float32))
    return {"params": count(params), "sampling_flops": sampling, "denoise_flops": denoise,
            "guided_blocks": 1, "num_blocks": model.num_blocks}


def tarflow_costs(shape: tuple[int, int, int, int], batch: int) -> dict:
    """FLOPs of a class-conditional latent TarFlow (patch 1) guided in every block."""
    from jaxflows.models.tarflow import TarFlowModel
    from jaxflows.models.tarflow_sampling import model_log_prob

    blocks, layers, width, head_dim = shape
    model = TarFlowModel(LATENT_SHAPE, 1, width, blocks, layers, head_dim=head_dim,
                         num_classes=NUM_CLASSES)
    x1 = jnp.zeros((1, *LATENT_SHAPE), jnp.float32)
    params = nn.unbox(model.init(jax.random.key(0), x1, jnp.zeros((1,), jnp.int32)))["params"]
    labels = jnp.arange(batch) % NUM_CLASSES
    both = jnp.concatenate([labels, -jnp.ones_like(labels)])
    # every block guided: the sampler's passes do the forward's matmuls on 2B rows
    sampling = flops(lambda v: model.apply({"params": params}, v, both),
                     jnp.zeros((2 * batch, *LATENT_SHAPE), jnp.float32))
    denoise = flops(jax.grad(lambda v: jnp.sum(model_log_prob(model, params, v, labels))),
                    jnp.zeros((batch, *LATENT_SHAPE), jnp.float32))
    return {"params": count(params), "sampling_flops": sampling, "denoise_flops": denoise,
            "guided_blocks": blocks, "num_blocks": blocks}


def measured_speed(results: dict, model: str, batch: int) -> float | None:
    """The flow-path images/s of ``model`` at ``batch`` in starflow_mnist.json."""
    for r in results.get("speed", []):
        if (r["model"] == model and r["path"] == "flow" and r["batch"] == batch
                and r["sampler"] == "sequential"):
            return float(r["images_per_s"])
    return None


def table(rows: list[dict]) -> str:
    out = ["| layout | params | batch | guided blocks | sampling GFLOP | denoise GFLOP | "
           "total GFLOP per image | measured images/s | achieved GFLOP/s | "
           "FLOPs vs starflow | speed of starflow vs it |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda v, f: "-" if v is None else format(v, f)
    for r in rows:
        out.append(
            f"| {r['model']} | {r['params']:,} | {r['batch']} | {r['guided_blocks']} of "
            f"{r['num_blocks']} | {r['sampling_flops'] / 1e9:.2f} | "
            f"{r['denoise_flops'] / 1e9:.2f} | {r['flops_per_image'] / 1e9:.3f} | "
            f"{fmt(r['images_per_s'], '.1f')} | {fmt(r['achieved_gflop_per_s'], '.0f')} | "
            f"{fmt(r.get('flops_over_starflow'), '.2f')} | "
            f"{fmt(r.get('starflow_speedup'), '.2f')} |")
    return "\n".join(out)


def main(argv=None) -> dict:
    import json

    from jaxflows.provenance import git_commit, machine_info, recorded_command, write_json_atomic

    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    t0 = time.time()
    with open(args.results) as f:
        results = json.load(f)
    rows = []
    for batch in args.batch_values:
        per = {}
        for name, row in STARFLOW_ROWS.items():
            per[name] = starflow_costs(row, batch)
        for name, shape in LATENT_TARFLOWS.items():
            per[name] = tarflow_costs(shape, batch)
        for name, c in per.items():
            total = c["sampling_flops"] + c["denoise_flops"]
            speed = measured_speed(results, name, batch)
            r = {"model": name, "batch": batch, **c, "total_flops": total,
                 "flops_per_image": total / batch, "images_per_s": speed,
                 "achieved_gflop_per_s": None if speed is None else total / batch * speed / 1e9}
            rows.append(r)
        star = rows[-len(per)]
        for r in rows[-len(per):]:
            r["flops_over_starflow"] = r["total_flops"] / star["total_flops"]
            if r["images_per_s"] and star["images_per_s"]:
                r["starflow_speedup"] = star["images_per_s"] / r["images_per_s"]
    md = table(rows)
    print(md)
    out = {
        "title": "FLOPs of the STARFlow-on-MNIST sampling paths beside their measured speed",
        "command": recorded_command("experiments/starflow_sampling_cost.py", argv, ROOT),
        "git_commit": git_commit(), "machine": machine_info(), "jax": jax.__version__,
        "speeds_from": {"file": os.path.relpath(args.results, ROOT),
                        "git_commit": results.get("git_commit")},
        "latent_shape": LATENT_SHAPE, "guidance": 1.0, "rows": rows, "table": md,
        "wall_time_s": time.time() - t0,
    }
    write_json_atomic(args.out, out)
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
