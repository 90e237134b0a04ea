"""SeqFlow pretrained on MOSES: test likelihood, reconstruction and prior samples.

Reads a workdir trained with ``experiments/configs/seqflow_moses.py:ROW`` (``jaxflows train``
writes its test-set ``eval.json`` at the end: ``nll_per_token`` in nats per position of the
dequantised ``v``, ``recon_token_acc``, ``recon_molecule_acc`` of the clean encoding through
the sequential inverse), draws ``--num_samples`` molecules from the prior (``z ~ N(0, I)``,
seed 0), and reports

* validity: the fraction of samples whose decode survives the SELFIES round trip as a
  non-empty molecule RDKit parses;
* uniqueness: distinct RDKit-canonical SMILES among the valid ones / valid;
* novelty: distinct valid molecules not in the MOSES training split / distinct valid.

Then writes ``experiments/results/seqflow_moses.json`` (one row per workdir; provenance, the
per-evaluation curves, parameter counts of the row and of the paper configuration).

    python experiments/seqflow_moses.py --workdir runs/seqflow_cpu --row cpu
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time

import numpy as np

from jaxflows.provenance import git_commit, machine_summary, params_fingerprint, write_json_atomic

HERE = os.path.dirname(os.path.abspath(__file__))


def sample_metrics(smiles: list[str], train_set: set[str]) -> dict:
    """Validity, uniqueness and novelty of sampled SMILES (``''`` = invalid decode)."""
    from jaxflows.chem.selfies_vocab import canonical_smiles, quiet_rdkit

    with quiet_rdkit():
        canon = [canonical_smiles(s) if s else None for s in smiles]
    valid = [c for c in canon if c]
    unique = set(valid)
    return {"num_samples": len(smiles), "validity": len(valid) / max(len(smiles), 1),
            "uniqueness": len(unique) / max(len(valid), 1),
            "novelty": len(unique - train_set) / max(len(unique), 1)}


def training_smiles(data_dir: str | None) -> set[str]:
    """The canonical SMILES of the ``moses_selfies`` training split."""
    from jaxflows.data.registry import load_source

    src = load_source("moses_selfies", "train", data_dir)
    out, step = set(), 50_000
    for s in range(0, len(src), step):
        for r in src.__getitems__(list(range(s, min(s + step, len(src))))):
            v = r["smiles"]
            out.add(v.decode() if isinstance(v, bytes) else str(v))
    return out


def test_metrics(task, params, data_dir: str | None, num: int, batch: int = 500) -> dict:
    """Means of ``task.eval_batch`` over the first ``num`` test molecules (``num <= 0``: all),
    padded with ``<stop>`` to ``L``; one compiled shape (the last chunk is padded and masked)."""
    import jax

    from jaxflows.data.registry import load_source

    src = load_source("moses_selfies", "test", data_dir)
    n = len(src) if num <= 0 else min(num, len(src))
    step = jax.jit(task.eval_batch)
    sums: dict[str, float] = {}
    for i, s in enumerate(range(0, n, batch)):
        recs = src.__getitems__(list(range(s, min(s + batch, n))))
        toks = np.full((batch, task.length), 1, np.int32)
        for j, r in enumerate(recs):
            toks[j, :len(r["tokens"])] = r["tokens"]
        out = jax.device_get(step(params, {"tokens": toks}, jax.random.key(i)))
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + float(np.sum(np.asarray(v)[:len(recs)]))
    return {k: v / n for k, v in sums.items()} | {"num_test_molecules": n}


def _curves(workdir: str) -> dict:
    """``{name: {"step": [...], "value": [...]}}`` of the run's logged series (training every
    ``log_every_steps``, validation ``val_*``; a resumed run's repeated steps merged)."""
    from jaxflows.train.curves import read_metrics

    keep = ("loss", "nll_per_token", "sim_per_token", "examples_per_s", "epoch", "val_loss",
            "val_nll_per_token", "val_recon_token_acc", "val_recon_molecule_acc")
    series = read_metrics(workdir)
    return {k: {"step": series[k][0].tolist(), "value": series[k][1].tolist()}
            for k in keep if k in series}


