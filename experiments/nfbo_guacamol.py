"""NF-BO on Guacamol: tasks x methods x seeds, resumable, aggregated into one results file.

Each run is ``jaxflows bo`` on a row of ``experiments/configs/nfbo_guacamol.py`` in its own
workdir ``RUNS_DIR/SETTING/TASK/METHOD_sSEED``: a finished run (``summary.json`` with
``finished``) is read back, an unfinished one resumes from its checkpoint, so the driver can be
stopped and started again at any time; several drivers started with the same arguments
(one per core) share the runs, each taking the next run no other driver holds (an ``flock`` on
``WORKDIR.lock``). Runs go one after another in each process (runs sharing
a SeqFlow reuse its compiled functions).

Each finished run is also kept as one small record (summary, oracle-call history, iteration
times) in ``--archive_dir`` (default: next to the results file, ``nfbo_guacamol_SETTING_runs/
TASK/METHOD_sSEED.json.gz``). A run with a record is not run again, and ``--collect_only``
rebuilds the results file from the records alone, so the committed records are the published
table's raw data and a table can be completed across machines. Every record names the
pretrained SeqFlow by a fingerprint of its parameters; runs from different SeqFlows are refused
in one table.

Settings: ``small`` (rows ``TASK``: 100 initial + 500 calls), ``10k`` / ``70k`` (rows
``TASK_10k`` / ``TASK_70k``, accelerators), ``smoke`` (the ``smoke`` row with ``task`` set to each
task: checks the driver, not the method).

The results file (default ``experiments/results/nfbo_guacamol_SETTING.json``) has ``rows`` of
``{task, method, seeds, n_seeds, final_best_mean, final_best_sem, final_best_calls_only_mean,
auc_top10_mean, auc_top10_sem, seconds_per_iteration, iterations_mean, seconds_per_run}``:

* ``final_best``: the best score among the initial molecules and the oracle calls (the paper's
  curves start from the initial best); ``final_best_calls_only``: among the oracle calls alone;
* ``auc_top10``: PMO's AUC Top-10 over the budget (oracle calls only);
* ``seconds_per_iteration``: mean over runs of the mean wall time of the iterations after the
  first one of each process (the first compiles); ``seconds_per_iteration_median`` and
  ``phase_seconds_median``: the median over all those iterations of the row's runs (from each
  run's per-iteration records in its checkpoint), which a few iterations stretched by a paused
  or shared machine do not move; ``seconds_per_run``: the iterations' wall time plus the last
  process's setup;
* ``_sem``: the standard error over seeds.

``curves`` holds the mean and sem of the best-so-far score against oracle calls for every task
and method; the PNG next to the JSON draws them. ``summary_rows`` has one row per task (final
best ``mean ± sem (number of seeds)`` per method, ``nfbo_ge_all_baselines``,
``tacs_on_minus_off``) and ``comparison`` the number of tasks where NF-BO's mean final best is
>= each baseline's. ``--collect_only`` runs nothing and aggregates the runs that have finished
(an interim table while runs are still going: ``n_seeds`` says how many each row has).

    python experiments/nfbo_guacamol.py --setting small --seeds 0,1,2,3,4
    python experiments/nfbo_guacamol.py --setting smoke --tasks adip --methods random,nfbo \\
        --seeds 0 --runs_dir runs/nfbo_check --out runs/nfbo_check/nfbo_guacamol_smoke.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
TASKS = ("adip", "med2", "osmb", "pdop", "rano", "valt", "zale")
METHODS = ("random", "lsbo", "nfbo_no_tacs", "nfbo")
SETTINGS = ("small", "10k", "70k", "smoke")
MAX_CURVE_POINTS = 250


def row_name(setting: str, task: str) -> str:
    """The config row of a task in a setting."""
    return {"small": task, "10k": f"{task}_10k", "70k": f"{task}_70k", "smoke": "smoke"}[setting]


def run_config(setting: str, task: str, method: str, seed: int, overrides: list[str]):
    """The ConfigDict of one run."""
    from jaxflows.train.config_loader import apply_overrides, load_config_file

    config = load_config_file(f"{os.path.join(HERE, 'configs', 'nfbo_guacamol.py')}:"
                              f"{row_name(setting, task)}")
    config = apply_overrides(config, [f"--config.task={task}", f"--config.method={method}",
                                      f"--config.seed={seed}", *overrides])
    config.progress_bar = False
    return config


def finished_summary(workdir: str) -> dict | None:
    """The summary of a finished run in ``workdir``, or None."""
    path = os.path.join(workdir, "summary.json")
    if os.path.exists(path):
        with open(path) as f:
            summary = json.load(f)
        if summary.get("finished"):
            return summary
    return None


def one_run(workdir: str, config) -> dict:
    """The summary of a finished run in ``workdir`` (running or resuming it if needed)."""
    from jaxflows.bo.loop import run_bo

    return finished_summary(workdir) or run_bo(config, workdir)


@contextlib.contextmanager
def run_lock(workdir: str):
    """Yields True while this process holds the run's lock (``WORKDIR.lock``, an exclusive
    ``flock``, released when the process ends however it ends), False when another driver
    holds it: several drivers started with the same arguments share the runs between them."""
    import fcntl

    os.makedirs(os.path.dirname(os.path.abspath(workdir)), exist_ok=True)
    fd = os.open(os.path.normpath(workdir) + ".lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def iteration_seconds(workdir: str) -> dict:
    """Wall times of a run's iterations after the first one of each process, from the
    per-iteration records of its checkpoint: ``{"seconds": [...], "phases": {name: [...]}}``
    (empty lists without a checkpoint)."""
    from jaxflows.bo.state import read_meta

    meta = read_meta(workdir) or {}
    later = [r for r in meta.get("records", []) if not r.get("first_in_process")]
    phases: dict[str, list[float]] = {}
    for r in later:
        for k, v in r.get("phase_seconds", {}).items():
            phases.setdefault(k, []).append(float(v))
    return {"seconds": [float(r["seconds"]) for r in later], "phases": phases}


def run_record(workdir: str) -> dict | None:
    """The archivable record of a finished run in ``workdir`` (None if it has not finished):
    ``{"summary", "history", "iteration_seconds"}``, everything the results file needs."""
    from jaxflows.bo.outputs import read_history

    summary = finished_summary(workdir)
    if summary is None:
        return None
    return {"summary": summary, "history": read_history(workdir),
            "iteration_seconds": iteration_seconds(workdir)}


def record_path(archive_dir: str, task: str, method: str, seed: int) -> str:
    """Where the record of one run is archived."""
    return os.path.join(archive_dir, task, f"{method}_s{seed}.json.gz")


def write_record(path: str, record: dict) -> None:
    """Writes a run record as gzipped JSON, atomically (byte-for-byte repeatable)."""
    import gzip

    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        f.write(json.dumps(record, separators=(",", ":")).encode())
    os.replace(tmp, path)


def read_record(path: str) -> dict | None:
    """The run record archived at ``path``, or None."""
    import gzip

    if not os.path.exists(path):
        return None
    with gzip.open(path, "rt") as f:
        return json.load(f)


def check_same_model(summaries: dict) -> str | None:
    """The SeqFlow fingerprint shared by all runs; a UserError naming the runs that differ
    (their results would not be comparable)."""
    from jaxflows.errors import UserError

    prints: dict[str, list] = {}
    for key, s in summaries.items():
        prints.setdefault(s["model"].get("fingerprint"), []).append(key)
    if len(prints) > 1:
        listing = "; ".join(f"{fp}: {sorted(keys)[:4]}{' ...' if len(keys) > 4 else ''}"
                            for fp, keys in prints.items())
        raise UserError("the runs started from different pretrained SeqFlows (parameter "
                        f"fingerprints {listing}); rerun or remove the odd ones")
    return next(iter(prints), None)


def curve(history: list[dict], budget: int, initial_best: float) -> np.ndarray:
    """Best-so-far score after each of ``budget`` calls (the last value carried forward),
    from a run's oracle-call history."""
    from jaxflows.bo.outputs import best_so_far

    scores = [r["score"] for r in history]
    out = np.full(budget, initial_best, np.float64)
    if scores:
        b = best_so_far(scores, initial_best)
        out[:len(b)] = b[:budget]
        out[len(b):] = b[-1]
    return out


