"""Named offline datasets: build them once, then read them as random-access sources.

Known names (:data:`DATASETS`): ``mnist`` (50k/10k/10k, uint8 [28, 28, 1]), ``moses`` (SMILES
text), ``moses_selfies`` (SELFIES token ids with the vocabulary in the dataset's metadata),
``digits`` (scikit-learn 8x8 digits, uint8 [8, 8, 1], the embedded default) and
``toy2d/<density>`` (the six 2-D densities of the flow-prior paper, float32 [2] with their
log-density). ``digits`` and ``toy2d/*`` are embedded: generated locally and prepared on first
use. See the builders in :mod:`jaxflows.data.builders` for the exact sources and split rules.

Typical use::

    prepare("mnist")                         # once per machine (idempotent)
    src = load_source("mnist", "train")      # len(src), src[i] -> {'image', 'label'}
    src = FixedBinarizedSource(src)          # a fixed Bernoulli draw of the split, in {0, 255}

Besides the names above, any dataset already prepared by TFDS in the data dir (a folder
``DATA_DIR/NAME[/CONFIG]/VERSION`` with ArrayRecord files, e.g. ``cifar10``) is readable by its
TFDS name with :func:`load_source` and :func:`dataset_info`; :func:`prepare` only builds the
names above.
"""

from __future__ import annotations

import dataclasses
import fcntl
import importlib
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxflows.data.sources import default_data_dir
from jaxflows.errors import DatasetNotPreparedError, UserError

log = logging.getLogger(__name__)

__all__ = [
    "DATASETS",
    "FixedBinarizedSource",
    "InMemorySource",
    "dataset_info",
    "default_data_dir",
    "load_source",
    "prepare",
]


@dataclasses.dataclass(frozen=True)
class _Spec:
    module: str
    cls: str
    splits: dict[str, int]  # expected sizes of the real data
    #: generated locally in seconds (no download): prepared on first use
    embedded: bool = False
    builder_kwargs: tuple[tuple[str, Any], ...] = ()  # e.g. (("config", "moons"),)


DATASETS: dict[str, _Spec] = {
    "mnist": _Spec(
        "jaxflows.data.builders.mnist", "JaxflowsMnist",
        {"train": 50000, "validation": 10000, "test": 10000},
    ),
    "moses": _Spec(
        "jaxflows.data.builders.moses", "JaxflowsMoses",
        {"train": 1574663, "validation": 10000, "test": 176074},
    ),
    "digits": _Spec(
        "jaxflows.data.builders.digits", "JaxflowsDigits",
        {"train": 1397, "validation": 200, "test": 200}, embedded=True,
    ),
    # MOSES rows as SELFIES token ids (needs rdkit + selfies); sizes after dropping
    "moses_selfies": _Spec(
        "jaxflows.data.builders.moses_selfies", "JaxflowsMosesSelfies",
        {"train": 1574663, "validation": 10000, "test": 176074},
    ),
    # the 2-D toy densities of arXiv 2506.05240 (jaxflows.data.toy2d), one TFDS config each
    **{
        f"toy2d/{_name}": _Spec(
            "jaxflows.data.builders.toy2d", "JaxflowsToy2d",
            {"train": 50000, "validation": 5000, "test": 5000}, embedded=True,
            builder_kwargs=(("config", _name),),
        )
        for _name in ("gmm5", "grid", "moons", "rings", "spiral", "swissroll")
    },
}


def _resolve_dir(data_dir: str | os.PathLike | None) -> str:
    return os.fspath(data_dir) if data_dir is not None else default_data_dir()


def _unknown(name: str) -> UserError:
    return UserError(
        f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}",
        hint="or a TFDS dataset already prepared as ArrayRecord in the data dir",
    )


def _builder(name: str, data_dir: str, **kwargs):
    spec = DATASETS[name]
    cls = getattr(importlib.import_module(spec.module), spec.cls)
    return cls(data_dir=data_dir, **dict(spec.builder_kwargs), **kwargs)


def _is_prepared(builder) -> bool:
    # Check the file first: TFDS logs a warning when asked about a missing variant folder.
    info = os.path.join(os.fspath(builder.data_dir), "dataset_info.json")
    return os.path.exists(info) and builder.is_prepared()


