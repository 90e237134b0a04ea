"""SeqFlow as an engine task: NF-BO's training objective, evaluation and prior sampling.

Model: :mod:`jaxflows.models.seqflow` (NF-BO, Lee et al., ICLR 2025; official code
``mlvlab/NFBO``, ``generative_model/model/seqflow/lstm_flow.py``). Data: ``moses_selfies``
padded with ``<stop>`` to ``L`` = longest + 1 (``pad_tokens``): ``tokens`` int32 ``[L]``.

**Loss** (paper Eq. 14, code reduction): per token ``-log p(v_t) + lambda * L_sim,t``, summed
over the ``L`` positions and averaged over the batch (nats per molecule), where

* ``v = normalize(E[x]) + 0.1 * eps`` is the variational dequantisation, **constrained**: a
  token whose noisy vector does not decode back to itself (``argmax cos``) gets fresh noise, at
  most ``dequant_tries`` (100) rounds (a ``lax.while_loop`` over fixed-size arrays with a mask;
  it stops early when every token decodes). The noise is drawn with the embedding held fixed,
  so gradients reach ``E`` through ``v = normalize(E[x]) + 0.1 * eps`` exactly as in the code;
* ``L_sim,t = (1 - cos(v_t, E[x_t])) + max(0, cos(v_t, E[j_t]))`` with ``j_t`` a uniformly
  drawn token (``CosineEmbeddingLoss`` with labels +1 / -1, margin 0; only the first term when
  ``j_t = x_t``). The official code pairs the cosine terms with the noisy vectors of *other*
  sequences of the batch (``repeat`` on a 3-D tensor tiles the batch axis); this follows the
  paper's Eq. 13, each token against its own vector, as the intent.

**Evaluation** (per molecule): ``loss``; ``nll_per_token`` (``-log p(v)`` of the dequantised
``v`` per position, nats); reconstruction of the clean encoding ``z = g(normalize(E[x]))``
through the sequential inverse and the left inverse (``argmax cos``, then every token after the
first ``<stop>`` forced to ``<stop>``): ``recon_token_acc`` (fraction of the ``L`` positions)
and ``recon_molecule_acc`` (all positions equal).

**Sampling**: ``z ~ N(0, temperature^2 I)``, decoded to SMILES through
:class:`jaxflows.models.seqflow_codec.SeqFlowCodec` (SELFIES round trip, validity mask; ``''``
for an invalid decode).
"""

from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxflows.errors import ConfigError
from jaxflows.models.seqflow import (
    SeqFlow,
    cosine_to_table,
    decode_latents,
    force_stop,
    gaussian_log_prob,
    nearest_tokens,
    normalize,
)
from jaxflows.train.task import DataInfo, ElementSpec, Metrics, PyTree, Task, masked_mean

#: The paper's configuration (``config/generative_model/seqflow.yaml`` of the official code).
PAPER = dict(features=40, hidden=500, lstm_layers=2, num_flow_layers=5, num_couplings=10,
             coupling_hidden=100, dropout=0.2, max_len=288)


def default_model_config(**overrides: Any) -> ml_collections.ConfigDict:
    """``config.model`` of :class:`SeqFlowTask` with every key it reads (the paper's values);
    ``overrides`` must name existing keys."""
    m = ml_collections.ConfigDict(dict(
        name="jaxflows.models.seqflow_task",
        **PAPER,          # max_len: positional one-hot size (0 = the data's L)
        noise=0.1,        # sigma of the dequantisation N(e_x, sigma^2 I)
        dequant_tries=100,  # constrained dequantisation: resampling rounds
        sim_weight=1.0,   # lambda of L_sim
        sample_batch_size=1000,  # molecules per jitted decoding call
    ))
    for k, v in overrides.items():
        if k not in m:
            raise KeyError(f"unknown seqflow model key {k!r}")
        m[k] = v
    return m


def dequantize(rng: jax.Array, v_clean: jax.Array, tokens: jax.Array, table: jax.Array,
               sigma: float, tries: int) -> tuple[jax.Array, jax.Array]:
    """Constrained dequantisation noise (module docstring): ``v_clean: [B, L, F]`` (held
    fixed), ``tokens: int [B, L]`` -> ``(eps [B, L, F], ok bool [B, L])``; ``v_clean + sigma *
    eps`` decodes to ``tokens`` wherever ``ok``."""
    v_clean = jax.lax.stop_gradient(v_clean)
    table = jax.lax.stop_gradient(table)

    def accepted(eps):
        return nearest_tokens(v_clean + sigma * eps, table) == tokens

    eps0 = jax.random.normal(jax.random.fold_in(rng, 0), v_clean.shape)
    ok0 = accepted(eps0)

    def cond(c):
        i, _, ok = c
        return (i <= tries) & ~jnp.all(ok)

    def body(c):
        i, eps, ok = c
        fresh = jax.random.normal(jax.random.fold_in(rng, i), v_clean.shape)
        eps = jnp.where(ok[..., None], eps, fresh)
        return i + 1, eps, accepted(eps)

    _, eps, ok = jax.lax.while_loop(cond, body, (jnp.int32(1), eps0, ok0))
    return eps, ok


