"""ml-tarflow's training recipe, shared by the ``tarflow_*`` experiment configs.

Not a config file itself (it has no ``get_config``): the configs next to it import it as
``from tarflow_recipe import official_recipe_config`` (the config loader puts a config file's own
directory on ``sys.path`` while loading it).
"""

import ml_collections

from jaxflows.train.config import base_config


def official_recipe_config(learning_rate: float) -> ml_collections.ConfigDict:
    """Engine config with ml-tarflow's recipe: AdamW (0.9, 0.95), weight decay 1e-4, one warmup
    epoch, cosine decay to 1e-6, and the ``layers`` logical axis (scanned Transformer layers)."""
    c = base_config()
    c.sharding_rules = tuple(c.sharding_rules) + (("layers", None),)
    c.optim.name = "adamw"
    c.optim.b1, c.optim.b2 = 0.9, 0.95
    c.optim.weight_decay = 1e-4
    c.optim.schedule = "warmup_cosine"
    c.optim.warmup_epochs = 1.0
    c.optim.learning_rate = learning_rate
    c.optim.end_lr_factor = 1e-6 / learning_rate
    return c
