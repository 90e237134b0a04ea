"""The pieces the BO loop relies on for compile-once: masked anchors, host-side padding and
checks, and a GP fit whose data grow without recompiling."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxflows.bo import gp
from jaxflows.bo.anchors import sample_anchors
from jaxflows.bo.compiles import CompileCounter
from jaxflows.bo.surrogate import SurrogateConfig


def test_anchors_skip_invalid_rows_and_match_the_unpadded_draw():
    y = np.array([0.3, 0.9, 0.1, 0.5], np.float32)
    padded = np.concatenate([y, np.full(4, 7.0, np.float32)])   # padding would win if drawn
    valid = np.arange(8) < 4
    for seed in range(20):
        key = jax.random.key(seed)
        a = np.asarray(sample_anchors(key, padded, 3, 0.5, valid))
        np.testing.assert_array_equal(a, np.asarray(sample_anchors(key, y, 3, 0.5)))
    top = np.asarray(sample_anchors(jax.random.key(0), padded, 2, 0.0, valid))
    np.testing.assert_array_equal(top, [1, 3])


def test_host_padding_equals_device_padding():
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    y = np.arange(5, dtype=np.float32)
    host = gp.pad_rows(x, y, 8)
    dev = gp.pad_rows(jnp.asarray(x), jnp.asarray(y), 8)
    assert all(isinstance(a, np.ndarray) for a in host)
    for a, b in zip(host, dev, strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))


def test_a_growing_data_set_compiles_the_fit_once():
    cfg = SurrogateConfig(hidden=(8,), exact_pad_multiple=32, exact_num_steps=3)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 4)).astype(np.float32)
    y = np.sin(x.sum(1)).astype(np.float32)
    params = gp.fit_surrogate(cfg, x[:10], y[:10], jax.random.key(0))
    params = gp.fit_surrogate(cfg, x[:10], y[:10], jax.random.key(1), init_params=params)
    gp.posterior(params, x[:10], y[:10], x[:4])
    with CompileCounter() as counter:
        for n in (12, 17, 23, 30):
            params = gp.fit_surrogate(cfg, x[:n], y[:n], jax.random.key(n), init_params=params,
                                      num_steps=2)
            gp.posterior(params, x[:n], y[:n], x[:4])
    assert counter.count == 0, counter.by_name
    assert np.isfinite(float(params.loss))