def paper_param_count(vocab_size: int) -> int:
    """Parameters of the paper configuration for a vocabulary of ``vocab_size``."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from jaxflows.models.seqflow import SeqFlow
    from jaxflows.models.seqflow_task import PAPER

    sizes = {k: v for k, v in PAPER.items() if k != "dropout"}
    m = SeqFlow(vocab_size=vocab_size, **sizes)
    shapes = jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((1, 4, 40))))
    return int(sum(x.size for x in jax.tree.leaves(nn.unbox(shapes))))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--row", required=True, help="the config row the workdir was trained with")
    p.add_argument("--data_dir", default=None)
    p.add_argument("--num_samples", type=int, default=10_000)
    p.add_argument("--test_examples", type=int, default=0,
                   help="evaluate the first N test molecules here (0: read the run's eval.json)")
    p.add_argument("--out", default=os.path.join(HERE, "results", "seqflow_moses.json"))
    args = p.parse_args(argv)
    t0 = time.time()

    import jax
    from flax import linen as nn

    from jaxflows.train.sample import load_trained

    summary_path = os.path.join(args.workdir, "train_summary.json")
    summary = json.load(open(summary_path)) if os.path.exists(summary_path) else {}
    task, params, step = load_trained(args.workdir, data_dir=args.data_dir)
    if args.test_examples > 0:
        t_e = time.time()
        ev = test_metrics(task, params, args.data_dir, args.test_examples)
        ev["eval_time_s"] = time.time() - t_e
    else:
        with open(os.path.join(args.workdir, "eval.json")) as f:
            ev = json.load(f)
    t_s = time.time()
    smiles = task.sample(params, jax.random.key(0), args.num_samples)
    sample_s = time.time() - t_s
    metrics = sample_metrics(smiles, training_smiles(args.data_dir))
    n_params = int(sum(np.size(x) for x in jax.tree.leaves(params)))
    row = {
        "row": args.row, "params": n_params, "step": step,
        # names these parameters in NF-BO's results (jaxflows.provenance.params_fingerprint)
        "params_fingerprint": params_fingerprint(jax.device_get(nn.unbox(params))),
        "epochs": summary.get("epochs"),
        "train_wall_time_s": summary.get("train_wall_time_s"),
        "test_eval_time_s": ev.get("eval_time_s"),
        "num_test_molecules": ev.get("num_test_molecules", 176_074),
        "test_nll_per_token": ev["nll_per_token"], "test_loss": ev["loss"],
        "recon_token_acc": ev["recon_token_acc"],
        "recon_molecule_acc": ev["recon_molecule_acc"],
        **{k: metrics[k] for k in ("validity", "uniqueness", "novelty")},
        "num_samples": metrics["num_samples"],
        "sample_molecules_per_s": args.num_samples / sample_s,
        "curves": _curves(args.workdir),
    }
    out = {}
    if os.path.exists(args.out):
        with open(args.out) as f:
            out = json.load(f)
    rows = [r for r in out.get("rows", []) if r.get("row") != args.row] + [row]
    result = {
        "title": "SeqFlow pretrained on MOSES (seqflow_moses)",
        "protocol": ("jaxflows train --config experiments/configs/seqflow_moses.py:ROW; test "
                     "metrics on the first num_test_molecules of the test split (176,074 in "
                     "all; all of them = the run's eval.json); nll_per_token: nats "
                     "per position of the dequantised embedding (a continuous density over 40 "
                     "dims, so it can be negative); recon: clean encode -> sequential decode; "
                     f"{args.num_samples} prior samples (seed 0) for validity, uniqueness and "
                     "novelty against the training split"),
        "columns": ["row", "params", "step", "epochs", "train_wall_time_s",
                    "num_test_molecules", "test_nll_per_token", "recon_token_acc",
                    "recon_molecule_acc", "validity", "uniqueness", "novelty",
                    "sample_molecules_per_s"],
        "rows": rows,
        "paper_config_params": {"guacamol_vocab_185": paper_param_count(185),
                                "moses_vocab": paper_param_count(len(task.vocab))},
        "vocab_size": len(task.vocab), "length": task.length,
        "command": " ".join(shlex.quote(a) for a in [
            "python", "experiments/seqflow_moses.py", *(argv or sys.argv[1:])]),
        "git_commit": git_commit(), "machine": machine_summary(),
        "wall_time_s": time.time() - t0,
    }
    write_json_atomic(args.out, result)
    print(json.dumps({k: v for k, v in row.items() if k != "curves"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
