"""Wall time of one NF-BO iteration on this machine, in total and per phase, continuing given BO
workdirs (``jaxflows bo`` runs, e.g. the ``nfbo_guacamol`` small setting's).

Each workdir is copied to a temporary directory (the original is not touched), its budget raised
by ``--extra_budget`` oracle calls so that the loop goes on, and ``--warmup`` + ``--iterations``
iterations run in this process (fewer timed ones if the extra budget runs out first). The
warm-up iterations compile (XLA) and are not timed; the timed ones give the median seconds per
iteration and per phase (SeqFlow fine-tuning, GP fit, anchors, TACS, candidates, Thompson
sampling, decoding and the oracle) and the number of XLA compilations after the warm-up (0:
every jitted piece is reused). Continuing a finished run times late iterations, with the GP and
fine-tuning sets at their largest. The GP keeps the padded row count of the original run (it
follows from ``n_init + budget``), so the timed iterations have the run's own shapes; with the
default 40 extra calls the small setting's data (600 points, padded to 640) stay within it.

Prints a Markdown table; records the 1-minute load average at the start and the end and refuses
to run on a loaded machine (``--force`` for smoke tests); writes JSON with the command, git
commit and machine when ``--out`` is given.

    R=runs/nfbo_guacamol_v2/small/rano
    python benchmarks/nfbo_iteration.py --out benchmarks/results/nfbo_iteration.json \\
        --workdirs $R/lsbo_s0,$R/nfbo_no_tacs_s0,$R/nfbo_s0
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
import time

import numpy as np
from machine_load import add_load_args, require_quiet

PHASES = ("finetune", "gp_fit", "anchors", "tacs", "candidates", "thompson", "decode_oracle",
          "prior")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdirs", required=True, help="comma-separated BO workdirs")
    p.add_argument("--iterations", type=int, default=5, help="timed iterations per workdir")
    p.add_argument("--warmup", type=int, default=1, help="untimed (compiling) iterations")
    p.add_argument("--extra_budget", type=int, default=40,
                   help="oracle calls added to each copy's budget so that it continues")
    p.add_argument("--out", default="", help="JSON results ('' = print only)")
    add_load_args(p)
    args = p.parse_args(argv)
    args.workdir_list = [w for w in args.workdirs.split(",") if w]
    if args.iterations < 1 or args.warmup < 1:
        p.error("--iterations and --warmup must be >= 1")
    return args


def time_workdir(workdir: str, iterations: int, warmup: int, extra_budget: int) -> dict:
    """Runs ``warmup`` + ``iterations`` iterations on a copy of ``workdir``; returns the timed
    iterations' records and their medians."""
    import ml_collections

    from jaxflows.bo.config import surrogate_config
    from jaxflows.bo.loop import BORun, gp_padded_rows
    from jaxflows.errors import UserError

    config_path = os.path.join(workdir, "config.json")
    if not os.path.exists(config_path):
        raise UserError(f"{workdir} is not a BO workdir (no config.json); run `jaxflows bo` "
                        "there first")
    with tempfile.TemporaryDirectory(prefix="nfbo_iteration_") as tmp:
        copy = os.path.join(tmp, "run")
        shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns(".lock"))
        with open(config_path) as f:
            config = ml_collections.ConfigDict(json.load(f))
        config.progress_bar = False
        budget = int(config.budget)
        config.budget = budget + int(extra_budget)
        run = BORun(config, copy)
        try:
            # the GP's padded size of the original run (BORun derives it from the capacity)
            cap = run.state.n_init + budget
            run.pad = gp_padded_rows(run.k_tr, cap)
            run.surrogate = surrogate_config(config, run.pad)
            start = run.state.iteration
            config.max_iterations = start + warmup + iterations
            records = []
            for i in range(warmup + iterations):
                if run.done():
                    break
                rec = run.step()
                if i >= warmup:
                    records.append(rec)
        finally:
            run.close()
    if not records:
        raise UserError(f"{workdir}: the copy's extra budget ran out in the warm-up; raise "
                        "--extra_budget")
    secs = [r["seconds"] for r in records]
    phases = {k: float(np.median([r["phase_seconds"].get(k, 0.0) for r in records]))
              for k in PHASES if any(k in r["phase_seconds"] for r in records)}
    return {"workdir": workdir, "task": config.task, "method": config.method,
            "seed": int(config.seed), "from_iteration": start, "iterations": len(records),
            "gp_padded_rows": run.pad,
            "seconds_per_iteration_median": float(np.median(secs)),
            "seconds_per_iteration_mean": float(np.mean(secs)),
            "phase_seconds_median": phases,
            "compiles_after_warmup": int(sum(r["compiles"] for r in records)),
            "oracle_calls_per_iteration_mean": float(np.mean([r["new"] for r in records]))}


def table(rows: list[dict]) -> str:
    """Markdown: one line per workdir, seconds per iteration and per phase (medians)."""
    phases = [k for k in PHASES if any(k in r["phase_seconds_median"] for r in rows)]
    head = ["task", "method", "seed", "s / iteration", *phases, "compiles"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["task"], r["method"], str(r["seed"]),
                 f"{r['seconds_per_iteration_median']:.2f}",
                 *(f"{r['phase_seconds_median'].get(k, 0.0):.2f}" for k in phases),
                 str(r["compiles_after_warmup"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    load0 = require_quiet("nfbo_iteration.py", args)
    from jaxflows.provenance import git_commit, machine_info, write_json_atomic

    t0 = time.time()
    rows = [time_workdir(w, args.iterations, args.warmup, args.extra_budget)
            for w in args.workdir_list]
    print(table(rows))
    load1 = os.getloadavg()[0]
    print(f"\nmedians of {args.iterations} iterations after {args.warmup} warm-up; "
          f"1-minute load average {load0:.2f} at the start, {load1:.2f} at the end")
    result = {"name": "nfbo_iteration", "rows": rows,
              "command": " ".join(shlex.quote(a) for a in
                                  ["python", "benchmarks/nfbo_iteration.py",
                                   *(sys.argv[1:] if argv is None else argv)]),
              "git_commit": git_commit(), "machine": machine_info(load_at_start=load0),
              "load_average_1m_at_end": load1, "wall_time_s": time.time() - t0}
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)) or ".", exist_ok=True)
        write_json_atomic(args.out, result)
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
