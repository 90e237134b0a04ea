"""Host-side data transforms named in ``config.data.transforms``.

Dataset-specific preprocessing that must happen before batches reach a jitted step (a fixed
binarisation of the evaluation splits, padding token sequences to one length) is a transform
named in the config, e.g. ``config.data.transforms = ("binarize_eval(seed=777)",)``. Each entry
is ``NAME`` or ``NAME(key=value, ...)`` with Python literal values. A transform

* maps the dataset's element spec to the one the task sees (:meth:`SourceTransform.spec`), so
  ``jaxflows info`` and the shardings know the final shapes without reading data;
* wraps a split's random-access source (:meth:`SourceTransform.apply`); ``train`` says whether
  the split is the training split.

Random per-step transforms (dynamic binarisation, dequantisation) belong inside the model's
jitted functions, from the step rng (:mod:`jaxflows.data.transforms`).
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from jaxflows.errors import ConfigError

ElementSpec = dict[str, Any]


class SourceTransform:
    """Base class. Subclasses take their options as keyword arguments."""

    name: str = ""

    def spec(self, spec: ElementSpec, metadata: Mapping[str, Any]) -> ElementSpec:
        """The element spec after this transform (default: unchanged)."""
        del metadata
        return spec

    def apply(self, source, *, train: bool, metadata: Mapping[str, Any]):
        """The transformed source of one split (``len`` and ``[i]`` like the input)."""
        raise NotImplementedError


class BinarizeEval(SourceTransform):
    """Binarises the non-training splits once (``FixedBinarizedSource``, Bernoulli(image/255)
    with ``seed``); the training split is left for dynamic binarisation in the model."""

    name = "binarize_eval"

    def __init__(self, seed: int = 777):
        if not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"binarize_eval: seed must be a non-negative int, got {seed!r}")
        self.seed = seed

    def spec(self, spec, metadata):
        if "image" not in spec:
            raise ConfigError(f"binarize_eval needs an 'image' field; the data has {sorted(spec)}")
        return spec

    def apply(self, source, *, train, metadata):
        from jaxflows.data.registry import FixedBinarizedSource

        return source if train else FixedBinarizedSource(source, seed=self.seed)


TRANSFORMS: dict[str, Callable[..., SourceTransform]] = {
    BinarizeEval.name: BinarizeEval,
}


def register_transform(cls: type[SourceTransform]) -> type[SourceTransform]:
    """Class decorator adding a transform to :data:`TRANSFORMS` under ``cls.name``."""
    TRANSFORMS[cls.name] = cls
    return cls


def parse(entry: str) -> SourceTransform:
    """``'name'`` or ``'name(key=value, ...)'`` -> the transform; ConfigError names the problem."""
    text = str(entry).strip()
    try:
        node = ast.parse(text, mode="eval").body
    except SyntaxError:
        raise ConfigError(f"config.data.transforms: cannot parse {entry!r}",
                          hint="write NAME or NAME(key=value, ...)") from None
    if isinstance(node, ast.Name):
        name, kwargs = node.id, {}
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.args:
        name = node.func.id
        try:
            kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords}
        except ValueError:
            raise ConfigError(f"config.data.transforms: {entry!r}: values must be "
                              "literals") from None
    else:
        raise ConfigError(f"config.data.transforms: cannot parse {entry!r}",
                          hint="write NAME or NAME(key=value, ...) with keyword arguments")
    if name not in TRANSFORMS:
        raise ConfigError(f"config.data.transforms: unknown transform {name!r}; known: "
                          f"{', '.join(sorted(TRANSFORMS))}")
    try:
        return TRANSFORMS[name](**kwargs)
    except TypeError as e:
        raise ConfigError(f"config.data.transforms: {entry!r}: {e}") from None


def parse_all(entries: Sequence[str]) -> list[SourceTransform]:
    """Every entry of ``config.data.transforms``, in order."""
    if isinstance(entries, str):
        entries = (entries,)
    return [parse(e) for e in entries or ()]


def transformed_spec(transforms: Sequence[SourceTransform], spec: ElementSpec,
                     metadata: Mapping[str, Any]) -> ElementSpec:
    """The element spec after all transforms; a field still of unknown length is an error."""
    for t in transforms:
        spec = t.spec(dict(spec), metadata)
    for k, v in spec.items():
        if any(d is None for d in v.shape):
            raise ConfigError(f"data field {k!r} has variable shape {tuple(v.shape)}",
                              hint="add a transform that fixes it to config.data.transforms, "
                                   "e.g. pad_tokens")
    return spec


def apply_all(transforms: Sequence[SourceTransform], source, *, train: bool,
              metadata: Mapping[str, Any]):
    """The source of one split after all transforms, in order."""
    for t in transforms:
        source = t.apply(source, train=train, metadata=metadata)
    return source



@register_transform
class PadTokens(SourceTransform):
    """Pads variable-length token sequences with ``<stop>`` (id 1) to one length ``L``.

    Options: ``length`` (``L``; 0 means ``metadata['max_length'] + 1``, NF-BO's "longest
    sequence plus one", so every sequence ends in at least one ``<stop>``) and ``field`` (the
    int token field, default ``tokens``). The field's spec ``int [None]`` becomes int32
    ``[L]``, and a field ``length`` (int32 ``[]``, the number of real tokens before the first
    ``<stop>``) is added. Other fields (e.g. the ``smiles`` text) pass through. A sequence of
    more than ``L - 1`` tokens is a ConfigError naming its length and ``L``.
    """

    name = "pad_tokens"

    def __init__(self, length: int = 0, field: str = "tokens"):
        if not isinstance(length, int) or isinstance(length, bool) or length < 0:
            raise ConfigError(f"pad_tokens: length must be an int >= 0 (0 = the data's "
                              f"max_length + 1), got {length!r}")
        if not isinstance(field, str) or not field:
            raise ConfigError(f"pad_tokens: field must be a field name, got {field!r}")
        self.length = length
        self.field = field

    def padded_length(self, metadata: Mapping[str, Any]) -> int:
        """``L``: the ``length`` option, else ``metadata['max_length'] + 1``."""
        max_length = (metadata or {}).get("max_length")
        if self.length:
            if max_length is not None and self.length < int(max_length) + 1:
                raise ConfigError(
                    f"pad_tokens: length={self.length} is too short for the data's longest "
                    f"sequence of {int(max_length)} tokens (needs >= {int(max_length) + 1}, one "
                    "<stop> included)", hint="use pad_tokens(length=0) for max_length + 1")
            return self.length
        if max_length is None:
            raise ConfigError("pad_tokens: the data's metadata has no max_length (a token "
                              "dataset such as moses_selfies saves it when prepared)",
                              hint="prepare the dataset, or give pad_tokens(length=L)")
        return int(max_length) + 1

    def spec(self, spec, metadata):
        import jax

        if self.field not in spec:
            raise ConfigError(f"pad_tokens: the data has no field {self.field!r} "
                              f"(fields: {sorted(spec)})")
        field = spec[self.field]
        if len(field.shape) != 1 or np.dtype(field.dtype).kind not in "iu":
            raise ConfigError(f"pad_tokens: field {self.field!r} must be a 1-D int sequence, "
                              f"got shape {tuple(field.shape)} {np.dtype(field.dtype)}")
        out = dict(spec)
        out[self.field] = jax.ShapeDtypeStruct((self.padded_length(metadata),), np.int32)
        out["length"] = jax.ShapeDtypeStruct((), np.int32)
        return out

    def apply(self, source, *, train, metadata):
        del train
        return PaddedTokenSource(source, self.padded_length(metadata), self.field)


class PaddedTokenSource:
    """A source whose records' ``field`` is padded with ``<stop>`` (id 1) to ``length``.

    ``src[i]`` is the input record with ``field`` int32 ``[length]`` and ``length`` (int, the
    real token count); ``src.__getitems__(indices)`` the same for many; ``src.get_batch(
    indices)`` stacks them: ``{field: int32 [n, length], 'length': int32 [n], other fields
    stacked (text as an object array)}``.
    """

    STOP_ID = 1

    def __init__(self, source, length: int, field: str = "tokens"):
        if length < 1:
            raise ConfigError(f"pad_tokens: length must be >= 1, got {length}")
        self.source = source
        self.length = int(length)
        self.field = field

    def __len__(self) -> int:
        return len(self.source)

    def _pad(self, tokens) -> tuple[np.ndarray, int]:
        tokens = np.asarray(tokens).reshape(-1)
        n = tokens.shape[0]
        if n > self.length - 1:
            raise ConfigError(
                f"pad_tokens: a sequence of {n} tokens does not fit length {self.length} "
                f"(at most {self.length - 1} tokens plus one <stop>)",
                hint="use pad_tokens(length=0) (the data's max_length + 1) or a larger length")
        out = np.full((self.length,), self.STOP_ID, np.int32)
        out[:n] = tokens
        return out, n

    def _record(self, record: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(record)
        out[self.field], out["length"] = self._pad(record[self.field])
        return out

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self._record(self.source[i])

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        many = getattr(self.source, "__getitems__", None)
        rows = many(list(indices)) if many is not None else [self.source[i] for i in indices]
        return [self._record(r) for r in rows]

    def get_batch(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        """Stacked records ``indices``: ``{field: int32 [n, L], 'length': int32 [n], ...}``."""
        rows = self.__getitems__([int(i) for i in np.asarray(indices).reshape(-1)])
        if not rows:
            raise ConfigError("pad_tokens: get_batch of no indices")
        out: dict[str, np.ndarray] = {}
        for key in rows[0]:
            values = [r[key] for r in rows]
            if key == "length":
                out[key] = np.asarray(values, np.int32)
                continue
            try:
                out[key] = np.stack([np.asarray(v) for v in values])
            except ValueError:  # ragged values: keep them as objects
                out[key] = np.empty(len(values), object)
                out[key][:] = values
            if out[key].dtype.kind in "SU":  # text: objects, like a TFDS source's bytes
                out[key] = out[key].astype(object)
        return out

    def __repr__(self) -> str:
        return f"PaddedTokenSource(n={len(self)}, length={self.length}, field={self.field!r})"
