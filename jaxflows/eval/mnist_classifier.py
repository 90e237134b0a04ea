"""MNIST sample metrics with the project's classifier: the data, a cached DigitCNN, its features,
FD-MNIST and class accuracy of (class-conditional) samples.

The pieces the MNIST experiments share (``experiments/align_mnist.py``,
``experiments/starflow_decoder_finetune.py``, ``experiments/starflow_mnist.py``):

* :func:`load_split`: one split of an image dataset as arrays;
* :func:`get_classifier`: :class:`jaxflows.eval.classifier.DigitCNN` params from a msgpack file
  (:func:`jaxflows.eval.classifier.save_classifier_params`), trained on the training split and
  saved there when missing, with an ``info.json`` beside it;
* :func:`features`: penultimate features in fixed-size chunks (one compiled shape);
* :func:`reference_stats`, :func:`fd_mnist`, :func:`score_samples`: **FD-MNIST**, the Fréchet
  distance (:mod:`jaxflows.eval.frechet`) between the classifier's 128-d features of a set of
  images and of reference images (the test split), and the class accuracy of samples drawn for
  given labels.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import numpy as np

from jaxflows.provenance import read_json

PyTree = Any

#: how the classifier is trained (recorded in ``info.json``)
RECIPE = "jaxflows.eval.classifier.train_classifier (Adam 1e-3 cosine, batch 128)"


def load_split(dataset: str, split: str, data_dir: str | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [N, H, W, C], labels [N])`` of one split of ``dataset`` (e.g. ``mnist``,
    ``digits``); ``data_dir`` None = the default cache."""
    from jaxflows.data.registry import load_source
    from jaxflows.train.input import materialize

    src = materialize(load_source(dataset, split, data_dir or None))
    return np.asarray(src.arrays["image"]), np.asarray(src.arrays["label"])



def get_classifier(path: str, train: tuple[np.ndarray, np.ndarray],
                   test: tuple[np.ndarray, np.ndarray], *, steps: int, seed: int, dataset: str,
                   check_key: bool = False) -> tuple[PyTree, dict]:
    """DigitCNN params from the msgpack file ``path``, else trained and saved there.

    ``train`` / ``test``: ``(images [N, H, W, C], labels [N])``. When trained here
    (``steps`` steps, ``jax.random.key(seed)``), the params are written to ``path`` and
    ``info.json`` beside it: ``{key: {dataset, steps, seed}, train_time_s, steps, test_accuracy,
    recipe}``. An existing file is reused as it is; with ``check_key`` only if ``info.json``
    exists and its ``key`` equals this call's (else it is retrained and overwritten).

    Returns ``(params, info)``: ``info`` is ``info.json`` without ``key`` (``test_accuracy``
    computed on ``test`` when it has none).
    """
    from jaxflows.eval import classifier
    from jaxflows.provenance import write_json_atomic

    info_path = os.path.join(os.path.dirname(os.path.abspath(path)), "info.json")
    key = {"dataset": dataset, "steps": int(steps), "seed": int(seed)}
    reuse = os.path.exists(path)
    if reuse and check_key:
        reuse = os.path.exists(info_path) and read_json(info_path).get("key") == key
    if reuse:
        params = classifier.load_classifier_params(path)
        info = read_json(info_path) if os.path.exists(info_path) else {}
        info.setdefault("test_accuracy", classifier.accuracy(params, *test))
        return params, {k: v for k, v in info.items() if k != "key"}
    t0 = time.time()
    params = classifier.train_classifier(train[0], train[1], int(steps), jax.random.key(seed))
    info = {"key": key, "train_time_s": time.time() - t0, "steps": int(steps),
            "test_accuracy": classifier.accuracy(params, *test), "recipe": RECIPE}
    classifier.save_classifier_params(path, params)
    write_json_atomic(info_path, info, indent=1)
    return params, {k: v for k, v in info.items() if k != "key"}


def features(cls_params: PyTree, images, chunk: int = 1000) -> np.ndarray:
    """DigitCNN penultimate features ``[N, 128]`` (float64) of ``images [N, H, W, C]`` (uint8 or
    floats in [0, 1]), in zero-padded chunks of ``chunk`` (one compiled shape for every call)."""
    from jaxflows.eval.classifier import features as feats
    from jaxflows.train.task import map_in_chunks

    return map_in_chunks(lambda part: feats(cls_params, part), images, chunk).astype(np.float64)


def reference_stats(cls_params: PyTree, images, chunk: int = 1000
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``(mean [128], covariance [128, 128])`` of the features of reference ``images`` (the test
    split for FD-MNIST)."""
    from jaxflows.eval.frechet import feature_stats

    return feature_stats(features(cls_params, images, chunk))


def fd_mnist(cls_params: PyTree, images, ref_stats, chunk: int = 1000) -> float:
    """FD-MNIST: Fréchet distance between the features of ``images [N, H, W, C]`` and the
    reference statistics ``ref_stats`` (:func:`reference_stats`)."""
    from jaxflows.eval.frechet import feature_stats, frechet_distance_from_stats

    return frechet_distance_from_stats(*feature_stats(features(cls_params, images, chunk)),
                                       *ref_stats)


def score_samples(cls_params: PyTree, images, labels, ref_stats, num_classes: int = 10) -> dict:
    """Metrics of samples ``images [N, H, W, C]`` drawn for ``labels [N]`` (one classifier pass):
    ``fd_mnist`` (against ``ref_stats``), ``class_accuracy`` (fraction classified as their
    label) and ``class_accuracy_per_class`` (list of ``num_classes``; NaN for an absent class)."""
    from jaxflows.eval import classifier
    from jaxflows.eval.frechet import feature_stats, frechet_distance_from_stats

    acc, per_class, feats = classifier.score(cls_params, images, labels, num_classes)
    fd = frechet_distance_from_stats(*feature_stats(np.asarray(feats, np.float64)), *ref_stats)
    return {"fd_mnist": fd, "class_accuracy": acc, "class_accuracy_per_class": per_class}
