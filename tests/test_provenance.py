"""Provenance helpers: the parameter fingerprint that names a pretrained model in results."""

import jax.numpy as jnp
import numpy as np

from jaxflows.provenance import params_fingerprint


def test_params_fingerprint_is_bitwise():
    """Equal trees share the fingerprint; one changed bit, a dtype, a shape or a key change it."""
    tree = {"a": jnp.arange(6, dtype=jnp.float32).reshape(2, 3), "b": {"c": jnp.ones(4)}}
    fp = params_fingerprint(tree)
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert params_fingerprint(jax_copy(tree)) == fp
    bits = np.asarray(tree["a"]).view(np.uint32).copy()
    bits[0, 1] ^= 1
    flipped = {**tree, "a": jnp.asarray(bits.view(np.float32))}
    assert params_fingerprint(flipped) != fp
    assert params_fingerprint({**tree, "a": tree["a"].astype(jnp.float16)}) != fp
    assert params_fingerprint({**tree, "a": tree["a"].reshape(3, 2)}) != fp
    assert params_fingerprint({"x": tree["a"], "b": tree["b"]}) != fp


def jax_copy(tree):
    """A structurally equal tree of fresh arrays."""
    return {"a": jnp.array(np.asarray(tree["a"])), "b": {"c": jnp.array(np.ones(4))}}
