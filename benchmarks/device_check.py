"""Accelerator check: TarFlow ImageNet-64 train step (MFU), KV-cache sampling, VAE step.

A prepared, self-contained script for one accelerator (written for an H200: about 5 minutes,
under 8). Everything runs on one device, through the engine's own compiled train step
(:func:`engine_step.compiled_engine_step`):

* **TarFlow 2-768-8-8 on 64x64x3** (``tarflow_imagenet64.py:uncond``: 1024 tokens, about 460M
  params) in bf16 with attention through ``jax.nn.dot_product_attention`` (``cudnn`` flash
  attention on GPUs, ``xla`` elsewhere) and the config's remat policy, at the paper's per-GPU
  batch (256 over 8 GPUs = 32): compile time, step time (median of ``--steps`` after
  ``--warmup``), examples/s and **MFU** = model FLOPs per step / step time / ``--peak_tflops``
  (default 989, the H200's dense bf16 peak). Model FLOPs come from XLA's cost analysis of the
  same train step lowered with einsum attention and no remat (a fused attention kernel is a
  custom call XLA counts as 0 FLOPs, and rematerialisation is not model work); XLA counts the
  body of a ``scan`` once, so when it does (checked on a tiny scan) the scanned layers that are
  not counted are added from the cost analysis of one layer's forward and backward pass. An
  analytic count (``6 * params * tokens`` style, attention included) is reported beside it,
  and the raw cost-analysis FLOPs of the compiled step too.
* **Sampling** ``--sample_batch`` images with the sequential KV-cache sampler, guidance 0 and
  guidance ``--guidance`` (the unconditional model's attention-temperature guidance, which
  doubles the batch): compile time and images/s after one warm-up call.
* **VAE** at the paper's size (``vae_mnist.py:vae``: gated 784-300-300, latent 40, batch 100):
  compile time, step time (median), examples/s, MFU.

Writes ``benchmarks/results/device_<device-kind>.json`` (or ``--out_dir``) naming the device,
the jax version and the 1-minute load average at the start and the end, and prints a summary.
``--tiny`` shrinks every size (16x16 images, width 64, one block of 2 layers, small batches, the
VAE smoke row) so the whole script runs on a CPU in well under a minute (the test suite runs it).

    python benchmarks/device_check.py [--tiny] [--steps 5] [--batch 32] [--sample_batch 64]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from engine_step import compiled_engine_step, flops_of

from jaxflows.models import tarflow_sampling as ts
from jaxflows.nn.transformer import Transformer, TransformerLayer
from jaxflows.provenance import git_commit, machine_info
from jaxflows.train.config_loader import load_config_file
from jaxflows.train.task import DataInfo, batch_of

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "experiments" / "configs"
IMAGENET_TRAIN = 1_281_167
MNIST = DataInfo.for_images((28, 28, 1), num_classes=10, num_train=50_000, num_eval=10_000)
TINY_TARFLOW = dict(channels=64, head_dim=32, num_blocks=1, layers_per_block=2)


def device_slug(kind: str) -> str:
    """``'NVIDIA H200'`` -> ``'nvidia_h200'`` (a file-name-safe device kind)."""
    return re.sub(r"[^a-z0-9]+", "_", kind.lower()).strip("_") or "unknown"


def _ready(tree):
    return jax.block_until_ready(tree)


def _timed_steps(compiled, state, batch, warmup: int, steps: int):
    """Runs ``warmup`` then ``steps`` train steps; returns ``(state, metrics, [seconds])``."""
    metrics = None
    for _ in range(warmup):
        state, metrics = _ready(compiled(state, batch))
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        state, metrics = _ready(compiled(state, batch))
        times.append(time.perf_counter() - t)
    return state, metrics, times


def default_attention() -> str:
    """The fused ``jax.nn.dot_product_attention`` implementation of this backend."""
    return "cudnn" if jax.default_backend() == "gpu" else "xla"


def tarflow_config(tiny: bool, batch: int, attention: str):
    """``tarflow_imagenet64.py:uncond`` on one device at ``batch``, bf16, ``attention``."""
    c = load_config_file(f"{CONFIGS / 'tarflow_imagenet64.py'}:uncond")
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 1, 1
    c.train.batch_size = c.train.eval_batch_size = batch
    c.dtype = "bfloat16"
    c.model.attention = attention
    if tiny:
        c.data.image_shape = (16, 16, 3)
        for k, v in TINY_TARFLOW.items():
            c.model[k] = v
    return c


def scan_body_counted_once() -> bool:
    """Whether XLA's cost analysis counts a scanned layer stack's body once (not per layer),
    from a tiny 1- vs 2-layer Transformer on this backend."""
    x = jax.ShapeDtypeStruct((1, 4, 16), jnp.float32)
    flops = []
    for n in (1, 2):
        m = Transformer(width=16, num_layers=n, head_dim=8)
        p = jax.eval_shape(m.init, jax.random.key(0), x)
        cost = jax.jit(lambda p, x, m=m: m.apply(p, x)[0].sum()).lower(p, x).cost_analysis()
        flops.append(float(cost["flops"]))
    return flops[1] < 1.5 * flops[0]


def layer_fwd_bwd_flops(config, batch: int, num_tokens: int) -> float:
    """XLA cost-analysis FLOPs of one Transformer layer's forward + backward (einsum attention)
    on ``[batch, num_tokens, C]``."""
    m = config.model
    layer = TransformerLayer(int(m.channels), int(m.head_dim), int(m.mlp_ratio),
                             jnp.dtype(config.dtype), attention_impl="einsum")
    x = jax.ShapeDtypeStruct((batch, num_tokens, int(m.channels)), jnp.float32)
    p = jax.eval_shape(layer.init, jax.random.key(0), x)

    def f(p, x):
        return jnp.sum(layer.apply(p, x)[0])

    cost = jax.jit(jax.value_and_grad(f, argnums=(0, 1))).lower(p, x).cost_analysis()
    return float(cost["flops"])


def model_flops_per_step(config, info, batch: int) -> dict:
    """Model FLOPs of one train step from XLA's cost analysis (einsum attention, no remat,
    scanned layers counted in full); plus the analytic count."""
    from jaxflows.train.loop import build

    ref = config.copy_and_resolve_references()
    ref.model.attention, ref.model.remat = "einsum", "none"
    run = build(ref, info)
    spec = batch_of(run.example_spec, batch, sharding=run.batch_sharding)
    with jax.set_mesh(run.mesh):
        cost = run.train_step.lower(run.abstract_state(), spec).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    step = float(cost["flops"])
    model = run.task.model
    t, k = model.num_blocks, model.layers_per_block
    once = scan_body_counted_once()
    missing = t * (k - 1) * layer_fwd_bwd_flops(ref, batch, model.num_tokens) if once else 0.0
    # analytic: matmuls x 2 FLOPs, forward x 3 for forward + backward; attention over all N keys
    c, n, d = model.width, model.num_tokens, model.token_dim
    per_token = t * k * (24 * c * c + 4 * n * c) + t * (2 * d * c + 4 * d * c)
    return {"xla_flops_per_step": step + missing, "xla_scan_body_counted_once": once,
            "xla_flops_added_for_scanned_layers": missing,
            "analytic_flops_per_step": 3.0 * per_token * batch * n}


def bench_tarflow(args) -> tuple[dict, list[dict]]:
    """TarFlow train step and sampling; returns ``(train row, sampling rows)``."""
    config = tarflow_config(args.tiny, args.batch, args.attention)
    shape = tuple(config.data.image_shape)
    info = DataInfo.for_images(shape, 0, num_train=IMAGENET_TRAIN)
    local = {"image": np.random.default_rng(0).integers(0, 256, (args.batch, *shape),
                                                        dtype=np.uint8)}
    run, state, batch, compiled, compile_s = compiled_engine_step(config, info, local)
    state, metrics, times = _timed_steps(compiled, state, batch, args.warmup, args.steps)
    step_s = statistics.median(times)
    flops = model_flops_per_step(config, info, args.batch)
    model = run.task.model
    m = config.model
    train = {
        "model": f"{m.patch_size}-{m.channels}-{m.num_blocks}-{m.layers_per_block}",
        "image": "x".join(map(str, shape)), "num_tokens": model.num_tokens,
        "num_params": int(sum(x.size for x in jax.tree.leaves(state.params))),
        "batch": args.batch, "dtype": config.dtype, "attention": m.attention,
        "remat": m.remat, "compile_s": compile_s, "warmup_steps": args.warmup,
        "step_times_s": times, "step_s_median": step_s,
        "examples_per_s": args.batch / step_s, "xla_flops_compiled_step": flops_of(compiled),
        **flops,
        "mfu": flops["xla_flops_per_step"] / step_s / args.peak,
        "mfu_analytic": flops["analytic_flops_per_step"] / step_s / args.peak,
        "final_loss": float(metrics["loss"]),
    }
    params = state.params
    z = jax.random.normal(jax.random.key(1), (args.sample_batch, model.num_tokens,
                                              model.token_dim))
    rows = []
    for w in (0.0, args.guidance):
        opts = ts.SampleOptions(guidance=w, attn_temp=args.guidance_attn_temp if w else 1.0)
        fn = jax.jit(lambda p, z, opts=opts: ts.sample_tokens(model, p, z, None, opts))
        t = time.perf_counter()
        sampler = fn.lower(params, z).compile()
        sample_compile_s = time.perf_counter() - t
        _ready(sampler(params, z))  # warm-up
        t = time.perf_counter()
        x = _ready(sampler(params, z))
        sec = time.perf_counter() - t
        rows.append({"guidance": w, "attn_temp": opts.attn_temp, "batch": args.sample_batch,
                     "compile_s": sample_compile_s, "seconds": sec,
                     "images_per_s": args.sample_batch / sec,
                     "finite": bool(np.isfinite(np.asarray(x)).all())})
    return train, rows


def bench_vae(args) -> dict:
    """The VAE's engine train step (paper row, or the smoke row with ``--tiny``)."""
    row = "smoke" if args.tiny else "vae"
    config = load_config_file(f"{CONFIGS / 'vae_mnist.py'}:{row}")
    config.mesh.data = 1
    bs = int(config.train.batch_size)
    local = {"image": np.random.default_rng(0).integers(0, 256, (bs, 28, 28, 1),
                                                        dtype=np.uint8)}
    run, state, batch, compiled, compile_s = compiled_engine_step(config, MNIST, local)
    _, _, times = _timed_steps(compiled, state, batch, args.warmup, args.vae_steps)
    step_s = statistics.median(times)
    flops = flops_of(compiled)
    m = config.model
    return {"row": row, "hidden": list(m.hidden), "latent_dim": int(m.latent_dim),
            "batch": bs, "num_params": int(sum(x.size for x in jax.tree.leaves(state.params))),
            "compile_s": compile_s, "step_s_median": step_s, "examples_per_s": bs / step_s,
            "xla_flops_per_step": flops, "mfu": flops / step_s / args.peak}


