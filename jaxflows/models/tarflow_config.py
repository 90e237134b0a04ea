"""``config.model`` of TarFlow: the defaults, the checks, and the model it describes.

:func:`default_model_config` lists every key the task reads (experiment configs override
fields); :func:`validate_model_config` checks a config against the data before anything compiles
(one :class:`jaxflows.errors.ConfigError` line naming the key); :func:`model_from_config` builds
the :class:`jaxflows.models.tarflow.TarFlowModel`.
"""

from __future__ import annotations

import difflib
from typing import Any

import jax.numpy as jnp
import ml_collections

from jaxflows.errors import ConfigError
from jaxflows.models.tarflow import TarFlowModel, logit_bijector
from jaxflows.nn.patches import check_patch_size
from jaxflows.nn.transformer import ATTENTION_IMPLS, REMAT_POLICIES, remat_policy_name

#: the task module ``config.model.name`` names (``'tarflow'`` is an alias of it)
TASK_MODULE = "jaxflows.models.tarflow_task"

NOISE_TYPES = ("gaussian", "uniform", "none")


def default_model_config(**overrides: Any) -> ml_collections.ConfigDict:
    """``config.model`` for TarFlow with every key the task reads (defaults: MNIST notebook
    4-128-4-4, Gaussian noise 0.1, unconditional). Experiment configs override fields."""
    m = ml_collections.ConfigDict(dict(
        name=TASK_MODULE,
        patch_size=4,
        channels=128,  # Transformer width C
        num_blocks=4,  # flow blocks T
        layers_per_block=4,  # Transformer layers K per block
        head_dim=64,
        mlp_ratio=4,
        num_classes=0,  # 0 = unconditional; else must equal the data's class count
        drop_label=0.0,  # label dropout (-> mean class embedding) during training
        nvp=True,  # affine blocks; False = volume preserving + learned prior variance
        noise_type="gaussian",  # gaussian | uniform (dequantisation, for bits/dim) | none
        noise_std=0.1,  # sigma of the Gaussian input noise, in [-1, 1] pixel units
        # rematerialise the scanned Transformer layers in the backward pass (memory for compute):
        # none | full | a jax.checkpoint_policies name (jaxflows.nn.transformer.REMAT_POLICIES)
        remat="none",
        # attention kernel: einsum | chunked (query chunks, memory-bounded) | xla | cudnn (GPU
        # flash) | auto (cudnn on GPU in bf16, xla on TPU, chunked elsewhere)
        attention="einsum",
        # unroll each block's layer loop (faster sampling; the full pass stays rolled under
        # remat). False = a rolled loop: smaller programs, faster compiles for deep stacks
        unroll_layers=True,
        sample_guidance=0.0,
        sample_attn_temp=1.0,
        sample_annealed=True,
        jacobi_chunk=0,  # 0 = sequential sampling; L > 0 = Jacobi over chunks of L tokens
        jacobi_max_iters=32,
        jacobi_tol=1e-6,
        sample_batch_size=0,  # 0 = all samples in one call
        logit_alpha=0.0,  # > 0: the flow models logit(alpha + (1-2 alpha) x01) (uniform noise only)
        max_log_scale=0.0,  # > 0: soft-clamp each block's log-scale to (-c, c) (0 = official)
    ))
    for k, v in overrides.items():
        if k not in m:
            raise KeyError(f"unknown TarFlow model key {k!r}")
        m[k] = v
    return m


#: every key of ``config.model`` that TarFlow reads
MODEL_KEYS = tuple(default_model_config().keys())


def model_from_config(config: ml_collections.ConfigDict, image_shape) -> TarFlowModel:
    """Builds :class:`TarFlowModel` from ``config.model`` and ``config.dtype``."""
    m = config.model
    h, w, _ = image_shape
    check_patch_size(h, w, int(m.patch_size))
    width, head_dim = int(m.channels), int(m.get("head_dim", 64))
    if width % head_dim:
        raise ConfigError(
            f"config.model.channels={width} is not a multiple of config.model.head_dim={head_dim}")
    return TarFlowModel(
        image_shape=tuple(int(s) for s in image_shape),
        patch_size=int(m.patch_size),
        width=width,
        num_blocks=int(m.num_blocks),
        layers_per_block=int(m.layers_per_block),
        head_dim=head_dim,
        mlp_ratio=int(m.get("mlp_ratio", 4)),
        num_classes=int(m.get("num_classes", 0)),
        nvp=bool(m.get("nvp", True)),
        dtype=jnp.dtype(config.get("dtype", "float32")),
        remat=remat_policy_name(m.get("remat", "none")),
        attention_impl=str(m.get("attention", "einsum")),
        max_log_scale=float(m.get("max_log_scale", 0.0)),
        unroll_layers=bool(m.get("unroll_layers", True)),
    )


