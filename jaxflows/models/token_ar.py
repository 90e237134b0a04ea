"""A small autoregressive model of token sequences (SELFIES molecules): a causal Transformer LM.

The model reads ``<start>, x_1, ..., x_{L-1}`` and predicts ``x_1, ..., x_L`` (token ``t`` from
the tokens before it), where ``x`` is a sequence padded with ``<stop>`` (id 1) to length ``L``
by the ``pad_tokens`` data transform (``L`` = longest sequence + 1, as NF-BO, Lee et al.,
ICLR 2025, pads its SELFIES; official code ``mlvlab/NFBO``). The loss is the cross-entropy of
the real tokens and the first ``<stop>``; the padding after it is masked out, so ``nll`` is
``-log p(molecule)`` in nats (the model of a sequence that ends at its first ``<stop>``).

Layers: token embedding + learned position embedding -> :class:`jaxflows.nn.transformer.
Transformer` (pre-LN, causal, ``nn.scan`` over layers, KV cache) -> LayerNorm -> vocabulary
logits. Sampling decodes ``L`` positions with the KV cache in one jitted ``lax.scan`` and
returns SMILES strings (:class:`jaxflows.chem.selfies_vocab.Vocabulary`).

Batches: ``tokens`` int32 ``[B, L]``, ``length`` int32 ``[B]`` (real tokens before the first
``<stop>``), plus ``mask`` in evaluation. ``config.model`` keys: see :func:`default_model_config`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax import lax

from jaxflows.errors import ConfigError
from jaxflows.nn.transformer import (
    Transformer,
    init_cache,
    layer_norm,
    remat_policy_name,
    torch_uniform_init,
    unstack_layer_params,
)
from jaxflows.train.task import DataInfo, ElementSpec, Metrics, PyTree, Task, masked_mean, to_host

START_ID = 0
STOP_ID = 1


def default_model_config(**overrides: Any) -> ml_collections.ConfigDict:
    """``config.model`` for :class:`TokenARTask` with every key it reads; ``overrides`` must
    name existing keys."""
    m = ml_collections.ConfigDict(dict(
        name="jaxflows.models.token_ar",
        width=128,  # model width C (a multiple of head_dim)
        num_layers=4,
        head_dim=32,
        mlp_ratio=4,
        embed_init_std=0.02,  # N(0, std) token and position embeddings
        remat="none",  # Transformer layers in the backward pass: none | full | a jax policy
        attention="einsum",  # parallel-pass attention: einsum | xla | cudnn | auto
        sample_batch_size=0,  # sequences per jitted sampling call (0 = all at once)
    ))
    for k, v in overrides.items():
        if k not in m:
            raise KeyError(f"unknown token_ar model key {k!r}")
        m[k] = v
    return m


class TokenAR(nn.Module):
    """Causal Transformer LM over ``vocab_size`` tokens, sequences of ``max_len`` positions.

    ``__call__(tokens [B, L]) -> logits [B, L, V]`` (float32): position ``t`` sees ``<start>``
    and ``tokens[:, :t]`` only. :meth:`step` is one cached decoding position.
    """

    vocab_size: int
    max_len: int
    width: int
    num_layers: int
    head_dim: int = 32
    mlp_ratio: int = 4
    embed_init_std: float = 0.02
    dtype: Any = jnp.float32
    remat: bool | str = False
    attention_impl: str = "einsum"

    def setup(self):
        init = nn.initializers.normal(self.embed_init_std)
        self.embed = self.param("embed", nn.with_logical_partitioning(init, ("vocab", "embed")),
                                (self.vocab_size, self.width), jnp.float32)
        self.pos = self.param("pos", nn.with_logical_partitioning(init, ("seq", "embed")),
                              (self.max_len, self.width), jnp.float32)
        self.transformer = Transformer(
            self.width, self.num_layers, self.head_dim, self.mlp_ratio, self.dtype,
            remat=self.remat, attention_impl=self.attention_impl)
        ones, zeros = nn.initializers.ones, nn.initializers.zeros
        self.norm_scale = self.param(
            "norm_scale", nn.with_logical_partitioning(ones, ("embed",)), (self.width,))
        self.norm_bias = self.param(
            "norm_bias", nn.with_logical_partitioning(zeros, ("embed",)), (self.width,))
        self.head_kernel = self.param(
            "head_kernel",
            nn.with_logical_partitioning(torch_uniform_init(self.width), ("embed", "vocab")),
            (self.width, self.vocab_size))
        self.head_bias = self.param(
            "head_bias", nn.with_logical_partitioning(zeros, ("vocab",)), (self.vocab_size,))

    def _logits(self, h: jax.Array) -> jax.Array:
        h = layer_norm(h, self.norm_scale, self.norm_bias, 1e-5).astype(self.dtype)
        logits = jnp.einsum("...c,cv->...v", h, self.head_kernel.astype(self.dtype),
                            preferred_element_type=jnp.float32)
        return logits + self.head_bias

    def __call__(self, tokens: jax.Array) -> jax.Array:
        """``tokens: int [B, L]`` -> next-token logits float32 ``[B, L, V]``."""
        b, length = tokens.shape
        if length > self.max_len:
            raise ValueError(f"sequences of {length} tokens exceed max_len {self.max_len}")
        inputs = jnp.concatenate(
            [jnp.full((b, 1), START_ID, tokens.dtype), tokens[:, :-1]], axis=1)
        x = jnp.take(self.embed, inputs, axis=0) + self.pos[None, :length]
        h, _ = self.transformer(x.astype(self.dtype))
        return self._logits(h)

    def step(self, prev: jax.Array, position: jax.Array, cache):
        """One decoding position: ``prev: int [B]`` (the token at ``position - 1``, or
        ``<start>``), ``position``: scalar -> ``(logits [B, V], cache)``."""
        x = jnp.take(self.embed, prev, axis=0) + lax.dynamic_index_in_dim(
            self.pos, position, axis=0, keepdims=False)
        h, cache = self.transformer(x[:, None, :].astype(self.dtype), cache=cache,
                                    start=position)
        return self._logits(h[:, 0]), cache


def token_nll(logits: jax.Array, tokens: jax.Array, length: jax.Array) -> tuple[jax.Array,
                                                                               jax.Array]:
    """``(nll [B], count [B])``: summed cross-entropy of positions ``0..length`` (the real
    tokens and the first ``<stop>``) and the number of those positions."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    tok = jnp.take_along_axis(logp, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
    keep = (jnp.arange(tokens.shape[1])[None, :] <= length[:, None]).astype(jnp.float32)
    return -jnp.sum(tok * keep, axis=-1), jnp.sum(keep, axis=-1)




