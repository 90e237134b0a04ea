"""Models: one file per method. Importing this package registers every task."""

from jaxflows.models import tarflow, vae  # noqa: F401  (registers 'tarflow' and 'vae')
from jaxflows.models.base import DataInfo, Task, build_task, register

__all__ = ["DataInfo", "Task", "build_task", "register"]
