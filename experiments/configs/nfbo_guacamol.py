"""NF-BO on Guacamol (Lee et al., ICLR 2025, Fig. 8-10; official code mlvlab/NFBO).

Run one row with ``jaxflows bo --config experiments/configs/nfbo_guacamol.py:ROW --workdir W``
(``--config.method=lsbo``, ``--config.seed=1``, ... override keys); every key and its meaning:
``jaxflows.bo.config.default_config``. All tasks × methods × seeds:
``python experiments/nfbo_guacamol.py``.

Rows (``TASK`` is one of NF-BO's seven: adip, med2, osmb, pdop, rano, valt, zale):

  TASK: the paper's small setting, 100 initial molecules + 500 oracle calls; N_TR = 5 trust
    regions, q = 10 per region, fine-tuning every 10 new calls, anchor temperature 0.01, TACS
    tau = 400 (README command: ``acq_topk=5 acq_bsz=10 train_oracle=10 temperature=0.01
    dacs_temp=400``). SeqFlow: ``runs/seqflow_cpu`` (``jaxflows train --config
    experiments/configs/seqflow_moses.py:cpu --workdir runs/seqflow_cpu --no_eval``, half an
    hour on 2 cores, bitwise repeatable on a CPU), the CPU-sized model;
    the paper's pretrained 1.27M-molecule Guacamol checkpoint is not available here. Runs on a
    CPU, so Thompson sampling draws from 10,000 Sobol candidates per iteration (2,000 per trust
    region) where the released code's ``min(50000, 200 D)`` gives 50,000 (10,000 per region);
    every method uses the same count (``--config.cand_max=50000`` restores it). Joint samples
    over a region's 2,000 candidates are pathwise (random Fourier features plus the exact data
    update, :mod:`jaxflows.bo.thompson`) above 800 candidates, the size above which the
    released code's gpytorch stops using Cholesky for posterior samples
    (``max_cholesky_size``) and switches to an approximate root decomposition; exact
    ``[2000, 2000]`` Cholesky samples took 5-7 of the 8-10 seconds of an iteration here.
  TASK_10k / TASK_70k: 10,000 initial molecules + 10,000 / 70,000 calls; N_TR = 10, q = 100,
    fine-tuning every 200 calls. SeqFlow: ``runs/seqflow_paper`` (the paper-size
    ``seqflow_moses.py:paper`` row). Meant for accelerators.
  smoke: a tiny SeqFlow with random parameters (no pretraining; its vocabulary and length come
    from 24 embedded initial molecules), 60 oracle calls on adip, 3 x 4 picks per iteration.
    About a minute on a CPU; it checks the machinery, not the method.

Initial data: the paper starts from the first rows of LOL-BO's
``guacamol_train_data_first_20k.csv``, which is not available here. We draw the initial molecules
from the ``moses_selfies`` training split with a fixed seed (``init.seed = 0``: the same molecules
for every method and BO seed) and score them with our Guacamol objectives
(:mod:`jaxflows.bo.initial`). Valsartan SMARTS (valt) scores almost every molecule 0 (none of
the 100 drawn ones; about 1 in 30,000 MOSES training molecules has the SMARTS substructure, and
those score 1e-8 to 1e-4); for the 100-point setting the paper adds two molecules with nonzero
score to the initial set, so the valt row scores up to 200,000 further drawn molecules, in
draw order and in chunks, until it has the first two with score > 0, and adds them (if the pool
held fewer, fewer would be added, possibly none; ``summary.json`` records
``initial.extra_added``). Which two molecules the paper added is not published.
"""

from __future__ import annotations

import ml_collections

from jaxflows.bo.config import default_config

TASKS = ("adip", "med2", "osmb", "pdop", "rano", "valt", "zale")
ROWS = (*TASKS, *(f"{t}_10k" for t in TASKS), *(f"{t}_70k" for t in TASKS), "smoke")

#: the smoke row's initial molecules (small drug-like molecules, MOSES-style)
SMOKE_SMILES = (
    "CCOC(=O)c1ccc(N)cc1", "CC(=O)Nc1ccc(O)cc1", "Cc1ccc(S(N)(=O)=O)cc1",
    "COc1ccc(CCN)cc1", "O=C(O)c1ccccc1O", "CN1CCC(O)CC1", "Clc1ccc(Cl)cc1",
    "CC(C)Cc1ccc(C(C)C(=O)O)cc1", "NC(=O)c1cccnc1", "CCN(CC)C(=O)c1ccccc1",
    "COC(=O)C1CCCN1", "Cc1cc(C)nc(N)n1", "OCc1ccco1", "CC1=CC(=O)CC(C)(C)C1",
    "O=C1CCCN1C", "c1ccc2[nH]ccc2c1", "CCOc1ccccc1C(N)=O", "Fc1ccc(CN)cc1",
    "CS(=O)(=O)c1ccc(C)cc1", "CC(C)(C)OC(=O)N1CCNCC1", "N#Cc1ccc(O)cc1",
    "O=C(Nc1ccccc1)c1ccco1", "CCCCc1ccc(C(=O)O)cc1", "Cn1cnc2c1c(=O)n(C)c(=O)n2C",
)


def get_config(arg: str = "adip") -> ml_collections.ConfigDict:
    """The config of row ``arg`` (see the module docstring)."""
    if arg not in ROWS:
        raise ValueError(f"unknown row {arg!r} for nfbo_guacamol; valid rows: "
                         f"{', '.join(ROWS)}")
    c = default_config()
    c.method = "nfbo"
    c.seed = 0
    c.anchor_temperature = 0.01
    c.tacs_temperature = 400.0
    task, _, size = arg.partition("_")
    if arg == "smoke":
        c.task = "adip"
        c.seqflow_workdir = ""
        c.init.smiles = SMOKE_SMILES
        c.budget = 60
        c.num_anchors, c.batch_per_anchor = 3, 4
        c.train_oracle = 10
        c.top_k, c.num_recent = 40, 5
        c.cand_max = 300
        c.gp.init_steps, c.gp.refit_steps = 60, 20
        c.finetune.batch_size = 16
        return c
    c.task = task
    if not size:                      # 100 + 500
        c.seqflow_workdir = "runs/seqflow_cpu"
        c.init.num, c.budget = 100, 500
        c.num_anchors, c.batch_per_anchor = 5, 10
        c.train_oracle = 10
        c.cand_max = 10_000           # CPU budget (see the module docstring)
        c.gp.exact_max_candidates = 800   # gpytorch's max_cholesky_size (see the docstring)
        if task == "valt":
            c.init.extra_nonzero = 2
            c.init.extra_pool = 200_000
    else:                             # 10K + 10K / 70K
        c.seqflow_workdir = "runs/seqflow_paper"
        c.init.num = 10_000
        c.budget = 10_000 if size == "10k" else 70_000
        c.num_anchors, c.batch_per_anchor = 10, 100
        c.train_oracle = 200
    return c
