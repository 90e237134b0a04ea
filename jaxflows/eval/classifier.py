"""A small CNN digit classifier for sample metrics: accuracy of class-conditional samples and a
Fréchet distance on its penultimate features (:mod:`jaxflows.eval.frechet`).

Architecture (:class:`DigitCNN`): conv 3x3x32 -> ReLU -> conv 3x3x64 stride 2 -> ReLU -> conv
3x3x64 stride 2 -> ReLU -> flatten -> dense 128 -> ReLU (the **features**) -> dense
``num_classes``. Inputs ``[N, H, W, C]`` in [0, 1] (uint8 is divided by 255); any ``H, W``.

Recipe (:func:`train_classifier`, weights are not committed, train them once per machine):
Adam, learning rate 1e-3 with cosine decay to 0, batch 128, cross-entropy, no augmentation,
``steps`` steps on the training split (MNIST: 3000 steps, about 8 epochs of 50k images, takes a
few minutes on a CPU and reaches about 99% test accuracy; sklearn 8x8 digits: 500 steps).
Deterministic given ``rng``.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxflows.train.xla_options import full_backend_optimization

PyTree = Any


class DigitCNN(nn.Module):
    """``x: [N, H, W, C] -> (logits [N, num_classes], features [N, feature_dim])``."""

    num_classes: int = 10
    feature_dim: int = 128

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Logits and penultimate features."""
        x = nn.relu(nn.Conv(32, (3, 3))(x))
        x = nn.relu(nn.Conv(64, (3, 3), strides=(2, 2))(x))
        x = nn.relu(nn.Conv(64, (3, 3), strides=(2, 2))(x))
        x = x.reshape(x.shape[0], -1)
        feats = nn.relu(nn.Dense(self.feature_dim)(x))
        return nn.Dense(self.num_classes)(feats), feats


def _prep(images) -> jax.Array:
    x = jnp.asarray(images)
    if x.dtype == jnp.uint8:
        return x.astype(jnp.float32) / 255.0
    return x.astype(jnp.float32)


def train_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    steps: int,
    rng: jax.Array,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    num_classes: int | None = None,
) -> PyTree:
    """Trains :class:`DigitCNN` on ``images: [N, H, W, C]`` ([0, 1] or uint8), ``labels: [N]``.

    Returns the params (a pytree; ``num_classes`` defaults to ``labels.max() + 1``, at least 10).
    """
    x_all = _prep(images)
    y_all = jnp.asarray(labels, jnp.int32)
    if x_all.ndim != 4 or x_all.shape[0] != y_all.shape[0]:
        raise ValueError(f"images {x_all.shape} / labels {y_all.shape} do not match")
    ncls = int(num_classes or max(10, int(np.max(labels)) + 1))
    model = DigitCNN(ncls)
    r_init, r_data = jax.random.split(rng)
    params = model.init(r_init, x_all[:1])["params"]
    tx = optax.adam(optax.cosine_decay_schedule(learning_rate, max(steps, 1)))
    opt_state = tx.init(params)
    n = x_all.shape[0]
    bs = min(batch_size, n)

    # convolution gradients: XLA's full backend level even where XLA_FLAGS lowers it
    @functools.partial(jax.jit, compiler_options=full_backend_optimization())
    def step(params, opt_state, i):
        idx = jax.random.randint(jax.random.fold_in(r_data, i), (bs,), 0, n)

        def loss_fn(p):
            logits, _ = model.apply({"params": p}, x_all[idx])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y_all[idx]).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    # a Python loop over a jitted step: XLA:CPU runs convolutions inside a scan/while body
    # an order of magnitude slower than at top level
    for i in range(steps):
        params, opt_state, _ = step(params, opt_state, jnp.int32(i))
    return params


@functools.partial(jax.jit, static_argnums=2)
def _forward(params: PyTree, x: jax.Array, ncls: int):
    return DigitCNN(ncls).apply({"params": params}, x)


def _apply_batched(params: PyTree, images, batch_size: int = 1000):
    x = _prep(images)
    ncls = int(params["Dense_1"]["kernel"].shape[-1])
    outs = [_forward(params, x[i:i + batch_size], ncls) for i in range(0, x.shape[0], batch_size)]
    return (jnp.concatenate([o[0] for o in outs]), jnp.concatenate([o[1] for o in outs]))


def logits(params: PyTree, images) -> jax.Array:
    """Class logits ``[N, num_classes]`` for ``images: [N, H, W, C]``."""
    return _apply_batched(params, images)[0]


def accuracy(params: PyTree, images, labels) -> float:
    """Fraction of ``images: [N, H, W, C]`` classified as ``labels: [N]``."""
    pred = jnp.argmax(logits(params, images), axis=-1)
    return float(jnp.mean(pred == jnp.asarray(labels)))


