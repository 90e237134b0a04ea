"""``config.model`` of STARFlow: the defaults, the checks, and the modules it describes.

:func:`default_model_config` lists every key :class:`jaxflows.models.starflow_task.StarFlowTask`
reads (experiment configs override fields); :func:`validate_model_config` checks the keys and
values before anything compiles (one :class:`jaxflows.errors.ConfigError` line naming the key);
:func:`model_from_config` builds the :class:`jaxflows.models.starflow.StarFlowModel` for a given
latent grid and :func:`autoencoder_from_config` the frozen
:class:`jaxflows.models.autoencoder.ConvAutoencoder`.

**Where the latents come from** (``config.model.autoencoder``):

* ``'none'``: the data are latents already (a field ``latent``, or ``image`` when the dataset has
  no ``latent`` field; ``config.data.image_shape`` is then the latent grid, e.g. 32x32x4 for SD's
  f8 VAE at 256 px). Used by the ImageNet / text-to-image configs, whose autoencoders are not
  part of this library.
* ``'random'``: a randomly initialised, frozen :class:`ConvAutoencoder` (``config.model.ae``
  describes it): smoke runs that need no pretrained autoencoder.
* anything else: the path of a trained autoencoder workdir (``jaxflows.models.autoencoder``).
  The experiment config loads its parameters into the ``autoencoder`` subtree with
  ``config.init_from = [{'path': WORKDIR, 'source': 'best_params', 'target': 'autoencoder'}]``
  and freezes them with ``config.optim.freeze = ('autoencoder/.*',)``; ``config.model.ae`` must
  describe its architecture (read it from the workdir's config.json, see
  :func:`ae_config_from_workdir`) and ``config.model.latent_scale`` its latent scale (from the
  workdir's ``latent_scale.json``).
"""

from __future__ import annotations

import difflib
import json
import os
from typing import Any

import jax.numpy as jnp
import ml_collections

from jaxflows.errors import ConfigError
from jaxflows.models.starflow import SEQ_ORDERS, StarFlowModel
from jaxflows.models.starflow_sampling import RULES
from jaxflows.models.tarflow_config import validate_transformer_options
from jaxflows.nn.transformer import remat_policy_name

#: the task module ``config.model.name`` names (``'starflow'`` is an alias of it)
TASK_MODULE = "jaxflows.models.starflow_task"
#: ``config.model.autoencoder`` values that are not a workdir path
AE_NONE, AE_RANDOM = "none", "random"
#: SD's VAE latent scale (``vae_latent * 0.18215``, the official STARFlow input)
SD_LATENT_SCALE = 0.18215


def default_ae_config(**overrides: Any) -> ml_collections.ConfigDict:
    """``config.model.ae``: the architecture of the frozen autoencoder (the keys of
    :func:`jaxflows.models.autoencoder.default_model_config` that shape its parameters;
    defaults: ``experiments/configs/autoencoder_mnist.py:ae``)."""
    a = ml_collections.ConfigDict(dict(mode="ae", channels=(16, 32), latent_channels=4,
                                       res_blocks=0))
    for k, v in overrides.items():
        if k not in a:
            raise KeyError(f"unknown autoencoder key {k!r}")
        a[k] = v
    return a


def default_model_config(**overrides: Any) -> ml_collections.ConfigDict:
    """``config.model`` for STARFlow with every key the task reads. Defaults: a small
    class-unconditional ``6(3)-128`` flow on ready-made latents; experiment configs override
    fields (``ae`` takes a dict of :func:`default_ae_config` keys)."""
    m = ml_collections.ConfigDict(dict(
        name=TASK_MODULE,
        # --- the flow (jaxflows.models.starflow.StarFlowModel)
        width=128,
        # Transformer layers per flow block in the data -> noise order; the last entry is the
        # deep block (next to the prior), the others the 2-layer shallow blocks: l(N)-d
        layers_per_block=(2, 2, 6),
        head_dim=64,
        mlp_ratio=4,
        patch_size=1,
        seq_order="L2R",
        num_classes=0,  # > 0: class-conditional (one-hot prefix, null id = num_classes)
        text_len=0,  # > 0 with text_dim: text-conditional on features [text_len, text_dim]
        text_dim=0,
        remat="none",  # jaxflows.nn.transformer.REMAT_POLICIES
        attention="einsum",  # jaxflows.nn.transformer.ATTENTION_IMPLS
        unroll_layers=True,  # unroll each block's layer loop (False: rolled, faster compiles)
        # --- latent space
        autoencoder=AE_NONE,  # 'none' | 'random' | a trained autoencoder workdir
        ae=default_ae_config(),
        latent_scale=0.0,  # latents are multiplied by it; must be set (> 0)
        noise_std=0.3,  # sigma_L of the Gaussian noise on the scaled latents
        drop_label=0.1,  # class label -> null id / text -> null features, in training
        latent_norm_weight=1e-4,  # train.py's penalty on the intermediate latents
        # --- sampling defaults (``jaxflows sample`` options fall back on them)
        sample_guidance=0.0,
        sample_rule="gaussian",  # gaussian (STARFlow) | linear (TarFlow's rule)
        sample_annealed=False,
        sample_denoise=True,  # one score step before decoding (official without a fine-tuned
        #                       decoder)
        jacobi_chunk=0,  # 0 = sequential; L > 0 = block-wise Jacobi over chunks of L tokens
        jacobi_max_iters=32,
        jacobi_tol=1e-3,
        sample_batch_size=0,  # 0 = all samples in one call
    ))
    for k, v in overrides.items():
        if k not in m:
            raise KeyError(f"unknown STARFlow model key {k!r}")
        if k == "ae":
            v = default_ae_config(**dict(v))
        m[k] = v
    return m


