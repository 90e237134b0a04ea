"""Throughput of ``forward_and_log_det`` for every bijector in ``jaxflows.bijectors.EXAMPLES``.

For each registered bijector (random parameters from its example factory) and each event size
``D`` (default 40 and 784), times the jitted ``forward_and_log_det`` on a batch of 1024 events:
one warm-up call (compile + run, reported separately), then ``--reps`` timed calls; the table
gives examples/s at the median. Where distrax has the same operation it is timed beside ours:
``distrax.TriangularLinear`` (next to ``linear_iaf``), ``distrax.MaskedCoupling`` with a
``ScalarAffine`` inner bijector and the same MLP conditioner (next to ``affine_coupling``), and
``distrax.Block(distrax.ScalarAffine)`` (next to ``actnorm``). Prints a Markdown table and
writes ``benchmarks/results/bijectors.json`` with the command, git commit and machine.

    .venv/bin/python benchmarks/bijectors.py [--dims 40,784] [--batch 1024] [--reps 10]
        [--names iaf,maf]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import distrax
import jax
import jax.numpy as jnp
import numpy as np
from machine_load import add_load_args, require_quiet

from jaxflows.bijectors import EXAMPLES
from jaxflows.provenance import git_commit, machine_info

ROOT = pathlib.Path(__file__).resolve().parents[1]

def _distrax_triangular(b):
    return distrax.TriangularLinear(b.lower_matrix(), is_lower=True)


def _distrax_coupling(b):
    d, c_max = b.dim, b.max_log_scale
    mask = jnp.asarray(np.asarray(b.mask))

    def conditioner(x):
        h = jax.nn.silu(x @ b.w1 + b.b1)
        return h @ b.w2 + b.b2

    def inner(params):
        return distrax.ScalarAffine(
            shift=params[..., :d], log_scale=c_max * jnp.tanh(params[..., d:] / c_max))

    return distrax.MaskedCoupling(mask=mask, conditioner=conditioner, bijector=inner,
                                  event_ndims=1)


def _distrax_actnorm(b):
    return distrax.Block(distrax.ScalarAffine(shift=b.loc, log_scale=b.log_scale), 1)


# name of our bijector -> (label, builder(our bijector) -> the equivalent distrax bijector)
DISTRAX = {
    "linear_iaf": ("distrax.TriangularLinear", _distrax_triangular),
    "affine_coupling": ("distrax.MaskedCoupling", _distrax_coupling),
    "actnorm": ("distrax.Block(ScalarAffine)", _distrax_actnorm),
}


_FWD = jax.jit(lambda b, x: b.forward_and_log_det(x))


def _time(bij, x, reps: int) -> dict:
    t0 = time.perf_counter()
    jax.block_until_ready(_FWD(bij, x))
    first = time.perf_counter() - t0
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(_FWD(bij, x))
        times.append(time.perf_counter() - t0)
    med = float(np.median(times))
    return {"first_call_s": first, "median_s": med, "times_s": times,
            "examples_per_s": x.shape[0] / med}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dims", default="40,784")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--names", default=",".join(EXAMPLES))
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/bijectors.json"))
    add_load_args(p)
    args = p.parse_args(argv)
    dims = [int(d) for d in args.dims.split(",")]
    names = [n for n in args.names.split(",") if n]
    unknown = set(names) - set(EXAMPLES)
    if unknown:
        p.error(f"unknown bijectors {sorted(unknown)}; registered: {', '.join(EXAMPLES)}")

    load0 = require_quiet("bijectors", args)
    rows = []
    for name in names:
        impls = [("jaxflows", lambda b: b)]
        if name in DISTRAX:
            impls.append(DISTRAX[name])
        for label, build in impls:
            row = {"bijector": name, "impl": label, "dims": {}}
            for d in dims:
                ours = EXAMPLES[name](jax.random.key(0), d)
                bij = build(ours)
                x = jax.random.normal(jax.random.key(1), (args.batch, d))
                row["dims"][str(d)] = _time(bij, x, args.reps)
                if bij is not ours:   # same map: record the largest difference to ours
                    got, want = _FWD(bij, x), _FWD(ours, x)
                    row["dims"][str(d)]["max_abs_diff_vs_jaxflows"] = max(
                        float(jnp.max(jnp.abs(g - w))) for g, w in zip(got, want))
                print(f"  {name:22s} {label:28s} D={d:4d} "
                      f"{row['dims'][str(d)]['examples_per_s']:12,.0f} ex/s", file=sys.stderr)
            rows.append(row)

    header = "| bijector | implementation | " + " | ".join(
        f"D={d}: ex/s (first call s)" for d in dims) + " |"
    lines = [header, "|---|---|" + "---|" * len(dims)]
    for r in rows:
        cells = [f"{r['dims'][str(d)]['examples_per_s']:,.0f} "
                 f"({r['dims'][str(d)]['first_call_s']:.2f})" for d in dims]
        lines.append(f"| {r['bijector']} | {r['impl']} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)

    result = {
        "command": " ".join([".venv/bin/python", *sys.argv]) if argv is None else argv,
        "git_commit": git_commit(str(ROOT)),
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "machine": machine_info(load0, distrax=distrax.__version__),
        "batch": args.batch,
        "reps": args.reps,
        "dims": dims,
        "what": "jitted forward_and_log_det on [batch, D] float32; examples/s at the median "
                "of `reps` calls after one warm-up call (first_call_s = compile + run)",
        "results": rows,
        "table_markdown": table,
    }
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
