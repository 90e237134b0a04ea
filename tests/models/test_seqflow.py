"""SeqFlow's math: exact inverse, log-det against jacfwd, causal structure, the official
parameter count, the LSTM against a direct reference, dequantisation and the loss."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxflows.models.seqflow import (
    STOP_ID,
    SeqFlow,
    decode_latents,
    force_stop,
    nearest_tokens,
    normalize,
    positional_codes,
)
from jaxflows.models.seqflow_task import (
    SeqFlowTask,
    default_model_config,
    dequantize,
    similarity_loss,
)
from jaxflows.nn.lstm import StackedLSTM
from jaxflows.train.task import DataInfo

SMALL = dict(vocab_size=7, max_len=6, features=6, hidden=8, num_flow_layers=2, num_couplings=2,
             coupling_hidden=8)


@pytest.fixture(scope="module")
def small():
    m = SeqFlow(**SMALL)
    v = jax.random.normal(jax.random.key(1), (3, 5, 6))
    params = nn.unbox(jax.jit(m.init)(jax.random.key(0), v)["params"])
    # move the couplings away from their near-identity start so the test means something
    params = jax.tree.map(lambda p: p * 4.0 if p.ndim == 2 else p + 0.3, params)
    return m, params, v


def test_inverse_is_exact(small):
    m, params, v = small
    z, ld = jax.jit(m.apply)({"params": params}, v)
    assert float(jnp.abs(z - v).max()) > 0.1  # not the identity
    v2, ld2 = jax.jit(lambda p, z: decode_latents(m, p, z))(params, z)
    np.testing.assert_allclose(v2, v, atol=2e-5)
    np.testing.assert_allclose(ld2, ld, atol=2e-4)


def test_log_det_matches_jacobian(small):
    m, params, v = small
    shape = (1,) + v.shape[1:]
    f = lambda x: m.apply({"params": params}, x.reshape(shape))[0].reshape(-1)
    jac = jax.jit(jax.jacfwd(f))(v[:1].reshape(-1))
    _, ld = jax.jit(m.apply)({"params": params}, v[:1])
    np.testing.assert_allclose(jnp.linalg.slogdet(jac)[1], ld.sum(), rtol=1e-4, atol=1e-4)


def test_causal_structure(small):
    m, params, v = small
    length, f = v.shape[1:]
    fn = lambda x: m.apply({"params": params}, x.reshape(1, length, f))[0].reshape(-1)
    jac = np.abs(np.asarray(jax.jit(jax.jacfwd(fn))(v[:1].reshape(-1))))
    jac = jac.reshape(length, f, length, f)
    blocks = jac.sum((1, 3)) > 0          # [token out, token in]
    np.testing.assert_array_equal(blocks, np.tril(np.ones((length, length), bool)))


def test_paper_parameter_count():
    m = SeqFlow(vocab_size=185, max_len=288)   # the official Guacamol vocabulary size
    shapes = jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((1, 4, 40))))
    assert sum(x.size for x in jax.tree.leaves(nn.unbox(shapes))) == 31_274_900


def test_lstm_matches_reference_equations():
    lstm = StackedLSTM(hidden=5, input_dim=3, num_layers=2)
    x = jax.random.normal(jax.random.key(0), (2, 4, 3))
    h0 = jax.random.normal(jax.random.key(1), (2, 2, 5))
    c0 = jax.random.normal(jax.random.key(2), (2, 2, 5))
    p = nn.unbox(lstm.init(jax.random.key(3), x, (h0, c0))["params"])
    out, (hT, cT) = jax.jit(lstm.apply)({"params": p}, x, (h0, c0))
    sig = lambda a: 1 / (1 + np.exp(-a))
    inp = np.asarray(x)
    for l in range(2):
        h, c = np.asarray(h0[l]), np.asarray(c0[l])
        outs = []
        for t in range(4):
            g = inp[:, t] @ p[f"w_ih_{l}"] + p[f"b_ih_{l}"] + h @ p[f"w_hh_{l}"] + p[f"b_hh_{l}"]
            i, f, gg, o = np.split(np.asarray(g), 4, -1)
            c = sig(f) * c + sig(i) * np.tanh(gg)
            h = sig(o) * np.tanh(c)
            outs.append(h)
        inp = np.stack(outs, 1)
        np.testing.assert_allclose(hT[l], h, atol=1e-5)
        np.testing.assert_allclose(cT[l], c, atol=1e-5)
    np.testing.assert_allclose(out, inp, atol=1e-5)
    # one step at a time gives the same
    state = (h0, c0)
    step = jax.jit(lambda p, x, s: lstm.apply({"params": p}, x, s, method=StackedLSTM.step))
    for t in range(4):
        o, state = step(p, x[:, t], state)
        np.testing.assert_allclose(o, out[:, t], atol=1e-5)


def test_positional_codes():
    pos = positional_codes(3, 5)
    assert pos.shape == (4, 10)
    np.testing.assert_array_equal(pos[0].nonzero()[0], [0, 5 + 2])
    np.testing.assert_array_equal(pos[2].nonzero()[0], [2, 5 + 0])
    assert not pos[3].any()
    with pytest.raises(ValueError, match="exceed"):
        positional_codes(6, 5)


def test_force_stop_and_left_inverse():
    toks = jnp.array([[3, 4, STOP_ID, 5, 6], [2, 2, 2, 2, 2]])
    np.testing.assert_array_equal(force_stop(toks), [[3, 4, 1, 1, 1], [2, 2, 2, 2, 2]])
    table = jax.random.normal(jax.random.key(0), (9, 4))
    ids = jnp.arange(9)
    np.testing.assert_array_equal(nearest_tokens(normalize(table[ids]) * 3.0, table), ids)


def test_dequantize_respects_the_constraint():
    table = jax.random.normal(jax.random.key(0), (6, 3))   # F = 3: noisy vectors often flip
    tokens = jax.random.randint(jax.random.key(1), (64, 5), 0, 6)
    v = normalize(table[tokens])
    eps, ok = jax.jit(dequantize, static_argnums=(4, 5))(jax.random.key(2), v, tokens, table,
                                                         0.6, 100)
    plain = nearest_tokens(v + 0.6 * jax.random.normal(jax.random.key(3), v.shape), table)
    assert float(jnp.mean(plain == tokens)) < 0.99   # the constraint has work to do
    assert bool(ok.all())
    np.testing.assert_array_equal(nearest_tokens(v + 0.6 * eps, table), tokens)


def test_similarity_loss_terms():
    table = jnp.eye(3)
    v = jnp.array([[[1.0, 0.0, 0.0]]])
    tokens = jnp.array([[0]])
    # whatever the negative token, the positive term is 0 and cos with any other basis is 0
    assert float(similarity_loss(v, tokens, table, jax.random.key(0))[0, 0]) == 0.0
    v2 = jnp.array([[[1.0, 1.0, 0.0]]])  # cos 0.707 to tokens 0 and 1
    sim = jax.jit(jax.vmap(lambda r: similarity_loss(v2, tokens, table, r)[0, 0]))
    vals = {round(float(x), 5) for x in sim(jax.random.split(jax.random.key(0), 40))}
    lo = 1 - 2 ** -0.5   # j = 0 (itself) or j = 2 (orthogonal): the positive term only
    assert sorted(vals) == pytest.approx([lo, lo + 2 ** -0.5], abs=1e-4)  # j = 1 adds cos = 0.707


def _task(**model):
    vocab = ["<start>", "<stop>", "[C]", "[N]", "[O]", "[=C]", "[Ring1]", "[Branch1]"]
    info = DataInfo({"tokens": jax.ShapeDtypeStruct((10,), jnp.int32)}, 100,
                    metadata={"vocab": vocab})
    c = ml_collections.ConfigDict()
    c.model = default_model_config(**{**dict(features=4, hidden=8, lstm_layers=1,
                                             num_flow_layers=1, num_couplings=2,
                                             coupling_hidden=8, max_len=0), **model})
    return SeqFlowTask(c, info)


def test_task_loss_gradients_and_reconstruction():
    task = _task()
    tokens = jnp.array([[2, 2, 4, 1, 1, 1, 1, 1, 1, 1], [3, 2, 5, 2, 6, 1, 1, 1, 1, 1]],
                       jnp.int32)
    params = nn.unbox(jax.jit(task.init)(jax.random.key(0), {"tokens": tokens}))
    step = jax.jit(jax.value_and_grad(
        lambda p: task.loss(p, {"tokens": tokens}, jax.random.key(1), 0), has_aux=True))
    (loss, metrics), g = step(params)
    assert np.isfinite(float(loss)) and float(metrics["dequant_failed"]) == 0.0
    assert float(jnp.abs(g["embedding"]).sum()) > 0   # the table learns through v and L_sim
    ev = jax.jit(task.eval_batch)(params, {"tokens": tokens}, jax.random.key(2))
    np.testing.assert_array_equal(ev["recon_molecule_acc"], [1.0, 1.0])


def test_task_rejects_bad_data():
    from jaxflows.errors import ConfigError

    info = DataInfo({"tokens": jax.ShapeDtypeStruct((10,), jnp.int32)}, 1, metadata={})
    c = ml_collections.ConfigDict()
    c.model = default_model_config()
    with pytest.raises(ConfigError, match="vocabulary"):
        SeqFlowTask(c, info)
    with pytest.raises(ConfigError, match="max_len"):
        _task(max_len=5)
