"""Per-computation XLA options: convolution steps compile at the full backend level inside a
process that lowers it (this suite runs at level 0, see ``tests/conftest.py``)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflows.eval.classifier import DigitCNN
from jaxflows.train.task import Task, zeros_batch
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


def test_the_engine_compiles_the_tasks_steps_with_its_options(tmp_path, data_dir, monkeypatch):
    """An option XLA does not know fails the compile of the train and eval steps: the engine
    passes ``Task.compiler_options()`` to them."""
    from helpers import TOY

    from jaxflows.train import load_config
    from jaxflows.train.loop import build

    config = load_config(f"{TOY}:default", [f"--config.data.data_dir={data_dir}"])
    monkeypatch.setattr(Task, "compiler_options", lambda self: {"xla_jaxflows_no_such_opt": 1})
    run = build(config)
    with jax.set_mesh(run.mesh):
        state = run.init_state()
        batch = {**zeros_batch(run.example_spec, 8), "mask": jnp.ones((8,), jnp.float32)}
        for fn, args in ((run.train_step, (state, batch)),
                         (run.eval_step, (state.params, batch, jax.random.key(0)))):
            with pytest.raises(Exception, match="xla_jaxflows_no_such_opt"):
                fn.lower(*jax.tree.map(
                    lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), args)).compile()
