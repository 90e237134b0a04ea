"""Where our TarFlow's time goes on this machine, and what each speed change buys.

For the two configs of ``benchmarks/tarflow_vs_official.py`` (``mnist``: 4-128-4-4 on 28x28x1,
10 classes, batch 256; ``small16``: 2-256-4-2 on 16x16x3, batch 32) it times, per variant:

Each variant is measured ``--repeats`` times (the variants alternate, round by round; the
table gives medians, the JSON every round). Per measurement:

* ``grad``: the jitted gradient of the flow loss ``0.5 mean(z^2) - mean(logdet)`` (the bulk of a
  train step; the optimiser update is not included), median of ``--reps`` calls;
* ``sample g=0`` / ``sample g=2``: the jitted KV-cache sampler on ``--sample_batch`` images
  (guidance not annealed), images/s, median of ``--reps`` calls.

Variants (each switches one change back off; ``current`` is the library as it is):

* ``current``;
* ``rolled``: ``unroll_layers=False`` (the layer loop as a rolled ``nn.scan``: loop-carried
  stacking of activations in training, the stacked cache and stacked weights in sampling);
* ``jax_gelu``: ``jax.nn.gelu(approximate=False)`` instead of :func:`jaxflows.nn.activations.
  gelu_erf` (reverse mode recomputes ``erf`` and an ``exp`` in the backward pass);
* ``no_hoist``: sampling with the stacked weights sliced inside the per-token loop (no
  :func:`jaxflows.nn.transformer.unstack_layer_params`);
* ``einsum_dense``: the per-token weight matmuls as ``jnp.tensordot`` over ``[B, L, ...]``
  (the einsum form) instead of :func:`jaxflows.nn.transformer.token_matmul`'s one flattened
  matmul (XLA:CPU then copies every activation transposed for the weight gradients).

With ``--profile`` it also traces the current ``grad`` (``jax.profiler``, XLA's per-thunk
TraceMe) and sums the thunk times by kind: matmuls (XNNPACK/YNNPACK dot fusions, XLA dots),
transposes and copies, materialised broadcasts, library reductions, transcendental loops and other
loop fusions. Thunks may overlap on the two cores, so the sum can exceed the wall time.

It refuses to run when the 1-minute load average is above ``--max_load`` (1.0; ``--force`` for a
smoke test), records the load at the start and the end, prints Markdown tables and writes
``benchmarks/results/tarflow_profile.json`` (``--out``) with the command, git commit and machine.

    python benchmarks/tarflow_profile.py [--profile]
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import pathlib
import re
import statistics
import sys
import tempfile
import time

from machine_load import add_load_args, load_refusal

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks/results/tarflow_profile.json"
#: name -> (image (H, W, C), patch, width, blocks, layers per block, classes, batch, attn temp of
#: the guided pass) -- the configs of benchmarks/tarflow_vs_official.py
CONFIGS = {
    "mnist": ((28, 28, 1), 4, 128, 4, 4, 10, 256, 1.0),
    "small16": ((16, 16, 3), 2, 256, 4, 2, 0, 32, 0.5),
}
VARIANTS = ("current", "rolled", "jax_gelu", "no_hoist", "einsum_dense")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--reps", type=int, default=5, help="timed calls per measurement")
    ap.add_argument("--repeats", type=int, default=3,
                    help="rounds over the variants (alternating); the table gives medians")
    ap.add_argument("--sample_batch", type=int, default=16)
    ap.add_argument("--profile", action="store_true", help="trace the current grad by op kind")
    add_load_args(ap)
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    args = ap.parse_args(argv)
    args.config_names = [c for c in args.configs.split(",") if c]
    args.variant_names = [v for v in args.variants.split(",") if v]
    bad = [c for c in args.config_names if c not in CONFIGS] + [
        v for v in args.variant_names if v not in VARIANTS]
    if bad or not args.config_names or not args.variant_names:
        ap.error(f"unknown or empty --configs/--variants: {bad}; configs {list(CONFIGS)}, "
                 f"variants {list(VARIANTS)}")
    if args.reps < 1 or args.sample_batch < 1 or args.repeats < 1:
        ap.error("--reps, --repeats and --sample_batch must be >= 1")
    return args


def _median_time(fn, reps: int, warmup: int = 1) -> float:
    """Median seconds of ``reps`` calls of ``fn`` after ``warmup`` untimed ones."""
    import jax

    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _setup(name: str, variant: str, sample_batch: int):
    """``(model, params, x, y, z, ys, attn_temp)`` of config ``name`` under ``variant``."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxflows.models.tarflow import TarFlowModel

    image, patch, width, blocks, layers, classes, batch, temp = CONFIGS[name]
    model = TarFlowModel(image, patch, width, blocks, layers, num_classes=classes,
                         unroll_layers=variant != "rolled")
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(-1, 1, (batch, *image)), jnp.float32)
    y = jnp.asarray(rng.integers(0, classes, batch), jnp.int32) if classes else None
    params = nn.unbox(model.init(jax.random.key(0), x[:1], None if y is None else y[:1]))
    params = jax.tree.map(lambda a: a + 0.01 * jnp.asarray(rng.standard_normal(a.shape),
                                                           a.dtype), params["params"])
    z = jnp.asarray(rng.standard_normal((sample_batch, model.num_tokens, model.token_dim)),
                    jnp.float32)
    ys = jnp.arange(sample_batch, dtype=jnp.int32) % classes if classes else None
    return model, params, x, y, z, ys, temp


