"""TarFlow's memory options: rematerialisation leaves the loss and its gradients unchanged,
``jaxflows info`` names the attention kernel and remat policy its estimate assumes, and the
paper-scale rows run on an 8-device mesh without overrides."""

import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflows import cli
from jaxflows.errors import ConfigError
from jaxflows.models.tarflow import TarFlowModel
from jaxflows.models.tarflow_config import (
    default_model_config,
    model_from_config,
    validate_model_config,
)
from jaxflows.train.config import base_config
from jaxflows.train.config_loader import load_config_file
from jaxflows.train.loop import validate

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "configs"


def _model(remat: str, attention: str = "einsum") -> TarFlowModel:
    return TarFlowModel(image_shape=(8, 8, 1), patch_size=2, width=32, num_blocks=1,
                        layers_per_block=2, head_dim=16, num_classes=3, remat=remat,
                        attention_impl=attention)


def test_remat_on_off_same_loss_and_grads():
    x = jax.random.uniform(jax.random.key(0), (3, 8, 8, 1), minval=-1, maxval=1)
    y = jnp.array([0, 2, -1])
    # random weights of the right shapes (no compiled init), proj_out non-zero so the gradients
    # reach every layer
    shapes = nn.unbox(jax.eval_shape(_model("none").init, jax.random.key(1), x, y))["params"]
    rs = np.random.default_rng(0)
    params = jax.tree.map(
        lambda a: jnp.asarray(0.1 * rs.standard_normal(a.shape), jnp.float32), shapes)

    def loss_and_grads(m):
        def loss(p):
            z, logdet = m.apply({"params": p}, x, y)
            return 0.5 * jnp.mean(z**2) - jnp.mean(logdet)

        return jax.jit(jax.value_and_grad(loss))(params)

    ref_val, ref_g = loss_and_grads(_model("none"))
    val, g = loss_and_grads(_model("full", attention="chunked"))
    np.testing.assert_allclose(val, ref_val, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(ref_g)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_config_remat_and_attention_values():
    c = base_config()
    c.model = default_model_config(remat="full", attention="auto")
    m = model_from_config(c, (8, 8, 1))
    assert m.remat == "full" and m.attention_impl == "auto"
    c.model.remat = "sometimes"
    with pytest.raises(ConfigError, match="config.model.remat"):
        validate_model_config(c, (8, 8, 1))
    c.model.remat, c.model.attention = "none", "flash"
    with pytest.raises(ConfigError, match="config.model.attention"):
        validate_model_config(c, (8, 8, 1))


def test_info_names_attention_kernel_and_remat_policy(tmp_path, capsys):
    rc = cli.main([
        "info", "--config", f"{CONFIGS}/tarflow_imagenet64.py:smoke", "--no_compile",
        "--config.data.name=downsampled_imagenet/64x64", f"--config.data.data_dir={tmp_path}",
        "--config.model.attention=auto", "--config.model.remat=dots_saveable"])
    out = capsys.readouterr().out
    assert rc == 0, out
    lines = dict(ln.split(": ", 1) for ln in out.splitlines() if ": " in ln)
    assert lines["attention"] == "chunked (config.model.attention='auto' on cpu)"
    assert lines["remat"] == "dots_saveable"


PAPER_ROWS = ["tarflow_imagenet64.py:uncond", "tarflow_imagenet64.py:bpd",
              "tarflow_imagenet64.py:cond", "tarflow_afhq256.py:cond", "seqflow_moses.py:paper"]


@pytest.mark.parametrize("row", PAPER_ROWS)
def test_paper_rows_run_on_8_devices_without_overrides(row):
    """Batch and eval batch divide an 8-way data-parallel mesh; the TarFlow rows use the
    memory settings their `jaxflows info` estimate (< 80e9 bytes per device) was made with."""
    config = load_config_file(f"{CONFIGS / row}")
    assert validate(config, num_devices=8, num_processes=1) == (8, 1, 1)
    if row.startswith("tarflow"):
        assert (config.model.remat, config.model.attention) == ("full", "auto")
