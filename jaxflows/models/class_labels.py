"""Class labels for sampling a class-conditional model: the ``config.sample.class_label`` option
resolved to one label per sample (shared by TarFlow and STARFlow)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxflows.errors import ConfigError

#: ``class_label`` value meaning "a random class per sample"
RANDOM_CLASSES = -2


def short(value) -> str:
    """A one-line rendering of an option value for an error message."""
    text = str(np.asarray(value).tolist())
    return text if len(text) <= 40 else text[:37] + "..."


def resolve_class_labels(rng: jax.Array, num: int, class_label, num_classes: int, *,
                         null_id: int | None = None) -> jax.Array | None:
    """``[num]`` int32 labels from ``class_label``: ``None`` or ``-2`` draws a random class per
    sample, an int gives every sample that class, an array ``[num]`` one each; ``-1`` is the
    null label, kept as ``-1`` (``null_id=None``) or mapped to ``null_id``. Returns None for a
    model without classes (``num_classes == 0``), which refuses any explicit label."""
    random = class_label is None or (np.ndim(class_label) == 0
                                     and int(class_label) == RANDOM_CLASSES)
    if not num_classes:
        if not random:
            raise ConfigError(f"config.sample.class_label={short(class_label)} given but the "
                              "model has no classes: it is unconditional (leave it at -2)")
        return None
    if random:
        return jax.random.randint(rng, (num,), 0, num_classes, jnp.int32)
    labels = np.asarray(class_label, np.int64)
    if labels.ndim == 0:
        labels = np.full((num,), int(labels))
    if labels.shape != (num,):
        raise ConfigError(f"config.sample.class_label must be an int or have shape ({num},), "
                          f"got {labels.shape}")
    bad = labels[(labels < -1) | (labels >= num_classes)]
    if bad.size:
        raise ConfigError(f"config.sample.class_label: class id {int(bad[0])} out of range "
                          f"[0, {num_classes}) (-1 = null label, -2 = random classes)")
    if null_id is not None:
        labels = np.where(labels < 0, null_id, labels)
    return jnp.asarray(labels, jnp.int32)