class _Patched:
    """Switches one change off for the duration of a ``with`` block."""

    def __init__(self, variant: str):
        self.variant = variant
        self.saved = []

    def __enter__(self):
        import jax
        import jax.numpy as jnp

        from jaxflows.models import tarflow_sampling as ts
        from jaxflows.nn import transformer

        if self.variant == "jax_gelu":
            self.saved.append((transformer, "gelu_erf", transformer.gelu_erf))
            transformer.gelu_erf = lambda v: jax.nn.gelu(v, approximate=False)
        if self.variant == "einsum_dense":
            from jaxflows.models import tarflow

            def einsum_dense(x, kernel, n_in=1):
                return jnp.tensordot(x, kernel, axes=n_in)

            for mod in (transformer, tarflow):
                self.saved.append((mod, "token_matmul", mod.token_matmul))
                mod.token_matmul = einsum_dense
        if self.variant == "no_hoist":
            self.saved.append((ts, "hoist_layer_params", ts.hoist_layer_params))
            ts.hoist_layer_params = lambda model, params: params
        return self

    def __exit__(self, *exc):
        for mod, attr, value in reversed(self.saved):
            setattr(mod, attr, value)


def measure(name: str, variant: str, args) -> dict:
    """One row: grad seconds and sampling images/s (``None`` where the variant changes
    nothing, e.g. ``no_hoist`` for training)."""
    import jax
    import jax.numpy as jnp

    from jaxflows.models import tarflow_sampling as ts

    model, params, x, y, z, ys, temp = _setup(name, variant, args.sample_batch)
    row = {"config": name, "variant": variant}
    with _Patched(variant):
        if variant != "no_hoist":
            def loss(p):
                zz, logdet = model.apply({"params": p}, x, y)
                return 0.5 * jnp.mean(jnp.square(zz)) - jnp.mean(logdet)

            grad = jax.jit(jax.grad(loss))
            t = time.perf_counter()
            jax.block_until_ready(grad(params))
            row["grad_first_call_s"] = time.perf_counter() - t
            row["grad_s"] = _median_time(lambda: grad(params), args.reps)
            row["grad_examples_per_s"] = x.shape[0] / row["grad_s"]
        if variant != "jax_gelu":
            for g in (0.0, 2.0):
                opts = ts.SampleOptions(guidance=g, annealed=False, attn_temp=temp)
                fn = jax.jit(lambda p, z, y, opts=opts: ts.sample_tokens(model, p, z, y, opts))
                sec = _median_time(lambda fn=fn: fn(params, z, ys), args.reps)
                row[f"sample_g{g:g}_images_per_s"] = args.sample_batch / sec
    return row


def median_rows(raw: list[dict]) -> list[dict]:
    """One row per ``(config, variant)`` in first-seen order: the median of every number over
    the rounds, and ``rounds`` (how many)."""
    groups: dict = {}
    for r in raw:
        groups.setdefault((r["config"], r["variant"]), []).append(r)
    out = []
    for (config, variant), rs in groups.items():
        row = {"config": config, "variant": variant, "rounds": len(rs)}
        for k in rs[0]:
            if k not in row and isinstance(rs[0][k], (int, float)):
                row[k] = statistics.median(r[k] for r in rs)
        out.append(row)
    return out


def _kind(name: str, body: str) -> str | None:
    if name.startswith(("ThunkExecutor", "$", "SlinkyThreadPool", "end:", "PjitFunction",
                        "while")):
        return None
    if name.startswith(("ynn_fusion", "xnn_fusion")):
        if " dot(" in body:
            return "matmul (library dot fusion)"
        return "library reduction" if " reduce(" in body else "library elementwise"
    if name.startswith("dot"):
        return "matmul (XLA dot)"
    if "transpose" in body or name.startswith(("copy", "transpose")):
        return "transpose / copy"
    if "broadcast" in name:
        return "materialised broadcast"
    if " erf(" in body or " exponential(" in body:
        return "erf / exp loop"
    return "other loop fusion"


