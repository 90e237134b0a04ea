"""The NF-BO loop's config: every key with its default (the released NF-BO values), and checks.

Experiment files (``experiments/configs/nfbo_guacamol.py``) start from :func:`default_config`
and change rows; :func:`validate` runs before anything is loaded or compiled and raises one
:class:`~jaxflows.errors.ConfigError` line naming the bad key. Defaults follow mlvlab/NFBO
(``config/optimizer.yaml`` and the README's 500-call command) unless a comment says otherwise.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from jaxflows.bo.surrogate import SurrogateConfig
from jaxflows.bo.trust_region import RULES
from jaxflows.errors import ConfigError

#: ``config.method``: what each iteration does (see :mod:`jaxflows.bo.loop`)
METHODS = ("random", "lsbo", "nfbo_no_tacs", "nfbo")

#: keys that may change when a workdir is resumed (everything else must match config.json)
RESUMABLE_KEYS = ("budget", "max_iterations", "progress_bar", "checkpoint_every")

#: surrogate keys the loop sets itself (the padded data size is derived from top_k + recent)
_DERIVED_SURROGATE = ("exact_pad_multiple", "svgp_pad_multiple")


def default_config() -> ml_collections.ConfigDict:
    """All keys of the loop with their defaults (the paper's 100 + 500 Guacamol setting)."""
    c = ml_collections.ConfigDict()
    c.task = "adip"                 # Guacamol task id (jaxflows.chem.guacamol.TASKS)
    c.method = "nfbo"               # one of METHODS
    c.seed = 0                      # every random draw is a function of (seed, iteration, use)
    c.budget = 500                  # oracle calls after the initial data (unique new molecules)
    c.seqflow_workdir = ""          # a trained seqflow_moses workdir; "" = tiny random SeqFlow
    c.seqflow_params = "eval"       # "eval": best, else EMA, else latest; "latest": live params
    c.data_dir = ""                 # moses_selfies location; "" = the SeqFlow workdir's own

    c.init = ml_collections.ConfigDict()
    c.init.num = 100                # molecules drawn from the moses_selfies split
    c.init.seed = 0                 # the draw (the same initial data for every BO seed)
    c.init.split = "train"
    c.init.smiles = ()              # explicit initial SMILES instead of a draw (smoke, tests)
    c.init.extra_nonzero = 0        # add this many molecules with score > 0 (paper: 2 for valt)
    c.init.extra_pool = 20000       # ... searched for in this many further drawn molecules

    c.num_anchors = 5               # N_TR (code: acq_topk)
    c.batch_per_anchor = 10         # q per trust region (code: acq_bsz)
    c.anchor_temperature = 0.01     # softmax over min-max normalised scores (code: temperature)
    c.tacs_temperature = 400.0      # tau of TACS (code: dacs_temp)
    c.perturb_prob = 0.1            # base per-dim perturbation probability (code: prob_perturb)
    c.force_one = False             # LOL-BO forces >= 1 perturbed dim; released NF-BO does not
    c.cand_max = 50000              # n_cand = min(cand_max, max(2000, 200 D)), split over anchors
    c.top_k = 1000                  # k: top points kept for the GP and fine-tuning
    c.num_recent = 10               # newd: the most recent points added to them
    c.train_oracle = 10             # fine-tune SeqFlow every this many new oracle calls
    c.max_iterations = 0            # 0: 20 * ceil(budget / (N_TR q)) + 10 (a guard)
    c.checkpoint_every = 1          # iterations between checkpoints (the last one always saves)
    c.progress_bar = True
    c.decode_batch = 0              # molecules per jitted encode/decode call; 0: N_TR * q

    c.finetune = ml_collections.ConfigDict()
    c.finetune.epochs = 1
    c.finetune.learning_rate = 1e-3
    c.finetune.batch_size = 32
    c.finetune.grad_clip = 1.0
    c.finetune.reencode = True      # re-encode D_tr after each fine-tune (paper Alg. 1, released
    #                                 code); False keeps each point's proposing latent (ablation)

    c.gp = ml_collections.ConfigDict()
    c.gp.refit_every_iteration = True   # paper Alg. 1; the released code fits once (False)
    c.gp.init_steps = 200           # Adam steps of the first fit (exact GP; ours)
    c.gp.refit_steps = 50           # steps of each later fit, warm-started (ours)
    c.gp.warm_start = True          # later fits continue from the previous hyperparameters
    c.gp.exact_max_candidates = 3000    # joint samples: exact covariance up to this many
    c.gp.num_features = 4096        # random Fourier features of pathwise sampling above it
    c.gp.observation_noise = True   # sample y, as botorch's posterior of GPModelDKL does
    c.gp.surrogate = ml_collections.ConfigDict(
        {f.name: f.default for f in dataclasses.fields(SurrogateConfig)
         if f.name not in _DERIVED_SURROGATE})

    c.tr = ml_collections.ConfigDict()
    c.tr.rule = "duplicate_ratio"   # released NF-BO; "turbo" = LOL-BO's success/failure rule
    c.tr.length = 0.8
    c.tr.length_min = 0.5**7
    c.tr.length_max = 1.6
    c.tr.success_tolerance = 10
    c.tr.failure_tolerance = 32

    # the SeqFlow built when seqflow_workdir is "" (random parameters, vocabulary and L from the
    # initial molecules): for the smoke row and tests only
    c.tiny_model = ml_collections.ConfigDict(dict(
        features=8, hidden=16, lstm_layers=1, num_flow_layers=2, num_couplings=2,
        coupling_hidden=16, dropout=0.0, dequant_tries=10, param_seed=0))
    return c


def _positive(c, *keys):
    for key in keys:
        node = c
        *path, leaf = key.split(".")
        for p in path:
            node = node[p]
        v = node[leaf]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
            raise ConfigError(f"config.{key} must be a positive number, got {v!r}")


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks every key of ``config`` against :func:`default_config` (unknown or missing keys,
    types, ranges); raises :class:`ConfigError` naming the first problem."""
    from jaxflows.chem.guacamol import TASKS
    from jaxflows.train.config_loader import _all_keys

    known = set(_all_keys(default_config()))
    have = set(_all_keys(config))
    unknown = sorted(have - known)
    if unknown:
        raise ConfigError(f"unknown BO config keys {unknown[:5]}",
                          hint="start the config from jaxflows.bo.config.default_config()")
    missing = sorted(known - have)
    if missing:
        raise ConfigError(f"BO config lacks keys {missing[:5]}",
                          hint="start the config from jaxflows.bo.config.default_config()")
    if config.method not in METHODS:
        raise ConfigError(f"config.method={config.method!r}; valid: {', '.join(METHODS)}")
    if config.task not in TASKS:
        raise ConfigError(f"config.task={config.task!r}; valid: {', '.join(TASKS)}")
    if config.seqflow_params not in ("eval", "latest"):
        raise ConfigError(f"config.seqflow_params={config.seqflow_params!r}; valid: eval, "
                          "latest")
    if config.tr.rule not in RULES:
        raise ConfigError(f"config.tr.rule={config.tr.rule!r}; valid: {', '.join(RULES)}")
    _positive(config, "budget", "num_anchors", "batch_per_anchor", "cand_max", "top_k",
              "train_oracle", "checkpoint_every", "finetune.epochs", "finetune.learning_rate",
              "finetune.batch_size", "finetune.grad_clip", "gp.init_steps",
              "gp.exact_max_candidates", "gp.num_features", "tacs_temperature")
    for key in ("num_recent", "max_iterations", "decode_batch", "init.extra_nonzero",
                "init.extra_pool", "gp.refit_steps", "anchor_temperature"):
        node, leaf = (config, key) if "." not in key else (config[key.split(".")[0]],
                                                          key.split(".")[1])
        if node[leaf] < 0:
            raise ConfigError(f"config.{key} must be >= 0, got {node[leaf]!r}")
    if not 0.0 < config.perturb_prob <= 1.0:
        raise ConfigError(f"config.perturb_prob must be in (0, 1], got {config.perturb_prob}")
    if not config.init.smiles and config.init.num < config.num_anchors:
        raise ConfigError(f"config.init.num={config.init.num} must be >= num_anchors="
                          f"{config.num_anchors}")
    per_anchor = config.cand_max // config.num_anchors
    if config.method != "random" and per_anchor < config.batch_per_anchor:
        raise ConfigError(f"cand_max // num_anchors = {per_anchor} candidates per trust region "
                          f"is fewer than batch_per_anchor={config.batch_per_anchor}")
    try:
        surrogate_config(config, 64)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config.gp.surrogate: {e}") from None
    if not 0 < config.tr.length_min <= config.tr.length <= config.tr.length_max:
        raise ConfigError("config.tr needs 0 < length_min <= length <= length_max, got "
                          f"{config.tr.length_min}, {config.tr.length}, {config.tr.length_max}")


def surrogate_config(config: ml_collections.ConfigDict, pad: int) -> SurrogateConfig:
    """The :class:`SurrogateConfig` of ``config.gp.surrogate`` with the data padded to ``pad``
    rows (one compiled fit for every data size up to ``pad``)."""
    fields = dict(config.gp.surrogate.to_dict())
    fields["hidden"] = tuple(fields["hidden"])
    return SurrogateConfig(**fields, exact_pad_multiple=pad, svgp_pad_multiple=pad)


def max_iterations(config: ml_collections.ConfigDict) -> int:
    """``config.max_iterations``, or the guard ``20 * ceil(budget / (N_TR q)) + 10`` when 0."""
    if config.max_iterations:
        return int(config.max_iterations)
    per = config.num_anchors * config.batch_per_anchor
    return 20 * -(-config.budget // per) + 10
