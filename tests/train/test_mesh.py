"""Logical-name sharding rules resolve to mesh axes, skipping axes that do not divide."""

import jax
import pytest
from jax.sharding import PartitionSpec as P

from jaxflows.errors import ConfigError
from jaxflows.train import mesh as mesh_lib
from jaxflows.train.config import base_config

RULES = base_config().sharding_rules


def _mesh(data, fsdp, tensor):
    c = base_config()
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = data, fsdp, tensor
    return mesh_lib.make_mesh(c.mesh)


def test_mesh_shape_and_axes():
    m = _mesh(2, 4, 1)
    assert dict(m.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    assert m.size == jax.device_count()


def test_logical_to_spec():
    m = _mesh(2, 2, 2)
    assert mesh_lib.logical_to_spec(("embed", "hidden"), (64, 32), m, RULES) == P("fsdp", "tensor")
    # 3 is not divisible by fsdp=2: that dimension stays replicated
    assert mesh_lib.logical_to_spec(("embed", "hidden"), (3, 32), m, RULES) == P(None, "tensor")
    # unknown / None names are replicated
    assert mesh_lib.logical_to_spec(("layers", None), (4, 4), m, RULES) == P(None, None)
    # batch maps to a tuple of axes
    assert mesh_lib.logical_to_spec(("batch",), (8,), m, RULES) == P(("data", "fsdp"))


def test_use_cpu_devices_after_start_accepts_only_the_current_count():
    have = len(jax.devices("cpu"))  # the test session's backends are running
    mesh_lib.use_cpu_devices(have)  # nothing to change
    with pytest.raises(ConfigError, match=f"already started with {have} CPU device"):
        mesh_lib.use_cpu_devices(have + 1)
    with pytest.raises(ConfigError, match="must be >= 1"):
        mesh_lib.use_cpu_devices(0)