class TokenARTask(Task):
    """Autoregressive token model (``config.model.name = 'jaxflows.models.token_ar'``).

    Needs data fields ``tokens`` int32 ``[L]`` and ``length`` int32 ``[]`` (the ``pad_tokens``
    transform) and a vocabulary in the data's metadata (``metadata['vocab']``, a token list
    with ``<start>`` = 0 and ``<stop>`` = 1).
    """

    best_metric = "loss"
    sample_options = {"temperature": 1.0}

    def __init__(self, config: ml_collections.ConfigDict, data_info: DataInfo):
        super().__init__(config, data_info)
        spec = data_info.element_spec
        if "tokens" not in spec or "length" not in spec:
            raise ConfigError(
                f"token_ar needs data fields 'tokens' and 'length'; the data has {sorted(spec)}",
                hint='add "pad_tokens" to config.data.transforms')
        if len(spec["tokens"].shape) != 1 or spec["tokens"].shape[0] is None:
            raise ConfigError(f"token_ar needs tokens of one length [L], got shape "
                              f"{tuple(spec['tokens'].shape)}", hint="use the pad_tokens transform")
        vocab = (data_info.metadata or {}).get("vocab")
        if not vocab:
            raise ConfigError("token_ar needs the data's vocabulary (metadata['vocab'])",
                              hint="use a token dataset such as moses_selfies")
        from jaxflows.chem.selfies_vocab import Vocabulary

        self.vocab = Vocabulary(vocab)
        self.max_len = int(spec["tokens"].shape[0])
        m = config.model
        width, head_dim = int(m.width), int(m.head_dim)
        if width < 1 or head_dim < 1 or width % head_dim:
            raise ConfigError(f"config.model.width={width} must be a positive multiple of "
                              f"config.model.head_dim={head_dim}")
        if int(m.num_layers) < 1:
            raise ConfigError(f"config.model.num_layers must be >= 1, got {m.num_layers}")
        self.model = TokenAR(
            vocab_size=len(self.vocab),
            max_len=self.max_len,
            width=width,
            num_layers=int(m.num_layers),
            head_dim=head_dim,
            mlp_ratio=int(m.get("mlp_ratio", 4)),
            embed_init_std=float(m.get("embed_init_std", 0.02)),
            dtype=jnp.dtype(config.get("dtype", "float32")),
            remat=remat_policy_name(m.get("remat", "none")),
            attention_impl=str(m.get("attention", "einsum")),
        )
        self.sample_batch_size = int(m.get("sample_batch_size", 0))
        self._sample_jit = jax.jit(self._sample_ids, static_argnums=(2,))

    # --- helpers -------------------------------------------------------------------------
    def logits(self, params: PyTree, tokens: jax.Array) -> jax.Array:
        """Next-token logits ``[B, L, V]`` of ``tokens: int [B, L]``."""
        return self.model.apply({"params": nn.unbox(params)}, tokens)

    def nll(self, params: PyTree, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        """``(nll [B] in nats per molecule, scored positions [B])``."""
        return token_nll(self.logits(params, batch["tokens"]), batch["tokens"],
                         batch["length"])

    # --- Task contract -------------------------------------------------------------------
    def example_spec(self) -> ElementSpec:
        spec = self.data_info.element_spec
        return {"tokens": jax.ShapeDtypeStruct(tuple(spec["tokens"].shape), jnp.int32),
                "length": jax.ShapeDtypeStruct((), jnp.int32)}

    def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> PyTree:
        return self.model.init({"params": rng}, batch["tokens"])["params"]

    def loss(
        self, params: PyTree, batch: dict[str, jax.Array], rng: jax.Array, step: jax.Array
    ) -> tuple[jax.Array, Metrics]:
        """Mean ``-log p(molecule)`` over the batch; metrics ``nll_per_token``."""
        del rng, step
        nll, count = self.nll(params, batch)
        mask = batch.get("mask")
        loss = masked_mean(nll, mask)
        per_token = masked_mean(nll, mask) / jnp.maximum(masked_mean(count, mask), 1.0)
        return loss, {"nll_per_token": per_token}

    def eval_batch(self, params: PyTree, batch: dict[str, jax.Array], rng: jax.Array) -> Metrics:
        """Per-example ``nll`` (nats per molecule, = ``loss``) and ``nll_per_token``."""
        del rng
        nll, count = self.nll(params, batch)
        return {"loss": nll, "nll": nll, "nll_per_token": nll / jnp.maximum(count, 1.0)}

    # --- sampling ------------------------------------------------------------------------
    def _sample_ids(self, params: PyTree, rng: jax.Array, num: int,
                    temperature: jax.Array) -> jax.Array:
        """``num`` sequences int32 ``[num, L]``; positions after the first ``<stop>`` are
        ``<stop>``; ``temperature <= 0`` decodes greedily. ``<start>`` is never drawn."""
        params = unstack_layer_params(nn.unbox(params))  # no weight slicing per position
        m = self.model
        cache = init_cache(m.num_layers, num, self.max_len, m.width // m.head_dim, m.head_dim,
                           jnp.float32)
        temperature = jnp.asarray(temperature, jnp.float32)

        def body(carry, t):
            prev, cache, done = carry
            logits, cache = m.apply({"params": params}, prev, t, cache, method=TokenAR.step)
            logits = logits.at[:, START_ID].set(-jnp.inf)
            drawn = jax.random.categorical(jax.random.fold_in(rng, t),
                                           logits / jnp.maximum(temperature, 1e-6))
            tok = jnp.where(temperature > 0, drawn, jnp.argmax(logits, axis=-1))
            tok = jnp.where(done, STOP_ID, tok).astype(jnp.int32)
            return (tok, cache, done | (tok == STOP_ID)), tok

        start = jnp.full((num,), START_ID, jnp.int32)
        init = (start, cache, jnp.zeros((num,), bool))
        _, toks = lax.scan(body, init, jnp.arange(self.max_len, dtype=jnp.int32))
        return toks.T

    def sample_ids(self, params: PyTree, rng: jax.Array, num: int,
                   temperature: float = 1.0) -> np.ndarray:
        """``num`` token sequences, int32 ``[num, L]`` (numpy), in chunks of
        ``config.model.sample_batch_size``."""
        chunk = self.sample_batch_size or num
        out = []
        for i, start in enumerate(range(0, num, chunk)):
            n = min(chunk, num - start)
            ids = self._sample_jit(params, jax.random.fold_in(rng, i), n,
                                   jnp.float32(temperature))
            out.append(to_host(ids))
        return np.concatenate(out) if out else np.zeros((0, self.max_len), np.int32)

    def sample(self, params: PyTree, rng: jax.Array, num: int, **options) -> list[str]:
        """``num`` molecules as SMILES strings (``selfies.decoder`` output, not canonicalised;
        ``''`` where the sequence is empty, i.e. ``<stop>`` first). Options: ``temperature``
        (softmax temperature; ``<= 0`` = greedy)."""
        unknown = set(options) - set(self.sample_options)
        if unknown:
            raise ConfigError(f"token_ar: unknown sample options {sorted(unknown)}; known: "
                              f"{sorted(self.sample_options)}")
        temperature = float(options.get("temperature", self.sample_options["temperature"]))
        ids = self.sample_ids(params, rng, int(num), temperature)
        return [self.vocab.decode(row) for row in ids]

    def write_samples(self, samples: list[str], path: str) -> str:
        """Writes one SMILES per line, in sample order (an empty decode is an empty line, so
        line ``i`` is sample ``i``; judging validity is left to the reader). Atomic. Returns
        ``path``."""
        from jaxflows.chem.selfies_vocab import write_smiles_lines

        return write_smiles_lines(samples, path)


TASK = TokenARTask
