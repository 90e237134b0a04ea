"""The contract between a model and the training engine: :class:`DataInfo` and :class:`Task`.

A task module (``jaxflows.models.vae``, or a user's ``mylab.mytask``) defines a :class:`Task`
subclass and names it in a module attribute ``TASK``; ``config.model.name`` is that module's
import path (``'module'`` or ``'module:ClassName'``). The engine imports it on demand
(:func:`load_task_class`), so importing :mod:`jaxflows.train` imports no model.

What the engine calls, and where:

* ``example_spec()``: one example's structure, a dict of ``jax.ShapeDtypeStruct`` without the
  batch axis. Init, ``jaxflows info`` and the batch shardings come from it; batches hold exactly
  these keys (plus ``mask`` in evaluation), each with a leading global batch axis ``B``.
* ``init(rng, batch)`` once (under ``jax.eval_shape`` first, to derive shardings), with a batch
  of zeros shaped like ``example_spec()``;
* ``loss(params, batch, rng, step)`` inside the jitted train step;
* ``eval_batch(params, batch, rng)`` inside the jitted eval step (per-example metrics);
* ``final_eval(params, batches, rng)`` from ``jaxflows eval``;
* ``sample(params, rng, num, **options)`` and ``write_samples(samples, path)`` from
  ``jaxflows sample``; ``sample_options`` lists the options (``--config.sample.KEY=VALUE``) with
  their defaults, and an option the task does not have is refused with one line.

Random draws come from the rng the engine passes (``fold_in(rng, step)``); dataset-specific
host-side preprocessing (eval binarisation, tokenisation, padding) is a data transform named in
``config.data.transforms`` (:mod:`jaxflows.data.source_transforms`), not task or engine code.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxflows.errors import ConfigError, UserError

PyTree = Any
Metrics = dict[str, jax.Array]
ElementSpec = dict[str, jax.ShapeDtypeStruct]


def image_element_spec(image_shape, num_classes: int = 0) -> ElementSpec:
    """``{'image': uint8 [H, W, C], 'label': int32 []}`` (label only when ``num_classes``)."""
    spec = {"image": jax.ShapeDtypeStruct(tuple(int(d) for d in image_shape), jnp.uint8)}
    if num_classes:
        spec["label"] = jax.ShapeDtypeStruct((), jnp.int32)
    return spec


@dataclasses.dataclass(frozen=True)
class DataInfo:
    """What a task may know about its data.

    Attributes:
      element_spec: one example's fields after the config's data transforms
        (``{name: jax.ShapeDtypeStruct}``, no batch axis).
      num_train, num_eval: sizes of the training and validation splits.
      num_classes: class count of a ``label`` field (0 = none).
      metadata: dataset facts saved with it (e.g. a token vocabulary), read-only.
    """

    element_spec: ElementSpec
    num_train: int
    num_eval: int = 0
    num_classes: int = 0
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def for_images(cls, image_shape, num_classes: int, num_train: int,
                   num_eval: int = 0) -> DataInfo:
        """An image dataset: ``image`` uint8 ``[H, W, C]`` (and ``label`` int32 if classes)."""
        return cls(image_element_spec(image_shape, num_classes), num_train, num_eval,
                   int(num_classes))

    @property
    def image_shape(self) -> tuple[int, ...]:
        """``(H, W, C)`` of the ``image`` field; a ConfigError if the data has none."""
        if "image" not in self.element_spec:
            raise ConfigError(f"this model needs an 'image' field; the data has "
                              f"{sorted(self.element_spec)}")
        return tuple(self.element_spec["image"].shape)


def batch_of(spec: PyTree, batch_size: int, *, sharding=None) -> PyTree:
    """``ShapeDtypeStruct``s of a batch of ``batch_size`` examples shaped like ``spec``."""
    return jax.tree.map(
        lambda s: jax.ShapeDtypeStruct((batch_size, *s.shape), s.dtype, sharding=sharding), spec)


def masked_mean(values: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Mean of ``values [B]`` over the rows where ``mask [B]`` is nonzero (all rows if None)."""
    if mask is None:
        return jnp.mean(values)
    mask = mask.astype(jnp.float32)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def to_host(a: Any) -> np.ndarray:
    """A (possibly multi-process, sharded) array as a full numpy array on every process."""
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(a, tiled=True))
    return np.asarray(a)


def map_in_chunks(fn: Callable[[np.ndarray], Any], array, chunk: int) -> np.ndarray:
    """``fn`` over ``array [N, ...]`` in chunks of ``chunk`` rows, the last one padded with
    zeros so ``fn`` (a jitted function) sees one shape; returns the rows' outputs concatenated
    as numpy (``fn``'s output has a leading axis of ``chunk``)."""
    array = np.asarray(array)
    chunk = max(1, int(chunk))
    if not len(array):  # the output's trailing shape and dtype, with no rows
        empty = np.zeros((chunk, *array.shape[1:]), array.dtype)
        return np.asarray(jax.device_get(fn(empty)))[:0]
    out = []
    for s in range(0, len(array), chunk):
        part = array[s:s + chunk]
        pad = chunk - len(part)
        if pad:
            part = np.concatenate([part, np.zeros((pad, *part.shape[1:]), part.dtype)])
        out.append(np.asarray(jax.device_get(fn(part)))[:chunk - pad])
    return np.concatenate(out)