def _check_unknown_keys(m: ml_collections.ConfigDict) -> None:
    unknown = sorted(set(m.keys()) - set(MODEL_KEYS))
    if unknown:
        close = difflib.get_close_matches(unknown[0], MODEL_KEYS, n=3)
        hint = (f"did you mean {', '.join('config.model.' + c for c in close)}?" if close
                else "see jaxflows.models.tarflow_config.default_model_config for the keys")
        raise ConfigError(f"config.model.{unknown[0]} is not a TarFlow model key", hint=hint)


def _check_sampling_defaults(m: ml_collections.ConfigDict, num_tokens: int) -> None:
    """The ``sample_*`` / ``jacobi_*`` defaults of ``config.model`` (see :class:`SampleOptions`)."""
    attn_temp = float(m.get("sample_attn_temp", 1.0))
    if not attn_temp > 0:
        raise ConfigError(f"config.model.sample_attn_temp={attn_temp} must be > 0")
    chunk = int(m.get("jacobi_chunk", 0))
    if chunk < 0 or (chunk and num_tokens % chunk):
        raise ConfigError(f"config.model.jacobi_chunk={chunk} must be 0 (sequential) or divide "
                          f"the number of tokens {num_tokens}")
    if int(m.get("jacobi_max_iters", 32)) < 1:
        raise ConfigError(f"config.model.jacobi_max_iters={m.jacobi_max_iters} must be >= 1")
    if not float(m.get("jacobi_tol", 1e-6)) >= 0:
        raise ConfigError(f"config.model.jacobi_tol={m.jacobi_tol} must be >= 0")
    if int(m.get("sample_batch_size", 0)) < 0:
        raise ConfigError(f"config.model.sample_batch_size={m.sample_batch_size} must be >= 0 "
                          "(0 = all samples in one call)")


def validate_transformer_options(m) -> None:
    """Checks ``config.model.remat`` and ``config.model.attention`` (shared by the Transformer
    flows: TarFlow, STARFlow); raises a ConfigError naming the bad value."""
    remat = m.get("remat", "none")
    if not isinstance(remat, bool) and str(remat) not in REMAT_POLICIES:
        raise ConfigError(f"config.model.remat={remat!r}; use one of {', '.join(REMAT_POLICIES)}")
    attention = str(m.get("attention", "einsum"))
    if attention not in ATTENTION_IMPLS:
        raise ConfigError(
            f"config.model.attention={attention!r}; use one of {', '.join(ATTENTION_IMPLS)}")


def validate_model_config(config: ml_collections.ConfigDict, image_shape,
                          data_num_classes: int = 0) -> TarFlowModel:
    """Checks ``config.model`` against the data (``image_shape`` ``(H, W, C)``, its class count,
    0 = unknown or none) and returns the model it describes; a :class:`ConfigError` names the
    first bad key."""
    m = config.model
    _check_unknown_keys(m)
    noise_type = str(m.get("noise_type", "gaussian"))
    if noise_type not in NOISE_TYPES:
        raise ConfigError(
            f"config.model.noise_type={noise_type!r}; use gaussian, uniform or none")
    noise_std = float(m.get("noise_std", 0.0))
    if not noise_std >= 0:
        raise ConfigError(f"config.model.noise_std={noise_std} must be >= 0")
    drop_label = float(m.get("drop_label", 0.0))
    if not 0.0 <= drop_label < 1.0:
        raise ConfigError(f"config.model.drop_label={drop_label} must be in [0, 1)")
    ncls = int(m.get("num_classes", 0))
    if ncls < 0:
        raise ConfigError(f"config.model.num_classes={ncls} must be >= 0 (0 = unconditional)")
    if ncls and data_num_classes and ncls != data_num_classes:
        raise ConfigError(
            f"config.model.num_classes={ncls} but the data has {data_num_classes} classes")
    validate_transformer_options(m)
    if not float(m.get("max_log_scale", 0.0)) >= 0:
        raise ConfigError(f"config.model.max_log_scale={m.max_log_scale} must be >= 0 (0 = off)")
    try:
        model = model_from_config(config, image_shape)
    except ValueError as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(str(e)) from None
    alpha = float(m.get("logit_alpha", 0.0))
    if alpha:
        if noise_type != "uniform":
            raise ConfigError(
                "config.model.logit_alpha needs noise_type='uniform' (the logit of "
                f"Gaussian-noised pixels is undefined), got {noise_type!r}")
        logit_bijector(alpha)  # its range check
    _check_sampling_defaults(m, model.num_tokens)
    return model