def similarity_loss(v: jax.Array, tokens: jax.Array, table: jax.Array, rng: jax.Array
                    ) -> jax.Array:
    """Per-token ``(1 - cos(v, E[x])) + max(0, cos(v, E[j]))`` (``j`` uniform; the second term
    dropped when ``j = x``): ``[B, L]``."""
    sim = cosine_to_table(v, table)                                     # [B, L, V]
    pos = jnp.take_along_axis(sim, tokens[..., None], axis=-1)[..., 0]
    j = jax.random.randint(rng, tokens.shape, 0, table.shape[0])
    neg = jnp.take_along_axis(sim, j[..., None], axis=-1)[..., 0]
    return (1.0 - pos) + jnp.where(j == tokens, 0.0, jnp.maximum(neg, 0.0))


class SeqFlowTask(Task):
    """SeqFlow on token sequences (``config.model.name = 'jaxflows.models.seqflow_task'``).

    Needs ``tokens`` int32 ``[L]`` (the ``pad_tokens`` transform) and the vocabulary in the
    data's metadata (``metadata['vocab']``). Public pieces for other code (NF-BO):
    :meth:`encode`, :meth:`decode_tokens`, :meth:`log_prob`, :meth:`codec`.
    """

    best_metric = "loss"
    sample_options: ClassVar[dict[str, Any]] = {"temperature": 1.0}

    def __init__(self, config: ml_collections.ConfigDict, data_info: DataInfo):
        super().__init__(config, data_info)
        spec = data_info.element_spec
        if "tokens" not in spec or len(spec["tokens"].shape) != 1 or not spec["tokens"].shape[0]:
            raise ConfigError(
                f"seqflow needs a data field 'tokens' of one length [L]; the data has "
                f"{ {k: tuple(v.shape) for k, v in spec.items()} }",
                hint='add "pad_tokens" to config.data.transforms')
        vocab = (data_info.metadata or {}).get("vocab")
        if not vocab:
            raise ConfigError("seqflow needs the data's vocabulary (metadata['vocab'])",
                              hint="use a token dataset such as moses_selfies")
        from jaxflows.chem.selfies_vocab import Vocabulary

        self.vocab = Vocabulary(vocab)
        self.length = int(spec["tokens"].shape[0])
        m = config.model
        max_len = int(m.get("max_len", 0)) or self.length
        if max_len < self.length:
            raise ConfigError(f"config.model.max_len={max_len} is shorter than the data's "
                              f"sequences (L = {self.length})",
                              hint="use max_len=0 (the data's L) or a larger value")
        sizes = {k: int(m[k]) for k in ("features", "hidden", "lstm_layers", "num_flow_layers",
                                         "num_couplings", "coupling_hidden")}
        bad = {k: v for k, v in sizes.items() if v < 1}
        if bad or sizes["features"] < 2:
            raise ConfigError(f"seqflow sizes must be >= 1 (features >= 2), got {sizes}")
        if not 0.0 <= float(m.dropout) < 1.0:
            raise ConfigError(f"config.model.dropout must be in [0, 1), got {m.dropout}")
        self.noise = float(m.get("noise", 0.1))
        self.tries = int(m.get("dequant_tries", 100))
        self.sim_weight = float(m.get("sim_weight", 1.0))
        self.model = SeqFlow(vocab_size=len(self.vocab), max_len=max_len,
                             dropout=float(m.dropout), **sizes)
        self.sample_batch_size = int(m.get("sample_batch_size", 1000))
        self._codec = None

    # --- model pieces (public) -----------------------------------------------------------
    def table(self, params: PyTree) -> jax.Array:
        """The embedding table ``[V, F]`` (raw; every use normalises it)."""
        return nn.unbox(params)["embedding"]

    def encode(self, params: PyTree, tokens: jax.Array) -> jax.Array:
        """The clean encoding ``z = g(normalize(E[tokens]))``: ``int [B, L]`` -> ``[B, L, F]``."""
        p = nn.unbox(params)
        v = self.model.apply({"params": p}, tokens, method=SeqFlow.embed)
        return self.model.apply({"params": p}, v)[0]

    def log_prob(self, params: PyTree, v: jax.Array, *, rng: jax.Array | None = None
                 ) -> tuple[jax.Array, jax.Array]:
        """``(log p(v_t) per token [B, L], z [B, L, F])`` of ``v: [B, L, F]``; dropout on iff
        ``rng`` is given."""
        kw = {} if rng is None else {"rngs": {"dropout": rng}}
        z, ld = self.model.apply({"params": nn.unbox(params)}, v, deterministic=rng is None, **kw)
        return gaussian_log_prob(z) + ld, z

    def decode_tokens(self, params: PyTree, z: jax.Array) -> jax.Array:
        """The decoder: ``z: [B, L, F]`` -> tokens ``int32 [B, L]`` (sequential inverse, argmax
        cosine, everything after the first ``<stop>`` forced to ``<stop>``)."""
        p = nn.unbox(params)
        v, _ = decode_latents(self.model, p, z)
        return force_stop(nearest_tokens(v, p["embedding"]))

    def codec(self):
        """A :class:`~jaxflows.models.seqflow_codec.SeqFlowCodec` of this task (SMILES in and
        out, jitted once per batch size)."""
        if self._codec is None:
            from jaxflows.models.seqflow_codec import SeqFlowCodec

            self._codec = SeqFlowCodec(self, batch_size=self.sample_batch_size)
        return self._codec

    # --- Task contract -------------------------------------------------------------------
    def example_spec(self) -> ElementSpec:
        return {"tokens": jax.ShapeDtypeStruct((self.length,), jnp.int32)}

    def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> PyTree:
        v = jnp.zeros(batch["tokens"].shape + (self.model.features,), jnp.float32)
        return self.model.init({"params": rng}, v)["params"]

    def _terms(self, params, tokens, rng, train: bool):
        """Per-token ``(-log p(v), L_sim, dequantisation ok)``, each ``[B, L]``."""
        p = nn.unbox(params)
        table = p["embedding"]
        v_clean = normalize(jnp.take(table, tokens, axis=0))
        r_eps, r_sim, r_drop = jax.random.split(rng, 3)
        eps, ok = dequantize(r_eps, v_clean, tokens, table, self.noise, self.tries)
        v = v_clean + self.noise * eps
        logp, _ = self.log_prob(p, v, rng=r_drop if train else None)
        return -logp, similarity_loss(v, tokens, table, r_sim), ok

    def loss(self, params: PyTree, batch: dict[str, jax.Array], rng: jax.Array,
             step: jax.Array) -> tuple[jax.Array, Metrics]:
        """Mean over molecules of ``sum_t (-log p(v_t) + lambda L_sim,t)`` (nats); metrics
        ``nll_per_token``, ``sim_per_token``, ``dequant_failed`` (fraction of tokens still not
        decoding after the tries)."""
        del step
        nll, sim, ok = self._terms(params, batch["tokens"], rng, train=True)
        mask = batch.get("mask")
        per = jnp.sum(nll + self.sim_weight * sim, axis=-1)
        return masked_mean(per, mask), {
            "nll_per_token": masked_mean(jnp.mean(nll, -1), mask),
            "sim_per_token": masked_mean(jnp.mean(sim, -1), mask),
            "dequant_failed": masked_mean(jnp.mean(1.0 - ok.astype(jnp.float32), -1), mask)}

    def eval_batch(self, params: PyTree, batch: dict[str, jax.Array], rng: jax.Array) -> Metrics:
        """Per molecule: ``loss``, ``nll_per_token``, ``sim_per_token``, ``recon_token_acc``,
        ``recon_molecule_acc`` (module docstring)."""
        tokens = batch["tokens"]
        nll, sim, _ = self._terms(params, tokens, rng, train=False)
        rec = self.decode_tokens(params, self.encode(params, tokens))
        same = (rec == tokens).astype(jnp.float32)
        return {"loss": jnp.sum(nll + self.sim_weight * sim, -1),
                "nll_per_token": jnp.mean(nll, -1), "sim_per_token": jnp.mean(sim, -1),
                "recon_token_acc": jnp.mean(same, -1),
                "recon_molecule_acc": jnp.min(same, -1)}

    # --- sampling ------------------------------------------------------------------------
    def sample(self, params: PyTree, rng: jax.Array, num: int, **options) -> list[str]:
        """``num`` prior samples as SMILES (``''`` where the decode is not a valid molecule).
        Options: ``temperature`` (scale of ``z``)."""
        unknown = set(options) - set(self.sample_options)
        if unknown:
            raise ConfigError(f"seqflow: unknown sample options {sorted(unknown)}; known: "
                              f"{sorted(self.sample_options)}")
        temperature = float(options.get("temperature", 1.0))
        z = temperature * jax.random.normal(rng, (int(num), self.length, self.model.features))
        return self.codec().decode(params, np.asarray(z)).smiles

    def write_samples(self, samples: list[str], path: str) -> str:
        """One SMILES per line in sample order (an invalid decode is an empty line); atomic."""
        from jaxflows.chem.selfies_vocab import write_smiles_lines

        return write_smiles_lines(samples, path)


TASK = SeqFlowTask
