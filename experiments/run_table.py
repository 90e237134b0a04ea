"""Train every row of a table under one protocol and collect the results with provenance.

    python experiments/run_table.py vae_mnist --rows vae,ccliniaf_k5 \
        --workroot workdirs/vae_mnist --set train.num_epochs=40

Each row is one ``jaxflows train`` subprocess into ``WORKROOT/ROW`` (so an interrupted table
resumes row by row, each run exactly where it stopped). Then ``experiments/results/NAME.json``
is (re)written from the workdirs: the exact command, git commit, machine, the protocol
overrides, and per row its ``eval.json``, ``train_summary.json`` and per-epoch curves read from
``metrics.jsonl``. ``--collect_only`` skips training; ``--out_name`` writes another results file
(e.g. the converged VAE rows beside the 30-epoch table). Numbers are never typed by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

from jaxflows.provenance import git_commit, machine_summary, write_json_atomic

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def _curves(workdir: str) -> dict:
    rows = []
    path = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(path):
        with open(path) as f:
            rows = [json.loads(ln) for ln in f if ln.strip()]
    val = [r for r in rows if any(k.startswith("val_") for k in r)]
    train = [r for r in rows if "loss" in r]
    curves = {"val": [{k.removeprefix("val_"): v for k, v in r.items()} for r in val]}
    # one training point per epoch: the last logged step of each epoch
    per_epoch = {}
    for r in train:
        per_epoch[int(r["epoch"] - 1e-9)] = r
    curves["train"] = [{"epoch": r["epoch"], "loss": r["loss"],
                        **({"neg_elbo": r["neg_elbo"]} if "neg_elbo" in r else {}),
                        **({"examples_per_s": r["examples_per_s"]}
                           if "examples_per_s" in r else {})}
                       for _, r in sorted(per_epoch.items())]
    return curves


def _median_throughput(curves: dict) -> dict:
    rates = sorted(r["examples_per_s"] for r in curves["train"] if "examples_per_s" in r)
    return {"train_examples_per_s": rates[len(rates) // 2]} if rates else {}


def _paired(workdir: str, base_dir: str, key: str) -> dict:
    """Mean and standard error of ``key`` (row minus baseline) over the same test examples."""
    import numpy as np

    a_path = os.path.join(workdir, "eval_per_example.npz")
    b_path = os.path.join(base_dir, "eval_per_example.npz")
    if not (os.path.exists(a_path) and os.path.exists(b_path)):
        return {}
    a, b = np.load(a_path)[key], np.load(b_path)[key]
    n = min(len(a), len(b))
    d = a[:n] - b[:n]
    return {f"{key}_minus_baseline": float(d.mean()),
            f"{key}_minus_baseline_sem": float(d.std(ddof=1) / np.sqrt(n))}


def collect(name: str, rows: list[str], workroot: str, overrides: list[str], command: str,
            extra_rows: dict | None = None, baseline: str | None = None,
            paired_key: str = "nll_is") -> dict:
    """Builds the results dict from the row workdirs (paired differences against ``baseline``)."""
    out_rows = []
    for row in rows:
        wd = os.path.join(workroot, row)
        entry = {"name": row}
        for fname in ("train_summary.json", "eval.json"):
            p = os.path.join(wd, fname)
            if os.path.exists(p):
                with open(p) as f:
                    entry.update({f"test_{k}" if fname == "eval.json" and k not in
                                  ("split", "step", "params_used", "eval_time_s") else k: v
                                  for k, v in json.load(f).items()})
        if "train_wall_time_s" in entry:  # training + final evaluation
            entry["wall_time_s"] = entry["train_wall_time_s"] + entry.get("eval_time_s", 0.0)
        if "test_nll_is" in entry:  # the table's -log p(x) is the importance-sampled one
            entry["test_nll"] = entry["test_nll_is"]
            entry["test_nll_sem"] = entry.get("test_nll_is_sem")
        if baseline and row != baseline:
            entry.update(_paired(wd, os.path.join(workroot, baseline), paired_key))
        entry.update((extra_rows or {}).get(row, {}))
        entry["curves"] = _curves(wd)
        entry.update(_median_throughput(entry["curves"]))
        out_rows.append(entry)
    return {"title": name, "command": command, "git_commit": git_commit(REPO),
            "machine": machine_summary(), "protocol": " ".join(overrides) or "config defaults",
            "rows": out_rows}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name", help="experiments/configs/NAME.py")
    p.add_argument("--rows", required=True, help="comma-separated rows of get_config")
    p.add_argument("--workroot", default=None)
    p.add_argument("--set", action="append", default=[], help="KEY=VALUE for every row")
    p.add_argument("--collect_only", action="store_true")
    p.add_argument("--paper", default=None, help="JSON file of {row: {column: value}} to merge")
    p.add_argument("--merge", action="append", default=[],
                   help="ROW.KEY=FILE: put the `rows` list of results file FILE (e.g. a "
                        "guidance sweep) into row ROW under KEY, with that file's provenance")
    p.add_argument("--columns", default=None, help="comma-separated columns of the Markdown table")
    p.add_argument("--notes", default=None, help="a sentence stored with the results")
    p.add_argument("--command", default=None,
                   help="with --collect_only: the command that trained the rows, recorded as "
                        "`command` (this invocation is recorded as `collect_command`)")
    p.add_argument("--baseline", default=None,
                   help="row to compare every other row with, example by example")
    p.add_argument("--out_name", default=None,
                   help="results file experiments/results/OUT_NAME.json and its title (default "
                        "NAME), e.g. a second protocol of the same table: vae_mnist_converged")
    args = p.parse_args()
    if args.out_name is not None and not re.fullmatch(r"\w+", args.out_name):
        p.error(f"--out_name must be letters, digits and underscores, got {args.out_name!r}")
    out_name = args.out_name or args.name
    rows = args.rows.split(",")
    workroot = args.workroot or os.path.join(REPO, "workdirs", args.name)
    overrides = [f"--config.{kv}" for kv in args.set]
    config = os.path.join("experiments", "configs", f"{args.name}.py")
    command = "python " + " ".join(sys.argv)
    if not args.collect_only:
        for row in rows:
            t0 = time.time()
            cmd = [sys.executable, "-m", "jaxflows.cli", "train", "--config", f"{config}:{row}",
                   "--workdir", os.path.join(workroot, row), *overrides]
            print(" ".join(cmd), flush=True)
            rc = subprocess.run(cmd, cwd=REPO).returncode
            print(f"{row}: exit {rc} after {time.time() - t0:.0f} s", flush=True)
            if rc:
                return rc
    extra = None
    if args.paper:
        with open(args.paper) as f:
            extra = json.load(f)
    for spec in args.merge:
        target, _, fname = spec.partition("=")
        row, _, key = target.partition(".")
        if not (row and key and fname):
            p.error(f"--merge wants ROW.KEY=FILE, got {spec!r}")
        with open(fname) as f:
            merged = json.load(f)
        extra = extra or {}
        extra.setdefault(row, {})[key] = merged["rows"]
        extra[row][f"{key}_provenance"] = {k: v for k, v in merged.items() if k != "rows"}
    path = os.path.join(HERE, "results", f"{out_name}.json")
    collect_command = None
    if args.collect_only:
        collect_command = command
        command = args.command or command
    results = collect(out_name, rows, workroot, overrides, command, extra, args.baseline)
    if collect_command:
        results["collect_command"] = collect_command
    if args.columns:
        results["columns"] = args.columns.split(",")
    if args.notes:
        results["notes"] = args.notes
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    write_json_atomic(path, results)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
