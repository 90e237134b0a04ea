"""Digit classifier, Fréchet distance (closed form for Gaussians) and PNG sample grids."""

import jax
import numpy as np
import pytest
from PIL import Image
from scipy.linalg import sqrtm
from sklearn.datasets import load_digits

from jaxflows.eval.classifier import accuracy, features, per_class_accuracy, score, train_classifier
from jaxflows.eval.frechet import frechet_distance, frechet_distance_from_stats
from jaxflows.eval.grid import make_grid, save_grid


def test_classifier_learns_digits():
    d = load_digits()
    x = (d.images[..., None] / 16.0).astype(np.float32)  # [1797, 8, 8, 1] in [0, 1]
    y = d.target
    params = train_classifier(x[:1500], y[:1500], steps=200, rng=jax.random.key(0),
                              learning_rate=3e-3)
    assert accuracy(params, x[1500:], y[1500:]) > 0.85
    f = features(params, x[:10])
    assert f.shape == (10, 128) and bool(np.all(np.asarray(f) >= 0))
    # uint8 input is scaled the same way
    u8 = np.round(x[1500:] * 255).astype(np.uint8)
    assert abs(accuracy(params, u8, y[1500:]) - accuracy(params, x[1500:], y[1500:])) < 0.02
    # per-class accuracy: weighted by the class counts it is the overall accuracy; a class that
    # is absent gives NaN
    per = per_class_accuracy(params, x[1500:], y[1500:], 10)
    counts = np.bincount(y[1500:], minlength=10)
    np.testing.assert_allclose(np.dot(per, counts) / counts.sum(),
                               accuracy(params, x[1500:], y[1500:]), atol=1e-6)
    only3 = x[1500:][y[1500:] == 3]
    per3 = per_class_accuracy(params, only3, np.full(len(only3), 3), 10)
    assert np.isnan(per3[0])
    assert abs(per3[3] - accuracy(params, only3, np.full(len(only3), 3))) < 1e-6
    # score: the same three results from one pass
    acc, per_s, feats = score(params, x[1500:], y[1500:], 10)
    assert abs(acc - accuracy(params, x[1500:], y[1500:])) < 1e-6
    np.testing.assert_allclose(per_s, per, atol=1e-6)
    np.testing.assert_allclose(feats, features(params, x[1500:]), atol=1e-5)


def test_frechet_closed_form():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 4))
    b = rng.standard_normal((4, 4))
    c1, c2 = a @ a.T + 0.1 * np.eye(4), b @ b.T + 0.1 * np.eye(4)
    m1, m2 = rng.standard_normal(4), rng.standard_normal(4)
    expect = np.sum((m1 - m2) ** 2) + np.trace(c1 + c2 - 2 * np.real(sqrtm(c1 @ c2)))
    np.testing.assert_allclose(frechet_distance_from_stats(m1, c1, m2, c2), expect, rtol=1e-6)
    # isotropic case by hand: N(0, s1^2 I) vs N(mu, s2^2 I) -> |mu|^2 + d (s1 - s2)^2
    np.testing.assert_allclose(
        frechet_distance_from_stats(np.zeros(3), 4 * np.eye(3), np.ones(3), np.eye(3)),
        3 + 3 * (2 - 1) ** 2)
    # sample estimate converges to the population value
    x1 = rng.multivariate_normal(m1, c1, 20000)
    x2 = rng.multivariate_normal(m2, c2, 20000)
    assert abs(frechet_distance(x1, x2) - expect) < 0.05 * expect + 0.05
    assert frechet_distance(x1, x1) < 1e-6
    with pytest.raises(ValueError):
        frechet_distance(x1[:, :2], x2)


def test_grid_png(tmp_path):
    imgs = np.random.default_rng(0).random((5, 6, 7, 3)).astype(np.float32)
    g = make_grid(imgs, ncol=2, pad=1)
    assert g.shape == (3 * 7 + 1, 2 * 8 + 1, 3) and g.dtype == np.uint8
    np.testing.assert_array_equal(g[1:7, 1:8], np.round(imgs[0] * 255).astype(np.uint8))
    path = tmp_path / "sub" / "grid.png"
    save_grid(imgs[..., :1], path, ncol=3)
    im = Image.open(path)
    assert im.mode == "L" and im.size == (3 * 9 + 2, 2 * 8 + 2)
    with pytest.raises(ValueError):
        make_grid(np.zeros((2, 4, 4, 2)))
