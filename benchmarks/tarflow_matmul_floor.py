"""The matmul floor of our TarFlow train step on this machine, against the 1.3x training target.

For each config of ``benchmarks/tarflow_vs_official.py`` (``mnist``: 4-128-4-4, batch 256;
``small16``: 2-256-4-2, batch 32) it

1. compiles the gradient of our flow loss (the bulk of a train step; the optimiser update is
   not included) and reads every ``dot`` of the optimised HLO: operand shapes, layouts and
   dimension numbers, and how many times it runs per call (fusion call sites);
2. times each distinct dot **in isolation**, as an einsum on float32 operands of the same
   shapes: with jax (jitted ``jnp.einsum``, XLA:CPU's own matmul library) and, side by side in
   the same run, with torch (``torch.einsum``, in a separate Python given by
   ``--torch_python``; optional);
3. sums those times over the step's dots: the **matmul floor**, the time the step's matmuls
   alone take when each runs at its best isolated speed, with no other work in between;
4. with ``--official`` (a local copy of apple/ml-tarflow), times the official train step in the
   same run (``official_tarflow_worker.py``, the side-by-side's worker) and our gradient, and
   compares the floor with the step time that 1.3x the official speed allows.

If the jax floor exceeds that time, no change to the step's glue (transposes, LayerNorm,
attention softmax, the optimiser) can reach 1.3x with the official model's arithmetic on this
machine; only faster matmuls could.

It refuses to run when the 1-minute load average is above ``--max_load`` (1.0; ``--force`` for a
smoke test), records the load at the start and the end, prints a Markdown table and writes
``benchmarks/results/tarflow_matmul_floor.json`` (``--out``) with the command, git commit and
machine.

    python benchmarks/tarflow_matmul_floor.py [--torch_python PY] [--official DIR]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import re
import string
import subprocess
import sys
import tempfile
import time

from machine_load import add_load_args, load_refusal

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks/results/tarflow_matmul_floor.json"
TORCH_WORKER = pathlib.Path(__file__).resolve().parent / "matmul_floor_torch_worker.py"
TARGET_RATIO = 1.3

_SHAPE = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\w+)\[([\d,]*)\]\{([\d,]*)\}")
_DOT = re.compile(r"%([\w.\-]+) = (\w+)\[([\d,]*)\]\{([\d,]*)\} dot\(%([\w.\-]+), %([\w.\-]+)\)")
_DIMS = re.compile(r"(lhs_batch_dims|rhs_batch_dims|lhs_contracting_dims|rhs_contracting_dims)"
                   r"=\{([\d,]*)\}")


def parse_args(argv=None):
    from tarflow_profile import CONFIGS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--reps", type=int, default=15, help="timed calls per dot (median)")
    ap.add_argument("--torch_python", default="",
                    help="python of an environment with torch: time the same einsums there")
    ap.add_argument("--official", default="",
                    help="local copy of apple/ml-tarflow: time the official train step too "
                         "(needs --torch_python)")
    ap.add_argument("--steps", type=int, default=10, help="timed official/our steps")
    add_load_args(ap)
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    args = ap.parse_args(argv)
    args.config_names = [c for c in args.configs.split(",") if c]
    bad = [c for c in args.config_names if c not in CONFIGS]
    if bad or not args.config_names:
        ap.error(f"--configs: unknown {bad or args.config_names}; choose from {', '.join(CONFIGS)}")
    if args.official and not args.torch_python:
        ap.error("--official needs --torch_python")
    if args.reps < 1 or args.steps < 1:
        ap.error("--reps and --steps must be >= 1")
    return args


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")] if text else []


def dot_einsum(lhs: list[int], rhs: list[int], dims: dict[str, list[int]],
               layouts: tuple[list[int], list[int], list[int]]) -> tuple[str, list, list]:
    """The einsum string and the physical operand shapes of one HLO dot.

    ``lhs``/``rhs`` are the logical operand shapes, ``dims`` the dot's dimension numbers and
    ``layouts`` the minor-to-major layouts of lhs, rhs and the output. Operands and output are
    written in their physical (major-to-minor) order, so the einsum reads memory as the dot does.
    """
    letters = iter(string.ascii_letters)
    lsub = [None] * len(lhs)
    rsub = [None] * len(rhs)
    for a, b in zip(dims.get("lhs_batch_dims", []), dims.get("rhs_batch_dims", [])):
        lsub[a] = rsub[b] = next(letters)
    for a, b in zip(dims.get("lhs_contracting_dims", []), dims.get("rhs_contracting_dims", [])):
        lsub[a] = rsub[b] = next(letters)
    for sub in (lsub, rsub):
        for i, s in enumerate(sub):
            if s is None:
                sub[i] = next(letters)
    batch = [lsub[a] for a in dims.get("lhs_batch_dims", [])]
    contract = {lsub[a] for a in dims.get("lhs_contracting_dims", [])}
    out = batch + [s for s in lsub if s not in batch and s not in contract] + [
        s for s in rsub if s not in batch and s not in contract]

    def physical(sub, shape, layout):
        order = list(reversed(layout)) if layout else list(range(len(sub)))
        return [sub[i] for i in order], [shape[i] for i in order] if shape is not None else None

    lp, lshape = physical(lsub, lhs, layouts[0])
    rp, rshape = physical(rsub, rhs, layouts[1])
    op, _ = physical(out, None, layouts[2])
    return f"{''.join(lp)},{''.join(rp)}->{''.join(op)}", lshape, rshape


def hlo_dots(hlo: str) -> list[dict]:
    """Every distinct dot of an optimised HLO module: ``{spec, lhs, rhs, flops, count}``, with
    ``count`` the number of times it runs per call (call sites of its fused computation; once
    in the entry computation). Raises when the module has a loop (counts would be wrong)."""
    if re.search(r"\bwhile\(", hlo):
        raise ValueError("the HLO has a while loop: per-call dot counts are unknown")
    shapes, calls, dots = {}, collections.Counter(), []
    comp, entry = None, None
    for line in hlo.splitlines():
        if line and not line.startswith(" ") and line.rstrip().endswith("{"):
            m = re.match(r"^(ENTRY )?%?([\w.\-]+)", line)
            if m:
                comp = m.group(2)
                entry = comp if m.group(1) else entry
            continue
        m = _SHAPE.match(line)
        if m:
            shapes[m.group(1)] = (_ints(m.group(3)), _ints(m.group(4)))
        for c in re.findall(r"calls=%([\w.\-]+)", line):
            calls[c] += 1
        if " dot(" in line:
            dots.append((comp, line))
    merged: dict = {}
    for comp, line in dots:
        m = _DOT.search(line)
        if m is None:
            raise ValueError(f"unparsed dot: {line.strip()[:160]}")
        out_shape, out_layout = _ints(m.group(3)), _ints(m.group(4))
        (lhs, llay), (rhs, rlay) = shapes[m.group(5)], shapes[m.group(6)]
        dims = {k: _ints(v) for k, v in _DIMS.findall(line)}
        spec, lphys, rphys = dot_einsum(lhs, rhs, dims, (llay, rlay, out_layout))
        contract = 1
        for a in dims.get("lhs_contracting_dims", []):
            contract *= lhs[a]
        out_size = 1
        for d in out_shape:
            out_size *= d
        count = 1 if comp == entry else calls.get(comp, 0)
        key = (spec, tuple(lphys), tuple(rphys))
        if key not in merged:
            merged[key] = {"spec": spec, "lhs": lphys, "rhs": rphys,
                           "flops": 2 * out_size * contract, "count": 0}
        merged[key]["count"] += count
    return list(merged.values())


def _median_time(fn, reps: int) -> float:
    """Median seconds of ``reps`` calls after three untimed ones."""
    from tarflow_profile import _median_time as median_time

    return median_time(fn, reps, warmup=3)


def jax_dot_seconds(dots: list[dict], reps: int) -> list[float]:
    """Median seconds of each dot as a jitted ``jnp.einsum`` on float32 operands."""
    import jax
    import jax.numpy as jnp

    out = []
    for i, d in enumerate(dots):
        ka, kb = jax.random.split(jax.random.key(i))
        a = jax.random.normal(ka, d["lhs"], jnp.float32)
        b = jax.random.normal(kb, d["rhs"], jnp.float32)
        fn = jax.jit(lambda a, b, spec=d["spec"]: jnp.einsum(spec, a, b))
        out.append(_median_time(lambda fn=fn, a=a, b=b: fn(a, b), reps))
    return out


def torch_dot_seconds(torch_python: str, dots: list[dict], reps: int) -> dict:
    """``matmul_floor_torch_worker.py``'s result for the same dots."""
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "dots.json"
        path.write_text(json.dumps([{k: d[k] for k in ("spec", "lhs", "rhs")} for d in dots]))
        p = subprocess.run([torch_python, str(TORCH_WORKER), str(path), "--reps", str(reps)],
                           capture_output=True, text=True, timeout=3600)
    if p.returncode != 0:
        raise RuntimeError(f"torch worker failed (exit {p.returncode}):\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def grad_and_hlo(name: str, steps: int):
    """Our gradient of config ``name``: ``(median seconds, XLA's flop count, optimised HLO)``."""
    import jax
    import jax.numpy as jnp
    from tarflow_profile import _setup

    model, params, x, y, *_ = _setup(name, "current", 1)

    def loss(p):
        zz, logdet = model.apply({"params": p}, x, y)
        return 0.5 * jnp.mean(jnp.square(zz)) - jnp.mean(logdet)

    compiled = jax.jit(jax.grad(loss)).lower(params).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    seconds = _median_time(lambda: compiled(params), steps)
    return seconds, float(cost.get("flops", float("nan"))), compiled.as_text()


def official_step_seconds(args, name: str) -> dict:
    """The official train step of config ``name``, timed by the side-by-side's worker."""
    import numpy as np
    import tarflow_vs_official as tvo

    cfg = tvo.CONFIGS[name]
    wargs = argparse.Namespace(torch_python=args.torch_python, official=args.official,
                               worker_timeout=3600.0, dtype="float32", torch_compile="",
                               torch_threads=0, steps=args.steps, warmup=3, sample_reps=1,
                               guidance_list=[], seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        data = pathlib.Path(tmp) / "data.npz"
        np.savez(data, **tvo.make_data(cfg, 1, 0))
        res = tvo.run_worker(wargs, tvo.worker_spec(cfg, wargs, "cpu"), str(data))
    return {"torch": res["torch"], "torch_threads": res["torch_threads"],
            "step_s_median": res["train"]["step_s_median"],
            "examples_per_s": res["train"]["examples_per_s"]}


def measure(name: str, args) -> dict:
    """One config's row (see the module docstring)."""
    from tarflow_profile import CONFIGS

    batch = CONFIGS[name][6]
    grad_s, xla_flops, hlo = grad_and_hlo(name, args.steps)
    dots = hlo_dots(hlo)
    jax_s = jax_dot_seconds(dots, args.reps)
    for d, s in zip(dots, jax_s):
        d["jax_s"] = s
    row = {"config": name, "batch": batch, "num_dots": sum(d["count"] for d in dots),
           "distinct_dots": len(dots),
           "dot_gflop": sum(d["flops"] * d["count"] for d in dots) / 1e9,
           "xla_gflop": xla_flops / 1e9, "our_grad_s": grad_s,
           "jax_floor_s": sum(d["jax_s"] * d["count"] for d in dots)}
    row["jax_floor_gflop_per_s"] = row["dot_gflop"] / row["jax_floor_s"]
    if args.torch_python:
        t = torch_dot_seconds(args.torch_python, dots, args.reps)
        for d, s in zip(dots, t["seconds"]):
            d["torch_s"] = s
        row["torch"] = t["torch"]
        row["torch_threads"] = t["threads"]
        row["torch_floor_s"] = sum(d["torch_s"] * d["count"] for d in dots)
        row["torch_floor_gflop_per_s"] = row["dot_gflop"] / row["torch_floor_s"]
    if args.official:
        off = official_step_seconds(args, name)
        row["official_step"] = off
        row["target_step_s"] = off["step_s_median"] / TARGET_RATIO
        row["jax_floor_over_target"] = row["jax_floor_s"] / row["target_step_s"]
        row["best_ratio_at_jax_floor"] = off["step_s_median"] / row["jax_floor_s"]
        row["our_grad_ratio"] = off["step_s_median"] / grad_s
    row["dots"] = dots
    return row


def table(rows: list[dict]) -> str:
    """Markdown: one line per config."""
    fmt = lambda v, f: "-" if v is None else format(v, f)
    out = ["| config | dots per grad (distinct) | GFLOP in dots (XLA's count) | our grad s "
           "| jax matmul floor s (GFLOP/s) | torch matmul floor s (GFLOP/s) | official step s "
           "| 1.3x target step s | jax floor / target | official / jax floor |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        off = r.get("official_step", {})
        out.append(
            f"| {r['config']} | {r['num_dots']} ({r['distinct_dots']}) | "
            f"{r['dot_gflop']:.1f} ({r['xla_gflop']:.1f}) | {r['our_grad_s']:.3f} | "
            f"{r['jax_floor_s']:.3f} ({r['jax_floor_gflop_per_s']:.0f}) | "
            f"{fmt(r.get('torch_floor_s'), '.3f')} "
            f"({fmt(r.get('torch_floor_gflop_per_s'), '.0f')}) | "
            f"{fmt(off.get('step_s_median'), '.3f')} | {fmt(r.get('target_step_s'), '.3f')} | "
            f"{fmt(r.get('jax_floor_over_target'), '.2f')} | "
            f"{fmt(r.get('best_ratio_at_jax_floor'), '.2f')} |")
    return "\n".join(out)


def main(argv=None) -> int:
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    args = parse_args(argv)
    load = os.getloadavg()[0]
    refusal = load_refusal("tarflow_matmul_floor", load, args.max_load, args.force)
    if refusal:
        print(refusal)
        return 2
    sys.path.insert(0, str(ROOT))
    import jax

    from jaxflows.provenance import git_commit, machine_info, recorded_command, write_json_atomic

    argv = sys.argv[1:] if argv is None else list(argv)

    t0 = time.time()
    rows = []
    for name in args.config_names:
        rows.append(measure(name, args))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "dots"}), flush=True)
    md = table(rows)
    print(md)
    out = {
        "command": recorded_command("benchmarks/tarflow_matmul_floor.py", argv, str(ROOT),
                                    {"--official": "ML_TARFLOW_DIR",
                                     "--torch_python": "TORCH_PYTHON"}),
        "git_commit": git_commit(), "machine": machine_info(), "jax": jax.__version__,
        "load_average_1m": {"start": load, "end": os.getloadavg()[0]},
        "wall_time_s": time.time() - t0, "target_ratio": TARGET_RATIO,
        "settings": {"reps": args.reps, "steps": args.steps, "torch": bool(args.torch_python),
                     "official": bool(args.official)},
        "rows": rows, "table": md,
    }
    if args.official:
        import tarflow_vs_official

        out["official"] = tarflow_vs_official.official_provenance(args.official)
    write_json_atomic(args.out, out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
