"""The shared MNIST metrics: the cached classifier (trained once, reused, retrained on a key
change only when asked), chunked features and FD-MNIST / class accuracy of samples."""

import json

import numpy as np
import pytest
from sklearn.datasets import load_digits

from jaxflows.eval import mnist_classifier as mc
from jaxflows.eval.classifier import accuracy
from jaxflows.eval.classifier import features as raw_features


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    x = np.round(d.images[..., None] / 16.0 * 255).astype(np.uint8)  # [1797, 8, 8, 1]
    return (x[:1500], d.target[:1500]), (x[1500:], d.target[1500:])


def test_get_classifier_trains_once_and_reuses(digits, tmp_path):
    train, test = digits
    path = str(tmp_path / "cls" / "params.msgpack")
    params, info = mc.get_classifier(path, train, test, steps=40, seed=0, dataset="digits")
    saved = json.loads((tmp_path / "cls" / "info.json").read_text())
    assert saved["key"] == {"dataset": "digits", "steps": 40, "seed": 0}
    assert "key" not in info and info["steps"] == 40
    assert info["test_accuracy"] == pytest.approx(accuracy(params, *test))
    # reused as it is (another key is ignored without check_key) ...
    again, info2 = mc.get_classifier(path, train, test, steps=7, seed=3, dataset="digits")
    np.testing.assert_array_equal(again["Dense_1"]["kernel"], params["Dense_1"]["kernel"])
    assert info2 == info
    # ... and retrained when check_key finds another key
    mc.get_classifier(path, train, test, steps=5, seed=1, dataset="digits", check_key=True)
    assert json.loads((tmp_path / "cls" / "info.json").read_text())["key"]["steps"] == 5


def test_features_fd_and_scores(digits, tmp_path):
    train, test = digits
    params, _ = mc.get_classifier(str(tmp_path / "p.msgpack"), train, test, steps=40, seed=0,
                                  dataset="digits")
    f = mc.features(params, test[0], chunk=64)  # padded chunks give the unpadded features
    assert f.shape == (len(test[0]), 128) and f.dtype == np.float64
    np.testing.assert_allclose(f, raw_features(params, test[0]), atol=1e-5)
    ref = mc.reference_stats(params, test[0])
    assert mc.fd_mnist(params, test[0], ref) < 1e-6
    out = mc.score_samples(params, test[0], test[1], ref)
    assert out["fd_mnist"] < 1e-6
    assert out["class_accuracy"] == pytest.approx(accuracy(params, *test))
    assert len(out["class_accuracy_per_class"]) == 10
    # images drawn for the wrong labels: lower accuracy, same FD
    wrong = mc.score_samples(params, test[0], (test[1] + 1) % 10, ref)
    assert wrong["class_accuracy"] < out["class_accuracy"]
    assert mc.fd_mnist(params, train[0][:300], ref) > 0
