"""Pixel transforms: binarization statistics, dequantisation ranges and round trips."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxflows.data import (
    dequantize_deterministic,
    dynamic_binarize,
    to_uint8,
    to_unit,
    uniform_dequantize,
)
from jaxflows.data.transforms import _dequantize

LEVELS = jnp.arange(256, dtype=jnp.uint8).reshape(16, 16, 1)


def test_to_unit():
    y = to_unit(LEVELS)
    assert y.dtype == jnp.float32 and y.shape == (16, 16, 1)
    assert float(y.min()) == 0.0 and float(y.max()) == 1.0


def test_dynamic_binarize_statistics():
    n = 2000
    keys = jax.random.split(jax.random.key(0), n)
    draws = jax.jit(jax.vmap(dynamic_binarize, in_axes=(0, None)))(keys, LEVELS)
    draws = np.asarray(draws)
    assert draws.dtype == np.float32 and draws.shape == (n, 16, 16, 1)
    assert set(np.unique(draws).tolist()) <= {0.0, 1.0}
    p = np.arange(256).reshape(16, 16, 1) / 255.0
    se = np.sqrt(p * (1 - p) / n)
    # 5 standard errors per level (plus a tiny slack for p in {0, 1}, where se = 0).
    assert (np.abs(draws.mean(0) - p) <= 5 * se + 1e-9).all()
    assert (draws[:, p == 0] == 0).all() and (draws[:, p == 1] == 1).all()


def test_dynamic_binarize_rng_behaviour():
    img = jnp.full((4, 28, 28, 1), 128, jnp.uint8)
    k1, k2 = jax.random.split(jax.random.key(1))
    a, b = dynamic_binarize(k1, img), dynamic_binarize(k2, img)
    assert (a != b).any()
    np.testing.assert_array_equal(a, dynamic_binarize(k1, img))
    np.testing.assert_array_equal(a, jax.jit(dynamic_binarize)(k1, img))
    binary = (a * 255).astype(jnp.uint8)
    np.testing.assert_array_equal(dynamic_binarize(k2, binary), a)  # no-op on {0, 255}


def test_uniform_dequantize_range_and_round_trip():
    x = jnp.tile(LEVELS[None], (64, 1, 1, 1))
    y = jax.jit(uniform_dequantize)(jax.random.key(3), x)
    assert y.dtype == jnp.float32 and y.shape == x.shape
    assert float(y.min()) >= -1.0 and float(y.max()) < 1.0
    y64 = np.asarray(y, np.float64)
    np.testing.assert_array_equal(np.floor((y64 + 1) / 2 * 256), np.asarray(x))
    np.testing.assert_array_equal(to_uint8(y), x)
    # within a bin the noise is spread out: mean offset near 1/2
    frac = (y64 + 1) / 2 * 256 - np.asarray(x)
    assert abs(frac.mean() - 0.5) < 0.01
    assert (uniform_dequantize(jax.random.key(4), x) != y).any()


def test_dequantize_round_trip_at_the_bin_edges():
    x = jnp.repeat(jnp.arange(256, dtype=jnp.uint8), 6)
    one_minus = [0.0, 2.0**-24, 0.5, 1 - 2.0**-23, 1 - 2.0**-24, np.nextafter(1.0, 0.0)]
    u = jnp.tile(jnp.asarray(one_minus, jnp.float32), 256)
    y = _dequantize(x, u)
    assert float(y.max()) < 1.0
    np.testing.assert_array_equal(to_uint8(y), x)
    y32 = np.asarray(y)
    np.testing.assert_array_equal(
        np.floor((y32 + np.float32(1)) / np.float32(2) * np.float32(256)), np.asarray(x)
    )


def test_deterministic_dequantize_and_to_uint8():
    y = dequantize_deterministic(LEVELS)
    np.testing.assert_allclose(y, (np.arange(256).reshape(16, 16, 1) + 0.5) / 128 - 1)
    np.testing.assert_array_equal(to_uint8(y), LEVELS)
    assert to_uint8(jnp.array([-1.5, -1.0, 1.0, 2.0])).tolist() == [0, 0, 255, 255]