def zeros_batch(spec: PyTree, batch_size: int) -> PyTree:
    """A batch of zeros shaped like ``spec`` with a leading axis of ``batch_size``."""
    return jax.tree.map(lambda s: jnp.zeros((batch_size, *s.shape), s.dtype), spec)


class Task:
    """Base class: a model = Flax modules + its loss + its evaluation + its sampler.

    Subclasses receive the full config and the :class:`DataInfo` at construction.
    """

    #: name of the validation metric used for best-checkpoint and early stopping (lower wins)
    best_metric: str = "loss"
    #: ``jaxflows sample`` options (``--config.sample.KEY=VALUE``) -> default value; the default
    #: fixes the type a command-line value is parsed to
    sample_options: ClassVar[dict[str, Any]] = {}

    def __init__(self, config: ml_collections.ConfigDict, data_info: DataInfo):
        self.config = config
        self.data_info = data_info

    # --- structure ----------------------------------------------------------------------
    def example_spec(self) -> ElementSpec:
        """One example's fields (no batch axis). Default: every array field of the data."""
        return dict(self.data_info.element_spec)

    def compiler_options(self) -> dict[str, Any]:
        """XLA options the engine compiles this task's train and eval steps with (``jax.jit``'s
        ``compiler_options``; default none). See :mod:`jaxflows.train.xla_options`."""
        return {}

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
    def sample(self, params: PyTree, rng: jax.Array, num: int, **options) -> Any:
        """``num`` samples as the task's own artifact (images, SMILES, points)."""
        raise UserError(f"{type(self).__name__} has no sampler")

    def write_samples(self, samples: Any, path: str) -> str:
        """Writes ``sample``'s artifact to ``path`` (grid PNG, text file, scatter PNG)."""
        raise UserError(f"{type(self).__name__} cannot write samples")

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


#: short names of the built-in tasks (and of workdirs trained before tasks had module paths)
ALIASES = {
    "vae": "jaxflows.models.vae",
    "tarflow": "jaxflows.models.tarflow_task",
    "starflow": "jaxflows.models.starflow_task",
}


def resolve_task_name(name: str) -> str:
    """The module path ``config.model.name`` stands for (built-in short names expanded)."""
    return ALIASES.get(name, name)


def load_task_class(name: str) -> type[Task]:
    """Imports the task named ``'package.module'`` (its ``TASK`` attribute) or
    ``'package.module:ClassName'``; a ConfigError names what is missing."""
    if not name:
        raise ConfigError("config.model.name is empty",
                          hint="set it to a task module, e.g. jaxflows.models.vae")
    path, _, attr = resolve_task_name(name).partition(":")
    try:
        module = importlib.import_module(path)
    except ModuleNotFoundError as e:
        if e.name and path.startswith(e.name):
            raise ConfigError(f"config.model.name={name!r}: no module {e.name!r}",
                              hint="name an importable task module, e.g. jaxflows.models.vae, "
                                   "or put yours on PYTHONPATH") from None
        raise
    attr = attr or "TASK"
    cls = getattr(module, attr, None)
    if cls is None:
        raise ConfigError(f"config.model.name={name!r}: module {path} has no {attr}",
                          hint="a task module names its Task subclass in TASK = MyTask")
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ConfigError(f"config.model.name={name!r}: {path}.{attr} is not a "
                          "jaxflows.train.task.Task subclass")
    return cls


def build_task(config: ml_collections.ConfigDict, data_info: DataInfo) -> Task:
    """Instantiates the task named by ``config.model.name``."""
    return load_task_class(config.model.name)(config, data_info)


def check_example_spec(spec: Any, where: str) -> ElementSpec:
    """Validates a task's ``example_spec()``: a non-empty dict of ShapeDtypeStructs."""
    if not isinstance(spec, Mapping) or not spec:
        raise ConfigError(f"{where}.example_spec() must return a non-empty dict of "
                          f"jax.ShapeDtypeStruct, got {type(spec).__name__}")
    for k, v in spec.items():
        if not isinstance(v, jax.ShapeDtypeStruct):
            raise ConfigError(f"{where}.example_spec()[{k!r}] is a {type(v).__name__}, "
                              "not a jax.ShapeDtypeStruct")
        if np.dtype(v.dtype).kind in "OSU":
            raise ConfigError(f"{where}.example_spec()[{k!r}] has dtype {v.dtype}: strings "
                              "cannot enter a jitted step (tokenise them in a data transform)")
    return dict(spec)
