"""Models: one file per method. Importing this package registers every task."""

import importlib
import logging

from jaxflows.models.base import DataInfo, Task, build_task, register

for _name in ("vae", "tarflow"):
    try:
        importlib.import_module(f"jaxflows.models.{_name}")
    except ModuleNotFoundError as e:  # a model file not written yet
        if e.name != f"jaxflows.models.{_name}":
            raise
        logging.debug("model %s not available", _name)

__all__ = ["DataInfo", "Task", "build_task", "register"]