def _split_order(splits: Sequence[str]) -> list[str]:
    order = {"train": 0, "validation": 1, "test": 2}
    return sorted(splits, key=lambda s: (order.get(s, 3), s))


def _split_sizes(builder) -> dict[str, int]:
    splits = builder.info.splits
    return {s: int(splits[s].num_examples) for s in _split_order(list(splits.keys()))}


def _prepare_hint(name: str, data_dir: str) -> str:
    hint = f"run `jaxflows data prepare {name}"
    if os.path.abspath(data_dir) != os.path.abspath(default_data_dir()):
        hint += f" --data_dir {data_dir}"
    return hint + "`"


def prepare(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    source_path: str | None = None,
) -> dict[str, int]:
    """Build dataset ``name`` in ``data_dir`` (default :func:`default_data_dir`) if needed.

    Idempotent: an already prepared dataset is reused; concurrent calls on one machine are
    serialised with a file lock in ``data_dir``. ``source_path`` overrides the raw file
    (see the builders). Returns the split sizes ``{split: num_examples}``
    (train, validation, test order).
    """
    if name not in DATASETS:
        raise _unknown(name)
    data_dir = _resolve_dir(data_dir)
    builder = _builder(name, data_dir, source_path=source_path)
    if _is_prepared(builder):
        log.info("dataset %s already prepared in %s", name, builder.data_dir)
        return _split_sizes(builder)
    os.makedirs(data_dir, exist_ok=True)
    # Several processes on one machine may prepare at once: one builds, the others wait.
    with open(os.path.join(data_dir, f".prepare-{name.replace('/', '_')}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        builder = _builder(name, data_dir, source_path=source_path)
        if not _is_prepared(builder):
            builder.download_and_prepare()
    return _split_sizes(builder)


def require_prepared(name: str, data_dir: str | os.PathLike | None = None,
                     why: str = "") -> None:
    """Raises :class:`DatasetNotPreparedError` (with the command that prepares it, and ``why``
    it is needed now) unless dataset ``name`` is prepared in ``data_dir``; an embedded dataset
    prepares itself."""
    try:
        _prepared_builder(name, data_dir)
    except DatasetNotPreparedError as e:
        if not why:
            raise
        raise DatasetNotPreparedError(f"{e.args[0]}: {why}", hint=e.hint) from None


def _tfds_builder(name: str, data_dir: str):
    """A read-only TFDS builder for ``name`` prepared in ``data_dir``, or None."""
    base = name.split(":")[0].split("/")[0]
    if not base or not os.path.isdir(os.path.join(data_dir, base)):
        return None
    try:
        from tensorflow_datasets.core import read_only_builder

        return read_only_builder.builder_from_files(name, data_dir=data_dir)
    except Exception as e:  # noqa: BLE001 - any failure means "not available here"
        log.info("no prepared TFDS dataset %s in %s: %s", name, data_dir, e)
        return None


def _prepared_builder(name: str, data_dir: str | os.PathLike | None):
    data_dir = _resolve_dir(data_dir)
    if name in DATASETS:
        builder = _builder(name, data_dir)
        if not _is_prepared(builder) and DATASETS[name].embedded:
            log.warning("preparing the embedded dataset %s in %s (first use)", name, data_dir)
            prepare(name, data_dir)
            builder = _builder(name, data_dir)
        if not _is_prepared(builder):
            raise DatasetNotPreparedError(
                f"dataset {name} is not prepared in {data_dir}",
                hint=_prepare_hint(name, data_dir),
            )
        return builder
    builder = _tfds_builder(name, data_dir)
    if builder is None:
        raise _unknown(name)
    return builder


def load_source(
    name: str,
    split: str,
    data_dir: str | os.PathLike | None = None,
    *,
    in_memory: bool = False,
):
    """A random-access source of one split of a prepared dataset.

    ``len(src)`` examples; ``src[i]`` is a dict of numpy values: for image datasets ``image``
    uint8 [H, W, C] and ``label`` (int); for ``moses`` ``smiles`` (bytes, UTF-8). Also supports
    ``src.__getitems__(list_of_indices)``. Raises ``DatasetNotPreparedError`` (naming the
    ``jaxflows data prepare`` command) when the dataset has not been built, ``UserError`` for an
    unknown name or split. ``in_memory=True`` returns an :class:`InMemorySource` of the split
    (much faster batches; for datasets that fit in RAM such as mnist and digits).
    """
    builder = _prepared_builder(name, data_dir)
    splits = list(builder.info.splits.keys())
    if split not in splits:
        raise UserError(
            f"dataset {name} has no split {split!r}; splits: {', '.join(_split_order(splits))}"
        )
    source = builder.as_data_source(split=split)
    return InMemorySource(source) if in_memory else source


def element_spec_of(features) -> dict[str, Any]:
    """One example's array fields from TFDS ``features``: ``{name: jax.ShapeDtypeStruct}``.

    ``ClassLabel`` -> int32 scalar; 64-bit ints and floats -> 32-bit (what the input pipeline
    yields, see :func:`jaxflows.data.pipeline.read_batch`); text fields are left out (they never
    enter a jitted step). A variable dimension stays ``None``: a data transform must fix it.
    """
    import jax
    import tensorflow_datasets as tfds

    spec = {}
    for key, feature in features.items():
        if isinstance(feature, tfds.features.ClassLabel):
            spec[key] = jax.ShapeDtypeStruct((), np.int32)
            continue
        if isinstance(feature, tfds.features.Text):
            continue
        dtype = np.dtype(feature.np_dtype)
        if dtype.kind in "OSU":
            continue
        spec[key] = _ShapeSpec(tuple(feature.shape), narrow_dtype(dtype))
    return spec


def narrow_dtype(dtype) -> np.dtype:
    """int64 -> int32, uint64 -> uint32, float64 -> float32 (jax runs without x64)."""
    dtype = np.dtype(dtype)
    return {"i": np.dtype(np.int32), "u": np.dtype(np.uint32), "f": np.dtype(np.float32)}.get(
        dtype.kind, dtype) if dtype.itemsize == 8 else dtype


@dataclasses.dataclass(frozen=True)
class _ShapeSpec:
    """A field whose shape may hold ``None`` (variable length) until a transform fixes it;
    :func:`as_shape_dtype` turns a fully known one into a ``jax.ShapeDtypeStruct``."""

    shape: tuple
    dtype: Any


def as_shape_dtype(spec: Any):
    """``jax.ShapeDtypeStruct`` of a fully known field (``_ShapeSpec`` or already one)."""
    import jax

    if isinstance(spec, _ShapeSpec):
        if any(d is None for d in spec.shape):
            return spec
        return jax.ShapeDtypeStruct(spec.shape, spec.dtype)
    return spec


def dataset_info(name: str, data_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Static facts about a dataset: a dict with keys

    - ``element_spec``: ``{field: jax.ShapeDtypeStruct}`` of one record's array fields (a field
      of variable length has ``None`` in its shape until a data transform fixes it),
    - ``image_shape``: ``(H, W, C)`` of an ``image`` field, or None,
    - ``num_classes``: class count of a ``label`` field, or None,
    - ``splits``: ``{split: size}`` (actual sizes when prepared, else the expected ones),
    - ``metadata``: what the builder saved with the data (e.g. a vocabulary), or {},
    - ``prepared``: bool.

    Works without the data for the known names (embedded ones are prepared on first use); a
    TFDS-only name must be prepared.
    """
    data_dir = _resolve_dir(data_dir)
    if name in DATASETS:
        spec = DATASETS[name]
        builder = _builder(name, data_dir)
        if not _is_prepared(builder) and spec.embedded:
            builder = _prepared_builder(name, data_dir)
        prepared = _is_prepared(builder)
        splits = _split_sizes(builder) if prepared else dict(spec.splits)
    else:
        builder = _prepared_builder(name, data_dir)
        prepared, splits = True, _split_sizes(builder)
    features = builder.info.features
    element = {k: as_shape_dtype(v) for k, v in element_spec_of(features).items()}
    num_classes = None
    if "label" in features and hasattr(features["label"], "num_classes"):
        num_classes = int(features["label"].num_classes)
    image = element.get("image")
    metadata = dict(builder.info.metadata or {}) if prepared else {}
    return {
        "element_spec": element,
        "image_shape": tuple(image.shape) if image is not None else None,
        "num_classes": num_classes,
        "splits": splits,
        "metadata": metadata,
        "prepared": prepared,
    }


def _read_all(source, chunk: int = 4096) -> dict[str, np.ndarray]:
    """Every field of every record, stacked: ``{field: [N, ...]}`` (batched reads if possible)."""
    if isinstance(source, InMemorySource):
        return dict(source.arrays)
    n = len(source)
    getitems = getattr(source, "__getitems__", None)
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, n, chunk):
        idx = list(range(start, min(n, start + chunk)))
        rows = getitems(idx) if getitems is not None else [source[i] for i in idx]
        for key in rows[0]:
            parts.setdefault(key, []).append(np.stack([np.asarray(r[key]) for r in rows]))
    if not parts:
        raise UserError("cannot load an empty split")
    return {k: np.concatenate(v) for k, v in parts.items()}


class InMemorySource:
    """A whole split held in numpy arrays: a fast random-access source for small datasets.

    Reads every field of ``source`` once (batched reads). ``src[i]`` is a dict like the
    input's (``image`` uint8 [H, W, C], ``label`` int); ``src.get_batch(indices)`` returns the
    stacked dict ``{field: [len(indices), ...]}`` in one fancy-indexing step (used by the
    pipeline). MNIST train takes about 40 MB.
    """

    def __init__(self, source):
        self.arrays = _read_all(source)

    @classmethod
    def from_arrays(cls, arrays: dict[str, Any]) -> InMemorySource:
        """A source over ``{field: [N, ...]}`` arrays of equal length (e.g. the data of an
        outer loop that refits a model on new examples)."""
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        sizes = {k: len(v) for k, v in arrays.items()}
        if not arrays or len(set(sizes.values())) != 1:
            raise UserError(f"from_arrays needs fields of one common length, got {sizes}")
        self = cls.__new__(cls)
        self.arrays = arrays
        return self

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return {k: (v[i].item() if k == "label" else v[i]) for k, v in self.arrays.items()}

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        return [self[i] for i in indices]

    def get_batch(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        """Stacked fields of records ``indices``: ``{field: [len(indices), ...]}``."""
        idx = np.asarray(indices, dtype=np.int64)
        return {k: v[idx] for k, v in self.arrays.items()}

    def __repr__(self) -> str:
        return f"InMemorySource(n={len(self)}, fields={sorted(self.arrays)})"


class FixedBinarizedSource:
    """An image source binarized once: ``image`` uint8 in {0, 255}, same shape as the input.

    At construction the whole split is read into memory and each pixel is drawn once,
    ``Bernoulli(p = image / 255)``, with ``numpy.random.default_rng(seed)`` (uniforms ``u`` of
    the stacked ``[N, H, W, C]`` images in float64, pixel on iff ``u < image / 255``). So the
    result depends only on the split's contents and ``seed``. A downstream ``image / 255`` is
    exactly binary, and dynamic binarization of it is a no-op. ``src[i]`` is
    ``{'image': uint8 [H, W, C], 'label': int}`` (label when the input has one).
    """

    def __init__(self, source, seed: int = 777):
        first = source[0] if len(source) else None
        if first is None or "image" not in first:
            raise UserError("FixedBinarizedSource needs a non-empty source of 'image' examples")
        arrays = _read_all(source)
        images = arrays["image"]
        if images.dtype != np.uint8:
            raise UserError(f"FixedBinarizedSource expects uint8 images, got {images.dtype}")
        rng = np.random.default_rng(seed)
        self.images = np.empty_like(images)
        for start in range(0, len(images), 4096):  # float64 uniforms, drawn in record order
            chunk = images[start:start + 4096]
            u = rng.random(chunk.shape)
            self.images[start:start + 4096] = np.where(u < chunk / 255.0, 255, 0)
        self.labels = arrays["label"].astype(np.int64) if "label" in arrays else None
        self.seed = seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        out: dict[str, Any] = {"image": self.images[i]}
        if self.labels is not None:
            out["label"] = int(self.labels[i])
        return out

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        return [self[i] for i in indices]

    def get_batch(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        """Stacked ``image`` uint8 [n, H, W, C] (and ``label`` [n]) of records ``indices``."""
        idx = np.asarray(indices, dtype=np.int64)
        out = {"image": self.images[idx]}
        if self.labels is not None:
            out["label"] = self.labels[idx]
        return out

    def __repr__(self) -> str:
        return f"FixedBinarizedSource(n={len(self)}, seed={self.seed})"
