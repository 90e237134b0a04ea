"""The engine's config schema: every experiment config starts from :func:`base_config`.

An experiment file ``experiments/configs/NAME.py`` defines ``get_config(arg: str)`` which calls
``base_config()``, fills ``config.model`` (model-specific keys, ``name`` picks the registered task)
and overrides engine keys. Only keys that exist in the returned ConfigDict can be overridden from
the command line (``--config.train.batch_size=64``); see :mod:`jaxflows.train.config_loader`.
"""

from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    """Returns the engine defaults; experiment configs override them."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.dtype = "float32"  # matmul dtype ("bfloat16" on accelerators); flow math stays float32

    c.model = ml_collections.ConfigDict()
    c.model.name = ""  # the task's module path, e.g. "jaxflows.models.vae" (TASK inside)

    c.data = ml_collections.ConfigDict()
    c.data.name = "digits"
    c.data.data_dir = ""  # "" -> $JAXFLOWS_DATA_DIR or the user cache
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    c.data.test_split = "test"
    # host-side transforms by name, e.g. ("binarize_eval(seed=777)",) or ("pad_tokens",);
    # see jaxflows.data.source_transforms
    c.data.transforms = ()
    # shapes for `jaxflows info` on machines without the dataset (e.g. ImageNet configs)
    c.data.image_shape = ()
    c.data.num_classes = 0

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 100  # global batch
    c.train.eval_batch_size = 500
    c.train.num_epochs = 10.0  # training length in epochs of the train split ...
    c.train.num_steps = -1  # ... unless num_steps > 0
    c.train.log_every_steps = 50
    c.train.eval_every_epochs = 1.0
    c.train.checkpoint_every_secs = 10.0
    c.train.keep_checkpoints = 2
    c.train.early_stopping_patience = -1  # in evaluations; -1 disables
    c.train.best_metric = ""  # "" -> the task's best_metric (lower is better)
    c.train.progress_bar = True
    c.train.steps_per_dispatch = 1  # >1: run that many steps per jitted call (lax.scan)
    c.train.keep_best_params = True  # keep the best-by-validation params by value

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adam"  # adam | adamw
    c.optim.learning_rate = 1e-3
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.0
    c.optim.schedule = "constant"  # constant | warmup_cosine
    c.optim.warmup_epochs = 0.0
    c.optim.end_lr_factor = 0.0  # cosine decays to learning_rate * end_lr_factor
    c.optim.grad_clip_norm = 0.0  # 0 disables
    c.optim.skip_nonfinite_max = 0  # > 0: skip updates with NaN/inf gradients (that many in a row)
    c.optim.ema_decay = 0.0  # 0 disables EMA of params
    c.optim.grad_accum_steps = 1
    # regexes over parameter paths ("encoder/.*"): matching leaves get no update, no optimiser
    # state and no weight decay (optax.multi_transform) and stay bitwise unchanged
    c.optim.freeze = ()

    # pretrained parts: a list of {"path": workdir or Orbax params checkpoint,
    # "source": subtree there (default "params"), "target": subtree of ours (default "" = all)},
    # applied when a run starts fresh (a resumed run restores its own checkpoint)
    c.init_from = ()

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    # logical axis name -> mesh axis (or None = replicated); models annotate weights with these
    c.sharding_rules = (
        ("batch", ("data", "fsdp")),
        ("embed", "fsdp"),
        ("hidden", "tensor"),
        ("mlp", "tensor"),
        ("heads", "tensor"),
        ("kv", None),
        ("seq", None),
        ("latent", None),
        ("vocab", "tensor"),
    )
    return c


def upgrade_saved_config(saved: dict) -> dict:
    """A ``config.json`` of an older jaxflows in today's schema (``data.eval_binarize_seed >= 0``
    becomes the ``binarize_eval`` transform; a boolean ``model.remat`` becomes the policy name
    ``'full'`` / ``'none'``; short task names resolve by alias)."""
    saved = dict(saved)
    model = dict(saved.get("model", {}))
    if isinstance(model.get("remat"), bool):
        model["remat"] = "full" if model["remat"] else "none"
        saved["model"] = model
    data = dict(saved.get("data", {}))
    seed = data.pop("eval_binarize_seed", None)
    if seed is not None:
        if seed >= 0 and not data.get("transforms"):
            data["transforms"] = [f"binarize_eval(seed={int(seed)})"]
        data.setdefault("transforms", [])
        saved["data"] = data
    optim = dict(saved.get("optim", {}))
    if "freeze" not in optim and optim:
        optim["freeze"] = []
        saved["optim"] = optim
    saved.setdefault("init_from", [])
    return saved