def sem(x) -> float | None:
    """Standard error of the mean (None for fewer than two values)."""
    x = np.asarray(x, np.float64)
    return float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else None


def proposal_fractions(runs: list[dict]) -> dict:
    """Where the proposals went, pooled over ``runs``: ``new_per_proposal`` is oracle calls
    (unique new molecules) / decoded proposals; ``same_as_anchor_fraction`` the decodes equal
    to their own anchor molecule / proposals, over the runs that counted them (run records from
    before the counter have None; so does the field with no such run)."""
    have = [r for r in runs if r.get("proposed")]
    counted = [r for r in have if r.get("decodes_same_as_anchor") is not None]
    return {
        "new_per_proposal": (sum(r["calls"] for r in have) / sum(r["proposed"] for r in have)
                             if have else None),
        "same_as_anchor_fraction": (sum(r["decodes_same_as_anchor"] for r in counted)
                                    / sum(r["proposed"] for r in counted) if counted else None),
        "same_as_anchor_seeds": [r["seed"] for r in counted],
    }


def aggregate(tasks, methods, seeds, summaries: dict, curves: dict) -> tuple:
    """``(rows, curve_table)`` of the results file (module docstring)."""
    rows, table = [], {}
    for task in tasks:
        for method in methods:
            done = [s for s in seeds if (task, method, s) in summaries]
            if not done:
                continue
            runs = [summaries[(task, method, s)] for s in done]
            best = [r["final_best_with_initial"] for r in runs]
            auc = [r["auc_top10"] for r in runs]
            spi = [r["seconds_per_iteration_after_first"] or r["seconds_per_iteration"]
                   for r in runs]
            pooled = [t for r in runs for t in r.get("iteration_seconds", {}).get("seconds", [])]
            phases: dict[str, list[float]] = {}
            for r in runs:
                for k, v in r.get("iteration_seconds", {}).get("phases", {}).items():
                    phases.setdefault(k, []).extend(v)
            rows.append({
                "task": task, "method": method, "seeds": done, "n_seeds": len(done),
                "final_best_mean": float(np.mean(best)), "final_best_sem": sem(best),
                "final_best_calls_only_mean": float(np.mean(
                    [r["final_best"] if r["final_best"] is not None else np.nan
                     for r in runs])),
                "auc_top10_mean": float(np.mean(auc)), "auc_top10_sem": sem(auc),
                "seconds_per_iteration": float(np.mean([v for v in spi if v is not None]))
                if any(v is not None for v in spi) else None,
                "seconds_per_iteration_median": float(np.median(pooled)) if pooled else None,
                "phase_seconds_median": {k: float(np.median(v)) for k, v in phases.items()},
                "iterations_mean": float(np.mean([r["iterations"] for r in runs])),
                "seconds_per_run": float(np.mean([r.get("iteration_seconds_total", np.nan)
                                                  + r.get("setup_seconds", 0.0) for r in runs])),
                "initial_best": float(runs[0]["initial"]["best"]),
                "compiles_later_iterations_max": int(max(
                    r["compile_counts"]["later_iterations"] for r in runs)),
                **proposal_fractions(runs),
            })
            c = np.stack([curves[(task, method, s)] for s in done])
            step = max(1, c.shape[1] // MAX_CURVE_POINTS)
            calls = np.arange(step, c.shape[1] + 1, step)
            table.setdefault(task, {})[method] = {
                "calls": calls.tolist(), "mean": c.mean(0)[calls - 1].round(6).tolist(),
                "sem": (c.std(0, ddof=1) / np.sqrt(len(c)))[calls - 1].round(6).tolist()
                if len(c) > 1 else None}
    return rows, table


BASELINES = ("random", "lsbo", "nfbo_no_tacs")


def summary_rows(rows: list[dict]) -> tuple[list[dict], dict]:
    """One row per task (final best ``mean ± sem (seeds)`` per method, whether NF-BO's mean is
    >= every baseline's, its margin over the strongest baseline with the standard error of that
    difference, the TACS on - off difference) and the counts over tasks, for the
    README. A method without finished runs on a task shows ``None`` and is left out of that
    task's comparisons (an interim table, ``--collect_only``)."""
    by = {(r["task"], r["method"]): r for r in rows}
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    out = []
    wins = {b: 0 for b in BASELINES if b in methods}
    compared = {b: 0 for b in wins}
    for task in tasks:
        first = next(by[(task, m)] for m in methods if (task, m) in by)
        row = {"task": task, "initial_best": first["initial_best"]}
        for m in methods:
            r = by.get((task, m))
            if r is None:
                row[m] = None
                continue
            e = r["final_best_sem"]
            row[m] = (f"{r['final_best_mean']:.3f}" + (f" ± {e:.3f}" if e is not None else "")
                      + f" ({r['n_seeds']})")
        if (task, "nfbo") in by:
            nf = by[(task, "nfbo")]["final_best_mean"]
            ge = {b: nf >= by[(task, b)]["final_best_mean"] for b in wins if (task, b) in by}
            for b, ok in ge.items():
                wins[b] += int(ok)
                compared[b] += 1
            row["nfbo_ge_all_baselines"] = all(ge.values()) if len(ge) == len(wins) else None
            if ge:  # the margin over the strongest baseline, and its standard error
                top = max(ge, key=lambda b: by[(task, b)]["final_best_mean"])
                row["best_baseline"] = top
                row["nfbo_minus_best_baseline"] = nf - by[(task, top)]["final_best_mean"]
                errs = (by[(task, "nfbo")]["final_best_sem"], by[(task, top)]["final_best_sem"])
                row["margin_se"] = (float(np.hypot(*errs)) if None not in errs else None)
            if (task, "nfbo_no_tacs") in by:
                row["tacs_on_minus_off"] = nf - by[(task, "nfbo_no_tacs")]["final_best_mean"]
        out.append(row)
    counts = {"tasks": len(tasks),
              "nfbo_ge_baseline_tasks": wins,
              "tasks_compared": compared,
              "nfbo_ge_all_baselines_tasks": sum(r.get("nfbo_ge_all_baselines") is True
                                                 for r in out)}
    return out, counts


def plot(path: str, table: dict, title: str) -> str:
    """One panel per task, best-so-far mean (+- sem) per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(table)
    cols = min(4, len(tasks))
    rows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks, strict=False):
        for method, c in table[task].items():
            x, m = np.asarray(c["calls"]), np.asarray(c["mean"])
            ax.plot(x, m, label=method)
            if c["sem"] is not None:
                s = np.asarray(c["sem"])
                ax.fill_between(x, m - s, m + s, alpha=0.2)
        ax.set_title(task)
        ax.set_xlabel("oracle calls")
        ax.set_ylabel("best score")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = [a for a in argv if a.startswith("--config.")]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                epilog="extra flags --config.KEY=VALUE apply to every run")
    p.add_argument("--setting", choices=SETTINGS, default="small")
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--runs_dir", default=os.path.join("runs", "nfbo_guacamol"))
    p.add_argument("--collect_only", action="store_true",
                   help="run nothing: aggregate the runs that have finished (an interim table)")
    p.add_argument("--out", default=None,
                   help="results JSON (default experiments/results/nfbo_guacamol_SETTING.json)")
    p.add_argument("--archive_dir", default=None,
                   help="where each finished run's record is kept and read back (default: "
                        "the results JSON's name + '_runs'; '' for none)")
    args = p.parse_args([a for a in argv if not a.startswith("--config.")])
    tasks = [t for t in args.tasks.split(",") if t]
    methods = [m for m in args.methods.split(",") if m]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    bad = [t for t in tasks if t not in TASKS] + [m for m in methods if m not in METHODS]
    if bad or not (tasks and methods and seeds):
        p.error(f"unknown or missing tasks/methods: {bad}; tasks {TASKS}, methods {METHODS}")
    out = args.out or os.path.join(HERE, "results", f"nfbo_guacamol_{args.setting}.json")
    archive = (os.path.splitext(out)[0] + "_runs" if args.archive_dir is None
               else args.archive_dir)
    t0, load0 = time.time(), os.getloadavg()[0]

    summaries, curves = {}, {}
    # seed-major order: a stopped driver leaves every task and method with the same seeds done
    for seed, task, method in ((s, t, m) for s in seeds for t in tasks for m in methods):
        workdir = os.path.join(args.runs_dir, args.setting, task, f"{method}_s{seed}")
        path = record_path(archive, task, method, seed) if archive else None
        ts = time.time()
        rec = read_record(path) if path else None
        if rec is None:
            rec = run_record(workdir)
            if rec is None and not args.collect_only:
                with run_lock(workdir) as mine:
                    if not mine:
                        print(f"{task} {method} seed {seed}: another driver is running it; "
                              "skipped", flush=True)
                        continue
                    rec = read_record(path) if path else None  # finished while we waited
                    if rec is None:
                        one_run(workdir, run_config(args.setting, task, method, seed,
                                                    overrides))
                        rec = run_record(workdir)
            if rec is None:
                continue
            if path and not os.path.exists(path):
                write_record(path, rec)
        s = rec["summary"]
        summaries[(task, method, seed)] = {**s, "iteration_seconds": rec["iteration_seconds"]}
        curves[(task, method, seed)] = curve(rec["history"], s["budget"], s["initial"]["best"])
        print(f"{task} {method} seed {seed}: best {s['final_best_with_initial']:.4f} "
              f"(initial {s['initial']['best']:.4f}), AUC top-10 {s['auc_top10']:.4f}, "
              f"{s['iterations']} iterations, {time.time() - ts:.0f} s", flush=True)

    from jaxflows.provenance import git_commit, machine_info, repo_relative, write_json_atomic

    if not summaries:
        print(f"no finished runs in {args.runs_dir} or {archive or 'an archive'}; nothing "
              "written", file=sys.stderr)
        return 1
    fingerprint = check_same_model(summaries)
    rows, table = aggregate(tasks, methods, seeds, summaries, curves)
    summary, counts = summary_rows(rows)
    png = os.path.splitext(out)[0] + ".png"
    first = next(iter(summaries.values()))
    result = {
        "name": os.path.splitext(os.path.basename(out))[0],
        "title": f"NF-BO on Guacamol ({args.setting} setting)" + (
            ", interim: the runs finished so far (seeds per cell in parentheses)"
            if len(summaries) < len(tasks) * len(methods) * len(seeds) else ""),
        "protocol": (f"setting {args.setting}: {first['initial']['n']} initial molecules "
                     f"({first['initial'].get('source', '?')}, see "
                     f"experiments/configs/nfbo_guacamol.py) + "
                     f"{first['budget']} oracle calls; methods {', '.join(methods)}; seeds "
                     f"{seeds}; SeqFlow {first['model']['seqflow_workdir']} "
                     f"(L={first['model']['L']}, F={first['model']['F']}, "
                     f"{first['model']['params']} params, parameter fingerprint "
                     f"{fingerprint})"),
        "notes": ("final_best includes the initial molecules (the paper's curves start at the "
                  "initial best); the paper reports the 100+500 setting as plots only (Fig. 8), "
                  "so there are no paper numbers to compare row by row; its initial data "
                  "(LOL-BO's Guacamol file) and pretrained SeqFlow are not available here"),
        "columns": ["task", "method", "n_seeds", "final_best_mean", "final_best_sem",
                    "auc_top10_mean", "seconds_per_iteration_median"],
        "rows": rows,
        "summary_rows": summary,
        "comparison": counts,
        "curves": table,
        "curves_png": os.path.basename(png),
        "seqflow_fingerprint": fingerprint,
        "run_records": (repo_relative(archive, os.path.dirname(HERE)) if archive else None),
        "command": " ".join(shlex.quote(a) for a in
                            ["python", "experiments/nfbo_guacamol.py", *argv]),
        "git_commit": git_commit(),
        "machine": machine_info(load_at_start=load0),
        "wall_time_s": time.time() - t0,
    }
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    write_json_atomic(out, result)
    plot(png, table, result["title"])
    print(f"wrote {out}\nwrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