#: every key of ``config.model`` that STARFlow reads
MODEL_KEYS = tuple(default_model_config().keys())
AE_KEYS = tuple(default_ae_config().keys())


def ae_config_from_workdir(workdir: str) -> ml_collections.ConfigDict | None:
    """``config.model.ae`` read from a trained autoencoder workdir's ``config.json`` (None when
    the workdir has none yet)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        model = json.load(f).get("model", {})
    return default_ae_config(**{k: (tuple(model[k]) if k == "channels" else model[k])
                                for k in AE_KEYS if k in model})


def latent_scale_from_workdir(workdir: str) -> float:
    """The scale in ``WORKDIR/latent_scale.json`` or 0.0 (= missing; the task then raises a
    ConfigError saying how to make it)."""
    from jaxflows.models.autoencoder import SCALE_FILE

    path = os.path.join(workdir, SCALE_FILE)
    if not os.path.exists(path):
        return 0.0
    with open(path) as f:
        return float(json.load(f)["latent_scale"])


def _check_unknown_keys(m: ml_collections.ConfigDict) -> None:
    unknown = sorted(set(m.keys()) - set(MODEL_KEYS))
    if unknown:
        close = difflib.get_close_matches(unknown[0], MODEL_KEYS, n=3)
        hint = (f"did you mean {', '.join('config.model.' + c for c in close)}?" if close
                else "see jaxflows.models.starflow_config.default_model_config for the keys")
        raise ConfigError(f"config.model.{unknown[0]} is not a STARFlow model key", hint=hint)
    ae = m.get("ae")
    if ae is not None:
        bad = sorted(set(ae.keys()) - set(AE_KEYS))
        if bad:
            raise ConfigError(f"config.model.ae.{bad[0]} is not an autoencoder key "
                              f"(keys: {', '.join(AE_KEYS)})")


def layers_of(m: ml_collections.ConfigDict) -> tuple[int, ...]:
    """``config.model.layers_per_block`` as a tuple of ints."""
    lpb = m.get("layers_per_block", (2, 2, 6))
    if isinstance(lpb, int):
        raise ConfigError(f"config.model.layers_per_block={lpb} must be a tuple, one entry per "
                          "flow block (data -> noise order, the deep block last)")
    return tuple(int(v) for v in lpb)


def validate_model_config(config: ml_collections.ConfigDict) -> None:
    """Checks ``config.model`` on its own (keys, ranges, choices); the task checks it against
    the data. A :class:`ConfigError` names the first bad key."""
    m = config.model
    _check_unknown_keys(m)
    width, head_dim = int(m.get("width", 128)), int(m.get("head_dim", 64))
    if width <= 0 or head_dim <= 0 or width % head_dim:
        raise ConfigError(f"config.model.width={width} must be a positive multiple of "
                          f"config.model.head_dim={head_dim}")
    layers = layers_of(m)
    if not layers or min(layers) < 1:
        raise ConfigError(f"config.model.layers_per_block={layers} needs at least one block, "
                          "each with at least one layer")
    if str(m.get("seq_order", "L2R")) not in SEQ_ORDERS:
        raise ConfigError(f"config.model.seq_order={m.seq_order!r}; use one of "
                          f"{', '.join(SEQ_ORDERS)}")
    ncls, tlen, tdim = (int(m.get(k, 0)) for k in ("num_classes", "text_len", "text_dim"))
    if ncls < 0 or tlen < 0 or tdim < 0:
        raise ConfigError("config.model.num_classes, text_len and text_dim must be >= 0")
    if (tlen > 0) != (tdim > 0):
        raise ConfigError(f"config.model.text_len={tlen} and text_dim={tdim} must both be "
                          "positive (text-conditional) or both 0")
    if ncls and tlen:
        raise ConfigError("config.model.num_classes and text_len are exclusive (one prefix "
                          "kind per model)")
    validate_transformer_options(m)
    if not float(m.get("noise_std", 0.3)) >= 0:
        raise ConfigError(f"config.model.noise_std={m.noise_std} must be >= 0")
    drop = float(m.get("drop_label", 0.1))
    if not 0.0 <= drop < 1.0:
        raise ConfigError(f"config.model.drop_label={drop} must be in [0, 1)")
    if not float(m.get("latent_norm_weight", 1e-4)) >= 0:
        raise ConfigError(f"config.model.latent_norm_weight={m.latent_norm_weight} must be >= 0")
    ae_kind = str(m.get("autoencoder", AE_NONE))
    if not ae_kind:
        raise ConfigError("config.model.autoencoder is empty",
                          hint="use 'none' (latent data), 'random' or a trained autoencoder "
                               "workdir")
    if ae_kind != AE_NONE:
        a = m.ae
        if str(a.mode) not in ("ae", "kl"):
            raise ConfigError(f"config.model.ae.mode={a.mode!r}; use ae or kl")
        channels = tuple(int(c) for c in a.channels)
        if not channels or min(channels) < 1 or int(a.latent_channels) < 1 \
                or int(a.res_blocks) < 0:
            raise ConfigError("config.model.ae: channels must be positive widths, "
                              "latent_channels >= 1 and res_blocks >= 0")
    rule = str(m.get("sample_rule", "gaussian"))
    if rule not in RULES:
        raise ConfigError(f"config.model.sample_rule={rule!r}; use one of {', '.join(RULES)}")
    if not float(m.get("sample_guidance", 0.0)) >= 0:
        raise ConfigError(f"config.model.sample_guidance={m.sample_guidance} must be >= 0")
    if int(m.get("jacobi_chunk", 0)) < 0 or int(m.get("jacobi_max_iters", 32)) < 1 \
            or not float(m.get("jacobi_tol", 1e-3)) >= 0:
        raise ConfigError("config.model.jacobi_chunk must be >= 0, jacobi_max_iters >= 1 and "
                          "jacobi_tol >= 0")
    if int(m.get("sample_batch_size", 0)) < 0:
        raise ConfigError(f"config.model.sample_batch_size={m.sample_batch_size} must be >= 0 "
                          "(0 = all samples in one call)")


def model_from_config(config: ml_collections.ConfigDict, input_shape) -> StarFlowModel:
    """The :class:`StarFlowModel` of ``config.model`` on latents ``input_shape`` ``(h, w, c)``
    (or tokens ``(N, D)``), matmuls in ``config.dtype``."""
    m = config.model
    ncls = int(m.get("num_classes", 0))
    model = StarFlowModel(
        input_shape=tuple(int(s) for s in input_shape),
        width=int(m.width),
        layers_per_block=layers_of(m),
        patch_size=int(m.get("patch_size", 1)),
        head_dim=int(m.get("head_dim", 64)),
        mlp_ratio=int(m.get("mlp_ratio", 4)),
        num_classes=ncls,
        prefix_len=0 if ncls else int(m.get("text_len", 0)),
        prefix_dim=0 if ncls else int(m.get("text_dim", 0)),
        seq_order=str(m.get("seq_order", "L2R")),
        dtype=jnp.dtype(config.get("dtype", "float32")),
        remat=remat_policy_name(m.get("remat", "none")),
        attention_impl=str(m.get("attention", "einsum")),
        unroll_layers=bool(m.get("unroll_layers", True)),
    )
    model.check()
    return model


def autoencoder_from_config(config: ml_collections.ConfigDict, image_channels: int):
    """The frozen :class:`jaxflows.models.autoencoder.ConvAutoencoder` of ``config.model.ae``
    (float32: it is small, and exact latents keep the flow's targets fixed)."""
    from jaxflows.models.autoencoder import ConvAutoencoder

    a = config.model.ae
    return ConvAutoencoder(image_channels=int(image_channels),
                           channels=tuple(int(c) for c in a.channels),
                           latent_channels=int(a.latent_channels),
                           res_blocks=int(a.res_blocks), gaussian=str(a.mode) == "kl",
                           dtype=jnp.float32)
