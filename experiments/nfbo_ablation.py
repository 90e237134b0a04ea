"""One-factor checks of the NF-BO small-setting table: rerun runs of the table with one setting
changed, and compare each with the table's own run of the same task, method and seed.

Variants (each a config override of ``experiments/configs/nfbo_guacamol.py:TASK``):

* ``gp_once``: ``gp.refit_every_iteration=False``, the released code's surrogate (fitted once
  on the initial data; the exact GP still conditions on every new point);
* ``no_reencode``: ``finetune.reencode=False``, D_tr keeps the latents that proposed its points
  after a fine-tune instead of being re-encoded by the new SeqFlow (the anchors still are).

Each run is ``jaxflows bo`` in ``RUNS_DIR/TASK_METHOD_TAG_sSEED`` (resumed if unfinished,
read back if finished). The comparison reads the table's committed run records
(``experiments/results/nfbo_guacamol_small_runs``) and refuses a run whose SeqFlow differs.
Writes ``experiments/results/nfbo_guacamol_small_TASK_VARIANT.json``: ``rows[]`` of
``{task, method, seed, final_best_variant, final_best_table, iterations_variant,
iterations_table, seconds_per_iteration_variant, command, git_commit, seqflow_fingerprint,
best_so_far_per_call}``.

    python experiments/nfbo_ablation.py --variant no_reencode --task valt --methods nfbo \\
        --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from nfbo_guacamol import curve, finished_summary, read_record, record_path  # noqa: E402

from jaxflows.errors import UserError  # noqa: E402
from jaxflows.provenance import git_commit, machine_summary, write_json_atomic  # noqa: E402

# variant -> (workdir tag, config overrides, title)
VARIANTS = {
    "gp_once": ("norefit", ("gp.refit_every_iteration=False",),
                "the GP fitted once, as the released code does, against the refit every "
                "iteration of the main table"),
    "no_reencode": ("noreencode", ("finetune.reencode=False",),
                    "D_tr not re-encoded after each SeqFlow fine-tune, against re-encoded "
                    "(the paper's Algorithm 1, the main table)"),
}
TABLE_RUNS = os.path.join(REPO, "experiments", "results", "nfbo_guacamol_small_runs")


def run_command(task: str, method: str, seed: int, variant: str, workdir: str) -> list[str]:
    """The ``jaxflows bo`` command line of one variant run."""
    _, overrides, _ = VARIANTS[variant]
    return (["jaxflows", "bo", "--config", f"experiments/configs/nfbo_guacamol.py:{task}",
             f"--config.method={method}", f"--config.seed={seed}"]
            + [f"--config.{o}" for o in overrides] + ["--workdir", workdir])


def compare(task: str, method: str, seed: int, variant: str, workdir: str, cmd: list[str]):
    """One row: the finished variant run against the table's record of the same run."""
    s = finished_summary(workdir)
    rec_path = record_path(TABLE_RUNS, task, method, seed)
    record = read_record(rec_path)
    if record is None:
        raise UserError(f"the main table has no record of {task} {method} seed {seed} "
                        f"({rec_path}); run experiments/nfbo_guacamol.py first")
    table = record["summary"]
    if s["model"]["fingerprint"] != table["model"]["fingerprint"]:
        raise UserError(f"{workdir} used SeqFlow {s['model']['fingerprint']}, the table "
                        f"{table['model']['fingerprint']}: not comparable")
    with open(os.path.join(workdir, "bo_history.jsonl")) as f:
        history = [json.loads(ln) for ln in f if ln.strip()]
    best = curve(history, int(s["budget"]), float(s["initial"]["best"]))
    return {
        "task": task, "method": method, "seed": seed,
        "final_best_variant": s["final_best_with_initial"],
        "final_best_table": table["final_best_with_initial"],
        "iterations_variant": s["iterations"], "iterations_table": table["iterations"],
        "seconds_per_iteration_variant": s["seconds_per_iteration_after_first"],
        "command": shlex.join(cmd), "git_commit": s["git_commit"],
        "seqflow_fingerprint": s["model"]["fingerprint"],
        "best_so_far_per_call": [round(float(v), 5) for v in best],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    p.add_argument("--task", default="valt")
    p.add_argument("--methods", default="nfbo")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--runs_dir", default=os.path.join("runs", "ablation"))
    p.add_argument("--collect_only", action="store_true", help="run nothing; compare the "
                   "finished runs")
    a = p.parse_args(argv)
    tag, _, title = VARIANTS[a.variant]
    rows = []
    for method in a.methods.split(","):
        for seed in [int(x) for x in a.seeds.split(",")]:
            wd = os.path.join(a.runs_dir, f"{a.task}_{method}_{tag}_s{seed}")
            cmd = run_command(a.task, method, seed, a.variant, wd)
            if finished_summary(wd) is None and not a.collect_only:
                print("+", shlex.join(cmd), flush=True)
                subprocess.run([sys.executable, "-m", "jaxflows.cli"] + cmd[1:], check=True)
            if finished_summary(wd) is None:
                print(f"skipped (not finished): {wd}")
                continue
            rows.append(compare(a.task, method, seed, a.variant, wd, cmd))
            r = rows[-1]
            print(f"{a.task} {method} s{seed}: {a.variant} {r['final_best_variant']:.4f}, "
                  f"table {r['final_best_table']:.4f}")
    name = f"nfbo_guacamol_small_{a.task}_{a.variant}"
    out = {
        "name": name,
        "title": f"NF-BO small setting, {a.task}: {title}",
        "notes": "a one-factor check on a few seeds, not a table; the table columns are the "
                 "committed run records of nfbo_guacamol_small (same task, method, seed, "
                 "SeqFlow and initial data)",
        "command": shlex.join(["python", "experiments/nfbo_ablation.py"]
                              + (argv if argv is not None else sys.argv[1:])),
        "git_commit": git_commit(), "machine": machine_summary(),
        "load_average_1m_at_end": os.getloadavg()[0],
        "rows": rows,
    }
    path = os.path.join(REPO, "experiments", "results", f"{name}.json")
    write_json_atomic(path, out)
    print("wrote", os.path.relpath(path, REPO))
    return 0


if __name__ == "__main__":
    sys.exit(main())
