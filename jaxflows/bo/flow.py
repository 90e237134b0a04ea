"""SeqFlow as the BO loop uses it: load or build, encode, decode, TACS decoder, fine-tuning.

:class:`FlowOps` wraps a :class:`~jaxflows.models.seqflow_task.SeqFlowTask` with fixed-shape
jitted pieces, so a BO run compiles each of them once:

* encode / decode through a :class:`~jaxflows.models.seqflow_codec.SeqFlowCodec` whose chunk is
  ``decode_batch`` molecules (the last chunk is padded), latents flattened token-major to
  ``D = L * F`` (the GP's view);
* the TACS decoder: decoded tokens after the SELFIES round trip, ``-1`` on every position of an
  invalid decode (the released code leaves such rows NaN, so they count as changed everywhere);
* fine-tuning (released ``update_models_end_to_end``): ``epochs`` passes over the given token
  sequences in shuffled minibatches of ``batch_size`` (the last one partial, through the task's
  ``mask``), Adam (``learning_rate``) after global-norm clipping (``grad_clip``), the loss
  :meth:`SeqFlowTask.loss` (dropout on, as ``vae_model.train()``). One jitted step of a fixed
  batch shape; the Adam state is the caller's (it persists across fine-tunings, as the
  released optimiser does).

:func:`load_flow` returns ``(FlowOps, params)`` for a trained ``seqflow_moses`` workdir (its
evaluation params -- best by validation, else EMA, else latest -- or, with ``seqflow_params =
"latest"``, the live params of its newest checkpoint) or, when
none is given, a tiny SeqFlow with random parameters on a vocabulary built from given SMILES
(smoke runs and tests). Both are cached per process, so runs that share a model (an experiment
driver, a resumed run in the same process) reuse the compiled functions.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxflows.errors import UserError

log = logging.getLogger(__name__)

_CACHE: dict[tuple, tuple[FlowOps, object]] = {}


class FlowOps:
    """Fixed-shape SeqFlow operations for one task (module docstring)."""

    def __init__(self, task, *, decode_batch: int, learning_rate: float, batch_size: int,
                 grad_clip: float):
        from jaxflows.models.seqflow_codec import SeqFlowCodec

        self.task = task
        self.codec = SeqFlowCodec(task, batch_size=decode_batch)
        self.vocab = task.vocab
        self.length = int(task.length)
        self.features = int(task.model.features)
        self.dim = self.length * self.features
        self.batch_size = int(batch_size)
        self.optimizer = optax.chain(optax.clip_by_global_norm(grad_clip),
                                     optax.adam(learning_rate))
        self._step = jax.jit(self._step_fn)

    # --- latents <-> molecules -----------------------------------------------------------
    def encode(self, params, tokens: np.ndarray) -> np.ndarray:
        """Clean latents of ids ``int [N, L]``, flattened: ``float32 [N, L * F]``."""
        z = self.codec.encode_tokens(params, np.asarray(tokens, np.int32))
        return z.reshape(len(z), self.dim)

    def decode(self, params, z: np.ndarray):
        """``z: [N, L * F]`` -> :class:`~jaxflows.models.seqflow_codec.Decoded`."""
        return self.codec.decode(params, np.asarray(z, np.float32).reshape(len(z), self.dim))

    def tacs_decoder(self, params) -> Callable[[jax.Array], np.ndarray]:
        """``z [B, L, F] -> int [B, L]`` for :func:`jaxflows.bo.tacs.perturb_prob`: tokens after
        the round trip, ``-1`` on invalid rows."""

        def decode(z):
            dec = self.codec.decode(params, np.asarray(z, np.float32))
            return np.where(dec.valid[:, None], dec.tokens, -1).astype(np.int32)

        return decode

    def prior_sample(self, rng: jax.Array, num: int) -> np.ndarray:
        """``num`` latents from the base N(0, I): ``float32 [num, L * F]``."""
        return np.asarray(jax.random.normal(rng, (num, self.dim), jnp.float32))

    # --- fine-tuning ---------------------------------------------------------------------
    def _step_fn(self, params, opt_state, tokens, mask, rng):
        def loss_fn(p):
            loss, _ = self.task.loss(p, {"tokens": tokens, "mask": mask}, rng,
                                     jnp.zeros((), jnp.int32))
            return loss

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = self.optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def init_optimizer(self, params):
        """A fresh Adam state for ``params``."""
        return self.optimizer.init(params)

    def warmup(self, params, opt_state) -> None:
        """Compiles the fine-tuning step (a step on an all-masked batch, result discarded), so
        the first fine-tuning of a run does not compile inside the loop."""
        tokens = jnp.ones((self.batch_size, self.length), jnp.int32)
        mask = jnp.zeros((self.batch_size,), jnp.float32)
        out = self._step(params, opt_state, tokens, mask, jax.random.key(0))
        jax.block_until_ready(out)

    def finetune(self, params, opt_state, tokens: np.ndarray, rng: jax.Array,
                 np_rng: np.random.Generator, epochs: int = 1):
        """``epochs`` shuffled passes over ``tokens: int [N, L]`` -> ``(params, opt_state,
        mean loss)``; step ``s`` uses ``fold_in(rng, s)``."""
        tokens = np.asarray(tokens, np.int32)
        n, b = len(tokens), self.batch_size
        losses, s = [], 0
        for _ in range(int(epochs)):
            order = np_rng.permutation(n)
            for start in range(0, n, b):
                idx = order[start:start + b]
                mask = np.zeros(b, np.float32)
                mask[:len(idx)] = 1.0
                batch = np.full((b, self.length), 1, np.int32)
                batch[:len(idx)] = tokens[idx]
                params, opt_state, loss = self._step(params, opt_state, batch, mask,
                                                     jax.random.fold_in(rng, s))
                losses.append(loss)
                s += 1
        mean = float(np.mean(jax.device_get(losses))) if losses else float("nan")
        return params, opt_state, mean


def tiny_task(smiles: Sequence[str], model: ml_collections.ConfigDict):
    """``(task, params)``: a SeqFlowTask with random parameters on the vocabulary of ``smiles``
    (``L`` = longest SELFIES + 1), sizes from ``model`` (``config.tiny_model``)."""
    from jaxflows.chem.selfies_vocab import ConversionError, Vocabulary, smiles_to_tokens
    from jaxflows.models.seqflow_task import SeqFlowTask, default_model_config
    from jaxflows.train.task import DataInfo

    seqs = []
    for s in smiles:
        try:
            seqs.append(smiles_to_tokens(s)[1])
        except ConversionError:
            continue
    if not seqs:
        raise UserError("the tiny SeqFlow needs initial SMILES that RDKit and selfies can read")
    vocab = Vocabulary.from_sequences(seqs)
    length = max(len(t) for t in seqs) + 1
    info = DataInfo({"tokens": jax.ShapeDtypeStruct((length,), jnp.int32)}, len(seqs),
                    metadata={"vocab": vocab.to_list()})
    m = dict(model.to_dict())
    param_seed = int(m.pop("param_seed"))
    c = ml_collections.ConfigDict()
    c.model = default_model_config(max_len=0, **m)
    task = SeqFlowTask(c, info)
    params = jax.jit(task.init)(jax.random.key(param_seed),
                                {"tokens": jnp.ones((1, length), jnp.int32)})
    return task, jax.device_get(nn.unbox(params))


def load_flow(config: ml_collections.ConfigDict, init_smiles: Sequence[str] | None = None,
              data_dir: str | None = None) -> tuple[FlowOps, object]:
    """``(FlowOps, params)`` for ``config`` (``seqflow_workdir``, or the tiny model on
    ``init_smiles``); cached per process."""
    decode_batch = int(config.decode_batch) or config.num_anchors * config.batch_per_anchor
    ft = config.finetune
    opts = dict(decode_batch=decode_batch, learning_rate=float(ft.learning_rate),
                batch_size=int(ft.batch_size), grad_clip=float(ft.grad_clip))
    if config.seqflow_workdir:
        key = ("workdir", config.seqflow_workdir, config.seqflow_params, data_dir,
               json.dumps(opts, sort_keys=True))
    else:
        key = ("tiny", tuple(init_smiles or ()), json.dumps(config.tiny_model.to_dict(),
                                                             sort_keys=True),
               json.dumps(opts, sort_keys=True))
    if key not in _CACHE:
        if config.seqflow_workdir:
            from jaxflows.train.sample import load_trained

            task, params, step = load_trained(config.seqflow_workdir, data_dir=data_dir)
            params = jax.device_get(nn.unbox(params))
            if config.seqflow_params == "latest":
                params = latest_params(config.seqflow_workdir, params)
            log.info("loaded SeqFlow from %s (step %d, %s params)", config.seqflow_workdir,
                     step, config.seqflow_params)
        else:
            task, params = tiny_task(init_smiles or (), config.tiny_model)
        _CACHE[key] = (FlowOps(task, **opts), params)
    return _CACHE[key]


def latest_params(workdir: str, like):
    """The live ``params`` of ``workdir``'s newest checkpoint (not the best-by-validation or
    EMA copy that :func:`jaxflows.train.sample.load_trained` prefers), checked against ``like``.
    """
    from jaxflows.train.pretrained import check_same_structure, read_tree, subtree

    params = subtree(read_tree(workdir), "params", what=f"{workdir}'s checkpoint")
    check_same_structure(params, like, f"{workdir} params")
    return jax.tree.map(np.asarray, params)


def clear_cache() -> None:
    """Forgets the cached models (and their compiled functions)."""
    _CACHE.clear()
