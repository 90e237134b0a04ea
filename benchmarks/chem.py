"""Throughput of the Guacamol objectives (``jaxflows.chem.guacamol.score``): molecules/s per task.

Scores a fixed set of MOSES-like SMILES (48 molecules from the MOSES test split, Polykovskiy et
al. 2020, listed below, each repeated as seeded random SMILES spellings up to ``--num``) for
every task with one worker process and with two (``--workers``); the two-worker time includes
starting the pool, as :func:`~jaxflows.chem.guacamol.score` does on every call. The objectives
are built (targets' fingerprints) before timing. Prints a Markdown table; records the 1-minute
load average at the start and the end (timings on a shared CPU depend on it); writes JSON with
the command, git commit and machine only when ``--out`` is given. Wall-clock rates depend on
what else runs on the machine; the CPU seconds (this process and its worker processes) give a
load-robust cost per molecule.

    .venv/bin/python benchmarks/chem.py [--num 2000] [--tasks med1,dhop] [--workers 1,2] \
        [--out benchmarks/results/chem.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time

import numpy as np
from machine_load import add_load_args, require_quiet

from jaxflows.chem import guacamol
from jaxflows.provenance import git_commit, write_json_atomic

MOLECULES = [
    'Cc1nc(C)n(CC2CCCCN2c2ccnc(-c3ccccc3)n2)n1',
    'CC(C)(C)NC(=O)c1ccc(NC(=O)CNCc2ccccc2)cc1',
    'Cc1cc(Cl)ccc1NC(=O)COc1c(C)occc1=O',
    'COC(C)CCOC(=O)c1cn(C)nc1-c1cccs1',
    'Cc1cc(C(=O)Nc2cccc(NC(=O)c3ccncc3)c2)on1',
    'COc1ccc(Oc2ncnc(-n3cnc4ccccc43)c2N)cc1',
    'O=C(CC1CCCC1)NCC1CCN(c2ncccn2)CC1',
    'COc1ccc2nc(NC(=O)c3ccc(O)cc3)sc2c1',
    'O=C(NCCOc1ccc(-c2ccco2)nn1)c1cccs1',
    'O=C(NCCCOc1cccc2cccnc12)C1CC1',
    'CC(CC#N)Sc1ccccc1NC(=O)c1cc(Cl)c[nH]1',
    'COC(=O)C(C)Nc1nn2c(nc3ccccc32)[nH]1',
    'O=C(c1cc2c([nH]c1=O)CCC2)N1CCN(C(=O)C2CCCO2)CC1',
    'Cc1cc(C)cc(NC(=O)CC(NC(N)=O)c2ccccc2)c1',
    'CC1(C)CC2CC(C)(CN2C(=O)Nc2cccn3cnnc23)C1',
    'COc1ccc2[nH]nc(C(=O)N(C)Cc3cccc4cnccc34)c2c1',
    'CC1(C)CN(CCOc2ccccc2N)CCO1',
    'NC(=O)CN(Cc1ccccc1)Cc1cccnc1',
    'COc1cc(CN2CCOC3(CCC3)C2)c(Br)cc1O',
    'COC(=O)C(CNC(=O)c1ccccc1F)Oc1ccc(F)cc1',
    'CC(=O)Oc1ccc(C(=O)CC2(O)C(=O)N(C)c3ccccc32)cc1',
    'c1ccc(-c2nccn2-c2cccc(-n3cnnc3)c2)nc1',
    'CN(C(=O)C(O)c1cccc(Cl)c1)C1Cc2ccccc2C1',
    'C#CCNC(=O)C(C)Oc1cccc2c1NCCC2',
    'COc1ccccc1CNC(=O)CN1C(=O)CSc2ccccc21',
    'CCc1nc(CCNc2cc(N3CCCC3CO)ncn2)no1',
    'Cc1cc(-n2c(C)cc(C(=O)N(C)Cc3cccnc3)c2C)no1',
    'CCOC(=O)c1ccc2[nH]c(CC(=O)OC)cc(=O)c2c1',
    'CCNC(=O)CNC(=O)c1scnc1C1CC1',
    'Cc1sc2[nH]c(CCC(=O)NC(C)CCC(C)C)nc(=O)c2c1C',
    'Cc1cc(CSc2ncccc2C(=O)NC(C)C2CC2)no1',
    'COCCNc1nc(-c2ccc(C)n(C3CC3)c2=O)cs1',
    'O=C(Cc1ccc(Cl)cc1)NCc1nnnn1C1CCCCC1',
    'O=C(NCCNc1ccc2ccccc2n1)c1ccc(=O)[nH]c1',
    'CCOC(=O)c1cc(N)ccc1NCC(C)CC',
    'O=C(NCCOc1ccc(Cl)cc1)C1COc2ccccc2O1',
    'N#Cc1cnc(SCC(=O)Nc2cc(Cl)ccc2O)nc1N',
    'CCC(CC)NC(=O)CS(=O)(=O)c1ccc(Cl)cc1',
    'Cc1ccc(NC(=O)COc2c(C)cccc2C)cc1S(C)(=O)=O',
    'CCOC(=O)c1c(NC(=O)c2cccs2)sc(C(C)=O)c1C',
    'CC(=O)Nc1nc(C(=O)OCC2CCCCO2)cs1',
    'NC(C(=O)NCCS(N)(=O)=O)c1ccccc1',
    'O=C(OCCn1cncn1)c1ccc(Br)cc1',
    'COC(=O)CNCc1cc(Cl)c(O)c(OC)c1',
    'Cc1ccc(-n2nnnc2SCc2ccccn2)cc1',
    'COc1ccc2c(c1C)C(C1CCC(=O)N1)NCC2',
    'O=C(Cn1nc(-c2ccccc2)ccc1=O)C1CCCCC1',
    'CC1NC2(CCN(C(=O)c3ccco3)CC2)N(Cc2ccco2)C1=O',
]


def smiles_set(num: int, seed: int = 0) -> list[str]:
    """``num`` SMILES: the listed molecules, then seeded random spellings of them, in turn."""
    from rdkit import Chem

    mols = [Chem.MolFromSmiles(s) for s in MOLECULES]
    per = -(-num // len(mols))
    spellings = [[s, *Chem.MolToRandomSmilesVect(m, per - 1, randomSeed=seed + i)]
                 for i, (s, m) in enumerate(zip(MOLECULES, mols))]
    out = [spellings[i % len(mols)][i // len(mols)] for i in range(num)]
    return out


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (user + system)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def bench_task(task: str, smiles: list[str], workers: list[int]) -> dict:
    """Times ``guacamol.score`` of ``smiles`` for each worker count; checks equal results."""
    guacamol.objective(task)  # build outside the timing
    row: dict = {"task": task, "name": guacamol.TASKS[task].name, "num": len(smiles)}
    ref = None
    for w in workers:
        c0 = _cpu_seconds()
        t0 = time.perf_counter()
        out = guacamol.score(task, smiles, num_workers=w)
        dt = time.perf_counter() - t0
        row[f"cpu_seconds_w{w}"] = _cpu_seconds() - c0
        if ref is None:
            ref = out
        elif not np.array_equal(ref, out):
            raise AssertionError(f"{task}: scores differ between worker counts")
        row[f"seconds_w{w}"] = dt
        row[f"mol_per_s_w{w}"] = len(smiles) / dt
    row["mean_score"] = float(ref.mean())
    return row


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num", type=int, default=2000, help="SMILES per task")
    p.add_argument("--tasks", default=",".join(guacamol.TASKS), help="comma-separated task ids")
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    p.add_argument("--out", default=None, help="write the results as JSON to this path")
    add_load_args(p)
    args = p.parse_args(argv)
    load_start = require_quiet("chem", args)
    tasks = [t for t in args.tasks.split(",") if t]
    for t in tasks:
        guacamol.check_task(t)
    workers = [int(w) for w in args.workers.split(",")]
    smiles = smiles_set(args.num)
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    rows = [bench_task(t, smiles, workers) for t in tasks]
    load_end = os.getloadavg()[0]

    head = " | ".join(f"{w} worker{'s' if w > 1 else ''} mol/s" for w in workers)
    print(f"| task | benchmark | {head} | mol per CPU-second ({workers[0]} worker"
          f"{'s' if workers[0] > 1 else ''}) |")
    print("|---|---|" + "---|" * (len(workers) + 1))
    for r in rows:
        cells = " | ".join(f"{r[f'mol_per_s_w{w}']:,.0f}" for w in workers)
        cpu = r["num"] / max(r[f"cpu_seconds_w{workers[0]}"], 1e-9)
        print(f"| {r['task']} | {r['name']} | {cells} | {cpu:,.0f} |")
    print(f"\n{args.num} SMILES per task; 1-minute load average {load_start:.1f} at the start, "
          f"{load_end:.1f} at the end; {os.cpu_count()} CPUs.")

    if args.out:
        import rdkit

        record = {
            "command": " ".join([os.path.relpath(sys.argv[0])] + (argv or sys.argv[1:])),
            "git_commit": git_commit(),
            "started": started,
            "machine": {
                "platform": platform.platform(),
                "processor": platform.processor() or platform.machine(),
                "cpu_count": os.cpu_count(),
                "usable_cpus": guacamol.default_num_workers(),
                "python": platform.python_version(),
                "rdkit": rdkit.__version__,
                "numpy": np.__version__,
                "load_average_1m_at_start": load_start,
                "load_average_1m_at_end": load_end,
            },
            "num_smiles": args.num,
            "workers": workers,
            "rows": rows,
        }
        write_json_atomic(args.out, record)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
