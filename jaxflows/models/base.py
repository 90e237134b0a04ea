"""The contract between a model and the training engine.

A model file (``jaxflows/models/<name>.py``) defines a :class:`Task` subclass and registers it
with :func:`register`. The engine knows nothing else about the model: it calls ``init`` once
(under ``jax.eval_shape`` first, to derive shardings), ``loss`` inside the jitted train step,
``eval_batch`` inside the jitted eval step, and ``sample`` / ``final_eval`` from the CLI.

Batches are dicts of arrays with a leading global batch axis ``B``:
  * ``image``: uint8 ``[B, H, W, C]`` raw pixels (0..255);
  * ``label``: int32 ``[B]``;
  * ``mask``: float32 ``[B]``, eval batches only: 1 for real examples, 0 for padding.
Pixel transforms (binarization, dequantisation) happen inside the model's jitted functions,
from the rng the engine passes (``fold_in(rng, step)``), see :mod:`jaxflows.data.transforms`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import ml_collections

PyTree = Any
Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class DataInfo:
    """What a task may know about its data: image shape, classes, split sizes."""

    image_shape: tuple[int, int, int]
    num_classes: int
    num_train: int
    num_eval: int = 0


class Task:
    """Base class: a model = Flax modules + its loss + its evaluation + its sampler.

    Subclasses receive the full config and the :class:`DataInfo` at construction.
    """

    def __init__(self, config: ml_collections.ConfigDict, data_info: DataInfo):
        self.config = config
        self.data_info = data_info

    # --- required -----------------------------------------------------------------------
    def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> PyTree:
        """Returns the params pytree (leaves may be ``nn.LogicallyPartitioned`` boxes)."""
        raise NotImplementedError

    def loss(
        self, params: PyTree, batch: dict[str, jax.Array], rng: jax.Array, step: jax.Array
    ) -> tuple[jax.Array, Metrics]:
        """Training objective (scalar, minimised) and scalar metrics for logging."""
        raise NotImplementedError

    def eval_batch(
        self, params: PyTree, batch: dict[str, jax.Array], rng: jax.Array
    ) -> Metrics:
        """Per-example metrics ``{name: [B]}``; the engine averages them using ``batch['mask']``."""
        raise NotImplementedError

    # --- optional -----------------------------------------------------------------------
    def sample(self, params: PyTree, rng: jax.Array, num: int, **kwargs) -> jax.Array:
        """Returns ``num`` samples as float32 images ``[num, H, W, C]`` in [0, 1]."""
        raise NotImplementedError(f"{type(self).__name__} has no sampler")

    def final_eval(
        self, params: PyTree, batches: Callable[[], Any], rng: jax.Array
    ) -> dict[str, float]:
        """Extra test-set metrics for ``jaxflows eval`` (e.g. importance-sampled NLL).

        ``batches()`` returns a fresh iterable of global eval batches (with ``mask``).
        The default returns nothing; the engine always adds the ``eval_batch`` means. An
        optional ``per_example`` entry (a dict of arrays) is saved to
        ``WORKDIR/eval_per_example.npz`` rather than to eval.json.
        """
        del params, batches, rng
        return {}

    #: name of the validation metric used for best-checkpoint and early stopping
    best_metric: str = "loss"


_REGISTRY: dict[str, type[Task]] = {}


def register(name: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator: ``@register('vae')`` makes ``config.model.name='vae'`` build this task."""

    def deco(cls: type[Task]) -> type[Task]:
        _REGISTRY[name] = cls
        return cls

    return deco


def build_task(config: ml_collections.ConfigDict, data_info: DataInfo) -> Task:
    """Instantiates the task named by ``config.model.name``."""
    import jaxflows.models  # noqa: F401  (imports every model file so they register)

    name = config.model.name
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown model {name!r}; registered models: {', '.join(sorted(_REGISTRY))}"
        )
    return _REGISTRY[name](config, data_info)