def profile_grad(name: str, reps: int = 2) -> dict:
    """ms per call of the current grad of config ``name``, summed by thunk kind."""
    import jax
    import jax.numpy as jnp

    model, params, x, y, *_ = _setup(name, "current", 1)

    def loss(p):
        zz, logdet = model.apply({"params": p}, x, y)
        return 0.5 * jnp.mean(jnp.square(zz)) - jnp.mean(logdet)

    grad = jax.jit(jax.grad(loss))
    jax.block_until_ready(grad(params))
    hlo = grad.lower(params).compile().as_text()
    calls = dict(re.findall(r"^\s*(?:ROOT )?%?([\w.\-]+) = \S+ fusion\(.*?calls=%?([\w.\-]+)",
                            hlo, re.M))
    bodies = dict(re.findall(r"^%?([\w.\-]+) [^\n]*\{\n(.*?)\n\}", hlo, re.M | re.S))
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            for _ in range(reps):
                jax.block_until_ready(grad(params))
        trace = next(pathlib.Path(tmp).rglob("perfetto_trace.json.gz"))
        events = json.load(gzip.open(trace))
    events = events["traceEvents"] if isinstance(events, dict) else events
    kinds = collections.Counter()
    for e in events:
        if e.get("ph") != "X":
            continue
        kind = _kind(e["name"], bodies.get(calls.get(e["name"], ""), ""))
        if kind:
            kinds[kind] += e.get("dur", 0) / 1e3 / reps
    return {"config": name, "ms_per_call_by_kind": dict(kinds.most_common())}


def tables(rows: list[dict], profiles: list[dict]) -> str:
    """Markdown: the variants (with the change each one undoes; medians over the rounds) and
    the profiles."""
    undo = {"current": "-", "rolled": "unrolled layer loop, per-layer cache, hoisted weights",
            "jax_gelu": "one-multiply GELU derivative", "no_hoist": "hoisted weights",
            "einsum_dense": "flattened per-token weight matmuls"}
    out = ["| config | variant (change switched off) | grad s | grad ex/s | sample g=0 img/s "
           "| sample g=2 img/s |", "|---|---|---|---|---|---|"]
    fmt = lambda v, f: "-" if v is None else format(v, f)
    for r in rows:
        out.append(f"| {r['config']} | {r['variant']} ({undo[r['variant']]}) | "
                   f"{fmt(r.get('grad_s'), '.3f')} | {fmt(r.get('grad_examples_per_s'), '.1f')} | "
                   f"{fmt(r.get('sample_g0_images_per_s'), '.1f')} | "
                   f"{fmt(r.get('sample_g2_images_per_s'), '.1f')} |")
    for p in profiles:
        total = sum(p["ms_per_call_by_kind"].values())
        out += ["", f"Profile of the current grad, {p['config']} (ms per call by thunk kind; "
                f"sum {total:.0f} ms):", "", "| kind | ms | share |", "|---|---|---|"]
        out += [f"| {k} | {v:.0f} | {v / total:.0%} |" for k, v in p["ms_per_call_by_kind"].items()]
    return "\n".join(out)


def main(argv=None) -> int:
    args = parse_args(argv)
    load = os.getloadavg()[0]
    refusal = load_refusal("tarflow_profile", load, args.max_load, args.force)
    if refusal:
        print(refusal)
        return 2
    if args.profile:  # per-thunk TraceMe; must be set before jax starts
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_enable_xprof_traceme=true").strip()
    sys.path.insert(0, str(ROOT))
    import jax

    from jaxflows.provenance import (
        git_commit,
        machine_info,
        recorded_command,
        write_json_atomic,
    )

    t0 = time.time()
    raw = []
    for rnd in range(args.repeats):
        for name in args.config_names:
            for variant in args.variant_names:
                raw.append({**measure(name, variant, args), "round": rnd + 1})
                print(json.dumps(raw[-1]), flush=True)
    rows = median_rows(raw)
    profiles = [profile_grad(n) for n in args.config_names] if args.profile else []
    table = tables(rows, profiles)
    print(table)
    out = {
        "command": recorded_command("benchmarks/tarflow_profile.py",
                                    argv if argv is not None else sys.argv[1:], str(ROOT)),
        "git_commit": git_commit(), "machine": machine_info(), "jax": jax.__version__,
        "load_average_1m": {"start": load, "end": os.getloadavg()[0]},
        "wall_time_s": time.time() - t0, "settings": {
            "reps": args.reps, "repeats": args.repeats, "sample_batch": args.sample_batch,
            "configs": {n: CONFIGS[n] for n in args.config_names}},
        "rows": rows, "raw_rows": raw, "profiles": profiles, "table": table,
    }
    write_json_atomic(args.out, out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