def summary(result: dict) -> str:
    """A few readable lines of the result."""
    t, v = result["tarflow_train"], result["vae_train"]
    lines = [
        f"device {result['device']} ({result['machine']['backend']}), jax "
        f"{result['machine']['jax']}, total {result['total_s']:.0f} s",
        f"TarFlow {t['model']} {t['image']} batch {t['batch']} {t['dtype']} "
        f"attention={t['attention']} remat={t['remat']}: compile {t['compile_s']:.1f} s, "
        f"step {1e3 * t['step_s_median']:.1f} ms, {t['examples_per_s']:.1f} ex/s, "
        f"MFU {100 * t['mfu']:.1f}% (analytic {100 * t['mfu_analytic']:.1f}%)",
    ]
    for s in result["tarflow_sampling"]:
        lines.append(f"  sampling guidance {s['guidance']}: {s['images_per_s']:.2f} images/s "
                     f"(batch {s['batch']}, compile {s['compile_s']:.1f} s)")
    lines.append(f"VAE {v['row']} batch {v['batch']}: compile {v['compile_s']:.1f} s, step "
                 f"{1e3 * v['step_s_median']:.2f} ms, {v['examples_per_s']:.0f} ex/s, "
                 f"MFU {100 * v['mfu']:.2f}%")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    """Runs the check, writes the JSON, prints a summary; returns the result."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="shrink every size (CPU, < 60 s)")
    p.add_argument("--batch", type=int, default=None, help="TarFlow train batch (default 32)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5, help="timed TarFlow steps")
    p.add_argument("--sample_batch", type=int, default=None, help="images (default 64)")
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--guidance_attn_temp", type=float, default=0.5)
    p.add_argument("--vae_steps", type=int, default=None, help="timed VAE steps (default 50)")
    p.add_argument("--attention", default=None,
                   help="jax.nn.dot_product_attention implementation (default: cudnn on GPU, "
                        "xla elsewhere) or einsum / chunked")
    p.add_argument("--peak_tflops", type=float, default=989.0,
                   help="dense bf16 peak for MFU (H200: 989)")
    p.add_argument("--out_dir", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    args.batch = args.batch or (4 if args.tiny else 32)
    args.sample_batch = args.sample_batch or (2 if args.tiny else 64)
    args.vae_steps = args.vae_steps or (5 if args.tiny else 50)
    if args.tiny:
        args.warmup, args.steps = min(args.warmup, 1), min(args.steps, 2)
    args.attention = args.attention or default_attention()
    args.peak = args.peak_tflops * 1e12

    load_at_start = os.getloadavg()[0]
    t0 = time.perf_counter()
    train, sampling = bench_tarflow(args)
    vae = bench_vae(args)
    kind = jax.devices()[0].device_kind
    result = {
        "device": kind,
        "jax": jax.__version__,
        "tiny": args.tiny,
        "command": " ".join(["python", "benchmarks/device_check.py",
                             *(sys.argv[1:] if argv is None else argv)]),
        "git_commit": git_commit(str(ROOT)),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": machine_info(load_at_start),
        "load_average_1m_at_start": load_at_start,
        "peak_flops_per_s": args.peak,
        "tarflow_train": train,
        "tarflow_sampling": sampling,
        "vae_train": vae,
        "total_s": time.perf_counter() - t0,
    }
    result["load_average_1m_at_end"] = os.getloadavg()[0]
    out = pathlib.Path(args.out_dir) / f"device_{device_slug(kind)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(summary(result))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
