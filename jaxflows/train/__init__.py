"""The training engine: config validation, mesh and sharding rules, jitted steps, Orbax
checkpoints with exact resume, metrics. It knows nothing about any single model; models plug in
through :class:`jaxflows.models.base.Task`."""

from jaxflows.train.config import base_config
from jaxflows.train.config_loader import apply_overrides, load_config
from jaxflows.train.loop import build, evaluate, train

__all__ = ["apply_overrides", "base_config", "build", "evaluate", "load_config", "train"]