def _per_class(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> list[float]:
    return [float(np.mean(pred[labels == k] == k)) if np.any(labels == k) else float("nan")
            for k in range(num_classes)]


def per_class_accuracy(params: PyTree, images, labels, num_classes: int) -> list[float]:
    """Accuracy within each class ``0..num_classes-1`` of ``images: [N, H, W, C]`` labelled
    ``labels: [N]``; NaN for a class with no image."""
    pred = np.asarray(jnp.argmax(logits(params, images), axis=-1))
    return _per_class(pred, np.asarray(labels), num_classes)


def score(params: PyTree, images, labels, num_classes: int) -> tuple[float, list[float], jax.Array]:
    """One pass over ``images: [N, H, W, C]`` labelled ``labels: [N]``: (accuracy, per-class
    accuracy as in ``per_class_accuracy``, penultimate features ``[N, feature_dim]``)."""
    out, feats = _apply_batched(params, images)
    pred, labels = np.asarray(jnp.argmax(out, axis=-1)), np.asarray(labels)
    return float(np.mean(pred == labels)), _per_class(pred, labels, num_classes), feats


def features(params: PyTree, images) -> jax.Array:
    """Penultimate (post-ReLU dense) features ``[N, feature_dim]`` for Fréchet distances."""
    return _apply_batched(params, images)[1]


# --- saved classifier params (a msgpack file, or an Orbax params checkpoint) ---------------------

#: DigitCNN's parameter layout: module -> (kernel rank, leaves)
_LAYERS = {"Conv_0": 4, "Conv_1": 4, "Conv_2": 4, "Dense_0": 2, "Dense_1": 2}


def save_classifier_params(path: str, params: PyTree) -> str:
    """Writes DigitCNN ``params`` (e.g. from :func:`train_classifier`) to ``path`` as flax
    msgpack bytes (``flax.serialization.to_bytes``; atomic: a temporary file then a rename), the
    format ``experiments/align_mnist.py`` caches in ``RUNS_DIR/classifier/params.msgpack``.
    Returns ``path``."""
    import os

    import flax.serialization

    check_classifier_params(params)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(flax.serialization.to_bytes(jax.tree.map(np.asarray, params)))
    os.replace(tmp, path)
    return path


def load_classifier_params(path: str) -> PyTree:
    """DigitCNN params from ``path``: a msgpack file (:func:`save_classifier_params`) or an Orbax
    params checkpoint directory (``jaxflows.train.pretrained.save_params``, its ``params``
    subtree). Raises ``FileNotFoundError`` / ``ValueError`` (not DigitCNN params)."""
    import os

    import flax.serialization

    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist")
    if os.path.isdir(path):
        from jaxflows.train.pretrained import read_tree

        tree = read_tree(path)
        params = tree.get("params", tree) if isinstance(tree, dict) else tree
    else:
        with open(path, "rb") as f:
            try:
                params = flax.serialization.msgpack_restore(f.read())
            except Exception as e:  # noqa: BLE001 -- any decoding failure: not our file
                raise ValueError(f"{path} is not a msgpack params file ({type(e).__name__})"
                                 ) from None
    check_classifier_params(params)
    return jax.tree.map(jnp.asarray, params)


def check_classifier_params(params: PyTree, image_shape=None) -> None:
    """Raises ``ValueError`` naming the problem unless ``params`` is a :class:`DigitCNN` tree
    (``Conv_0..2``, ``Dense_0..1``, each with ``kernel`` and ``bias``), and, given
    ``image_shape = (H, W, C)``, one for images of that shape (input channels and the flattened
    size ``ceil(H/4) ceil(W/4) 64`` of ``Dense_0``)."""
    if not isinstance(params, dict) or set(params) != set(_LAYERS):
        have = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(f"not DigitCNN params: top-level keys {have}, expected "
                         f"{sorted(_LAYERS)}")
    for name, rank in _LAYERS.items():
        layer = params[name]
        if not isinstance(layer, dict) or set(layer) != {"kernel", "bias"} or \
                np.ndim(layer["kernel"]) != rank:
            raise ValueError(f"not DigitCNN params: {name} is not a rank-{rank} kernel and a bias")
    if image_shape is not None:
        h, w, c = (int(d) for d in image_shape)
        if np.shape(params["Conv_0"]["kernel"])[2] != c:
            raise ValueError(f"the classifier takes {np.shape(params['Conv_0']['kernel'])[2]} "
                             f"input channels, the images have {c}")
        # two stride-2 SAME convolutions: ceil(ceil(n / 2) / 2) = ceil(n / 4) positions a side
        flat = -(-h // 4) * -(-w // 4) * np.shape(params["Conv_2"]["kernel"])[-1]
        if np.shape(params["Dense_0"]["kernel"])[0] != flat:
            raise ValueError(f"the classifier was trained on images of another size (its dense "
                             f"layer takes {np.shape(params['Dense_0']['kernel'])[0]} inputs, "
                             f"{h}x{w} images give {flat})")
