"""The autoregressive token model: causality, cached decoding, training, sampling, writing."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

pytest.importorskip("rdkit")
pytest.importorskip("selfies")

from jaxflows.chem import selfies_vocab as sv  # noqa: E402
from jaxflows.data.source_transforms import PaddedTokenSource  # noqa: E402
from jaxflows.errors import ConfigError  # noqa: E402
from jaxflows.models.token_ar import (  # noqa: E402
    TASK,
    TokenAR,
    TokenARTask,
    default_model_config,
    token_nll,
)
from jaxflows.train.task import DataInfo, load_task_class  # noqa: E402

MOLECULES = ["CCO", "c1ccccc1", "CC(=O)O", "CCN", "OCC(O)CO", "CC(C)C", "C1CCCCC1", "CCOC"]


def _dataset():
    """(vocabulary, padded batch {tokens [N, L], length [N]}) of MOLECULES."""
    tokens = [sv.smiles_to_tokens(s)[1] for s in MOLECULES]
    vocab = sv.Vocabulary.from_sequences(tokens)
    L = max(len(t) for t in tokens) + 1

    class Src:
        def __len__(self):
            return len(tokens)

        def __getitem__(self, i):
            return {"tokens": vocab.encode(tokens[i])}

    batch = PaddedTokenSource(Src(), L).get_batch(np.arange(len(tokens)))
    return vocab, {k: jnp.asarray(v) for k, v in batch.items()}


def _task(vocab, L, **model):
    config = ml_collections.ConfigDict()
    config.dtype = "float32"
    config.model = default_model_config(**{"width": 32, "num_layers": 2, "head_dim": 16,
                                           "mlp_ratio": 2, **model})
    spec = {"tokens": jax.ShapeDtypeStruct((L,), jnp.int32),
            "length": jax.ShapeDtypeStruct((), jnp.int32)}
    info = DataInfo(element_spec=spec, num_train=len(MOLECULES),
                    metadata={"vocab": list(vocab.tokens), "max_length": L - 1})
    return TokenARTask(config, info)


@pytest.fixture(scope="module")
def setup():
    vocab, batch = _dataset()
    L = batch["tokens"].shape[1]
    task = _task(vocab, L)
    params = jax.jit(task.init)(jax.random.key(0), batch)
    task.logits = jax.jit(task.logits)  # the tests call it many times
    return vocab, batch, task, params


def test_task_module_and_spec(setup):
    vocab, batch, task, _ = setup
    assert TASK is TokenARTask
    assert load_task_class("jaxflows.models.token_ar") is TokenARTask
    assert default_model_config().name == "jaxflows.models.token_ar"
    L = batch["tokens"].shape[1]
    assert task.example_spec() == {"tokens": jax.ShapeDtypeStruct((L,), jnp.int32),
                                   "length": jax.ShapeDtypeStruct((), jnp.int32)}
    assert task.best_metric == "loss" and task.sample_options == {"temperature": 1.0}
    with pytest.raises(KeyError):
        default_model_config(nope=1)


def test_config_errors():
    vocab, batch = _dataset()
    L = batch["tokens"].shape[1]
    with pytest.raises(ConfigError, match="multiple"):
        _task(vocab, L, width=30)
    config = ml_collections.ConfigDict({"model": default_model_config()})
    spec = {"tokens": jax.ShapeDtypeStruct((L,), jnp.int32)}
    with pytest.raises(ConfigError, match="pad_tokens"):
        TokenARTask(config, DataInfo(spec, 8, metadata={"vocab": list(vocab.tokens)}))
    spec["length"] = jax.ShapeDtypeStruct((), jnp.int32)
    with pytest.raises(ConfigError, match="vocab"):
        TokenARTask(config, DataInfo(spec, 8))


def test_logits_are_causal(setup):
    """Logits at position t depend on tokens < t only (perturbing tokens >= t changes nothing
    before t), and do depend on the token just before t."""
    vocab, batch, task, params = setup
    tokens = batch["tokens"]
    L = tokens.shape[1]
    base = task.logits(params, tokens)
    assert base.shape == (len(MOLECULES), L, len(vocab)) and base.dtype == jnp.float32
    rng = np.random.default_rng(0)
    for t in range(L):
        other = np.asarray(tokens).copy()
        other[:, t:] = rng.integers(2, len(vocab), size=other[:, t:].shape)
        pert = task.logits(params, jnp.asarray(other))
        np.testing.assert_allclose(pert[:, : t + 1], base[:, : t + 1], atol=1e-5, rtol=0)
        if t + 1 < L:
            assert not np.allclose(pert[:, t + 1:], base[:, t + 1:], atol=1e-5)


def test_logits_causal_by_jacobian(setup):
    """d logits[t] / d embedding[s] = 0 for s >= t (jacfwd through the input embeddings)."""
    vocab, batch, task, params = setup
    model, p = task.model, params
    tokens = batch["tokens"][:1]
    L = tokens.shape[1]

    def logits_of_inputs(x):  # x: the input embeddings [1, L, C] (start + shifted tokens)
        def f(mdl):
            h, _ = mdl.transformer(x)
            return mdl._logits(h)
        return nn_apply(model, p, f)

    x0 = _input_embeddings(model, p, tokens)
    jac = jax.jit(jax.jacfwd(logits_of_inputs))(x0)  # [1, L, V, 1, L, C]
    dep = np.abs(np.asarray(jac)).sum(axis=(0, 2, 3, 5))  # [L (out), L (in)]
    assert np.all(dep[np.triu_indices(L, k=1)] == 0)  # output t never sees input s > t
    assert np.all(np.diag(dep) > 0)  # input position t (token t-1 / <start>) feeds output t


def nn_apply(model, params, fn):
    import flax.linen as nn

    return model.apply({"params": nn.unbox(params)}, method=fn)


def _input_embeddings(model, params, tokens):
    def f(mdl):
        b = tokens.shape[0]
        inputs = jnp.concatenate([jnp.zeros((b, 1), tokens.dtype), tokens[:, :-1]], axis=1)
        return jnp.take(mdl.embed, inputs, axis=0) + mdl.pos[None, : tokens.shape[1]]
    return nn_apply(model, params, f)


def test_cached_steps_match_the_parallel_pass(setup):
    import flax.linen as nn

    from jaxflows.nn.transformer import init_cache

    vocab, batch, task, params = setup
    m, p = task.model, nn.unbox(params)
    tokens = batch["tokens"]
    B, L = tokens.shape
    full = task.logits(params, tokens)
    cache = init_cache(m.num_layers, B, L, m.width // m.head_dim, m.head_dim, jnp.float32)
    prev = jnp.zeros((B,), jnp.int32)
    step = jax.jit(lambda prev, t, cache: m.apply({"params": p}, prev, t, cache,
                                                   method=TokenAR.step))
    for t in range(L):
        logits, cache = step(prev, jnp.int32(t), cache)
        np.testing.assert_allclose(logits, full[:, t], atol=2e-5, rtol=1e-5)
        prev = tokens[:, t]


def test_nll_masks_after_the_first_stop(setup):
    vocab, batch, task, params = setup
    logits = task.logits(params, batch["tokens"])
    nll, count = token_nll(logits, batch["tokens"], batch["length"])
    np.testing.assert_array_equal(count, batch["length"] + 1)
    logp = np.asarray(jax.nn.log_softmax(logits))
    tokens, lengths = np.asarray(batch["tokens"]), np.asarray(batch["length"])
    for i in range(len(MOLECULES)):
        n = int(lengths[i])
        want = -sum(float(logp[i, t, tokens[i, t]]) for t in range(n + 1))
        np.testing.assert_allclose(nll[i], want, rtol=1e-5)
    # padding after the first <stop> does not matter
    other = np.asarray(batch["tokens"]).copy()
    i = int(np.argmin(batch["length"]))
    other[i, int(batch["length"][i]) + 1:] = 2
    nll2, _ = token_nll(task.logits(params, jnp.asarray(other)), jnp.asarray(other),
                        batch["length"])
    np.testing.assert_allclose(nll2[i], nll[i], rtol=1e-6)
    m = task.eval_batch(params, batch, jax.random.key(0))
    assert set(m) == {"loss", "nll", "nll_per_token"}
    assert all(v.shape == (len(MOLECULES),) for v in m.values())
    np.testing.assert_allclose(m["nll"], nll, rtol=1e-6)
    np.testing.assert_allclose(m["nll_per_token"], nll / (batch["length"] + 1), rtol=1e-6)


def test_loss_decreases_with_adam(setup):
    vocab, batch, task, params = setup
    opt = optax.adam(3e-3)
    state = opt.init(params)

    @jax.jit
    def step(params, state, i):
        (loss, _), grads = jax.value_and_grad(task.loss, has_aux=True)(
            params, batch, jax.random.key(0), i)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    losses = []
    for i in range(300):
        params, state, loss = step(params, state, i)
        losses.append(float(loss))
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.2 * losses[0], (losses[0], losses[-1])
    # the trained model, decoded greedily, reproduces training molecules
    greedy = task.sample(params, jax.random.key(1), 64, temperature=0.0)
    assert len(set(greedy)) == 1  # greedy decoding ignores the rng
    with sv.quiet_rdkit():
        train = {sv.canonical_smiles(s) for s in MOLECULES}
        assert sv.canonical_smiles(greedy[0]) in train
        drawn = [sv.canonical_smiles(s) for s in task.sample(params, jax.random.key(2), 64)]
    assert sum(s in train for s in drawn) >= 32  # mostly memorised molecules


def test_sample_returns_decodable_smiles(setup, tmp_path):
    vocab, batch, task, params = setup
    ids = task.sample_ids(params, jax.random.key(3), 12)
    L = batch["tokens"].shape[1]
    assert ids.shape == (12, L) and ids.dtype == np.int32
    assert (ids != sv.START_ID).all()
    for row in ids:  # after the first <stop>, only <stop>
        stops = np.flatnonzero(row == sv.STOP_ID)
        if stops.size:
            assert (row[stops[0]:] == sv.STOP_ID).all()
    smiles = task.sample(params, jax.random.key(3), 12, temperature=1.0)
    assert len(smiles) == 12 and all(isinstance(s, str) for s in smiles)
    assert smiles == [vocab.decode(r) for r in ids]
    with sv.quiet_rdkit():  # SELFIES decodes to valid molecules (or nothing)
        assert all(s == "" or sv.canonical_smiles(s) is not None for s in smiles)
    # the same rng gives the same samples; chunked sampling works
    assert task.sample(params, jax.random.key(3), 12) == smiles
    chunked = _task(vocab, L, sample_batch_size=5)
    assert len(chunked.sample(params, jax.random.key(3), 10)) == 10
    with pytest.raises(ConfigError, match="unknown sample options"):
        task.sample(params, jax.random.key(0), 2, guidance=1.0)
    # write_samples: one SMILES per line, in order, empty decodes as empty lines
    path = tmp_path / "out" / "samples.smi"
    written = task.write_samples(smiles + [""], str(path))
    assert written == str(path)
    assert path.read_text().split("\n")[:-1] == smiles + [""]
    assert not list(path.parent.glob("*.tmp*"))
