"""Per-computation XLA options: convolution steps compile at the full backend level inside a
process that lowers it (this suite runs at level 0, see ``tests/conftest.py``)."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxflows.eval.classifier import DigitCNN
from jaxflows.train.task import Task
from jaxflows.train.xla_options import (
    BACKEND_LEVEL_OPTION,
    FULL_BACKEND_LEVEL,
    full_backend_optimization,
)


def test_full_backend_level_on_cpu_and_same_numbers():
    assert full_backend_optimization() == {BACKEND_LEVEL_OPTION: FULL_BACKEND_LEVEL}
    model = DigitCNN(10)
    x = jax.random.uniform(jax.random.key(0), (16, 8, 8, 1))
    params = model.init(jax.random.key(1), x[:1])

    def loss(p):
        return jnp.sum(model.apply(p, x)[0] ** 2)

    plain = jax.jit(jax.grad(loss))(params)
    full = jax.jit(jax.grad(loss), compiler_options=full_backend_optimization())(params)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(full)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_tasks_default_to_no_options_and_the_autoencoder_asks_for_the_full_level():
    from jaxflows.models.autoencoder import AutoencoderTask

    assert Task.compiler_options(object.__new__(Task)) == {}
    task = object.__new__(AutoencoderTask)
    assert task.compiler_options() == full_backend_optimization()
