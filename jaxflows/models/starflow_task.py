"""STARFlow as a training task: :class:`StarFlowTask` (``config.model.name =
'jaxflows.models.starflow_task'``, alias ``'starflow'``).

The flow is :mod:`jaxflows.models.starflow` (deep-shallow, SOS shift, softplus scale, RoPE),
``config.model`` is :mod:`jaxflows.models.starflow_config`, the sampler
:mod:`jaxflows.models.starflow_sampling`. Here (following apple/ml-starflow ``train.py`` /
``sample.py``; Gu et al. 2025, arXiv 2506.06276):

**Parameters.** ``{'flow': StarFlowModel params, 'autoencoder': {'encoder', 'decoder'}}``; the
``autoencoder`` subtree (absent with ``config.model.autoencoder='none'``) is a frozen
:class:`jaxflows.models.autoencoder.ConvAutoencoder`: a trained one is loaded with
``config.init_from`` (target ``'autoencoder'``), a ``'random'`` one keeps its initialisation,
and both must be frozen by ``config.optim.freeze`` (the task checks it, so a misconfigured run
fails before it compiles). The autoencoder's parameters also enter the loss through
``stop_gradient`` (no backward pass through the encoder).

**Training input.** Images (uint8) are encoded with the posterior mean, multiplied by
``config.model.latent_scale`` and noised, ``x = E(img) * scale + sigma_L eps`` (``noise_std``,
0.3 officially); with ``autoencoder='none'`` the data field ``latent`` (or ``image``) holds the
unscaled latents. Conditioning goes into the deep block's prefix: class labels as the one-hot row
``eye(K + 1)[y]`` (null id ``K``), text as features ``text [T, E]`` with ``text_mask [T]`` (from a
frozen encoder run outside the task; padded rows are zeroed, not masked, as officially). In
training the condition is dropped with probability ``drop_label`` (label -> ``K``; text -> all-zero
features -- the official null caption is the encoder's features of ``""``, which the task does
not have; pass them to :meth:`StarFlowTask.sample` as ``null_text``).

**Loss**: :func:`jaxflows.models.starflow.loss_terms`, ``0.5 mean(z^2) - sum_t mean(logdet_t)``
plus ``latent_norm_weight`` (1e-4) times the latent-norm penalty. **Evaluation** (per example):
``loss`` (the objective with the true condition), ``nll`` (nats per latent dimension of the noisy
scaled latent, ``0.5 log 2 pi`` included) and ``bpd`` (``nll / ln 2``: bits per dimension in
latent space, not comparable with pixel bits/dim).

**Sampling** (:meth:`StarFlowTask.sample`; ``jaxflows sample`` options via
``--config.sample.KEY=VALUE``, defaults in :attr:`StarFlowTask.sample_options`):

* ``guidance`` (float, NaN = ``config.model.sample_guidance``) and ``rule`` (``'gaussian'``:
  STARFlow's Gaussian-product rule; ``'linear'``: TarFlow's; ``''`` = ``sample_rule``), applied in
  the deep block only; ``annealed`` ramps the weight over the tokens;
* ``class_label``: ``-2`` random classes, ``-1`` the null label, ``k`` class ``k``;
* ``denoise`` (the official behaviour without a fine-tuned decoder): one score step
  ``x - sigma^2 grad_x NLL(x)`` at ``denoise_sigma`` (NaN = ``noise_std``) before decoding;
* ``jacobi_chunk`` (``-1`` = ``config.model.jacobi_chunk``, 0 sequential, ``L`` block-wise
  Jacobi), ``temperature``, ``batch_size``, ``max_retries`` (NaN samples are redrawn).

It returns images uint8 ``[num, H, W, C]`` decoded by the frozen decoder, or, with
``autoencoder='none'``, float32 latents ``[num, h, w, c]`` in the autoencoder's units (divided
by the latent scale). Text features for a text-conditional model are arguments of the Python
call (``text``, ``text_mask``, ``null_text``); without them it samples from the null text.

A bad value raises :class:`jaxflows.errors.ConfigError` naming the option or key.
"""

from __future__ import annotations

import logging
import math
import os
import re
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxflows.errors import ConfigError, UserError
from jaxflows.models import starflow_sampling as ss
from jaxflows.models.class_labels import RANDOM_CLASSES, resolve_class_labels
from jaxflows.models.starflow import loss_terms
from jaxflows.models.starflow_config import (
    AE_NONE,
    AE_RANDOM,
    autoencoder_from_config,
    model_from_config,
    validate_model_config,
)
from jaxflows.train.task import DataInfo, ElementSpec, Metrics, PyTree, Task

_LOG2PI = math.log(2 * math.pi)
#: ``class_label`` value meaning "a random class per sample" (the ``jaxflows sample`` default)
AE_TARGET = "autoencoder"


def _given(value):
    """``None`` for an option left at its "from config.model" default (None, NaN or '')."""
    if value is None or (isinstance(value, str) and not value):
        return None
    if isinstance(value, (float, np.floating)) and math.isnan(value):
        return None
    return value



def to_uint8(x: jax.Array) -> jax.Array:
    """Pixels in ``[-1, 1]`` units -> uint8 (clipped, rounded)."""
    return jnp.round(jnp.clip((x.astype(jnp.float32) + 1.0) * 127.5, 0.0, 255.0)).astype(
        jnp.uint8)


class StarFlowTask(Task):
    """STARFlow for the training engine (see the module docstring and
    :func:`jaxflows.models.starflow_config.default_model_config` for the keys)."""

    sample_options: ClassVar[dict[str, Any]] = {
        "guidance": float("nan"),
        "rule": "",
        "class_label": RANDOM_CLASSES,
        "denoise": True,
        "denoise_sigma": float("nan"),
        "annealed": False,
        "jacobi_chunk": -1,
        "temperature": 1.0,
        "batch_size": 0,
        "max_retries": 3,
    }

    def __init__(self, config: ml_collections.ConfigDict, data_info: DataInfo):
        super().__init__(config, data_info)
        validate_model_config(config)
        m = config.model
        spec = data_info.element_spec
        self.ae_kind = str(m.get("autoencoder", AE_NONE))
        self.num_classes = int(m.get("num_classes", 0))
        self.text_len = 0 if self.num_classes else int(m.get("text_len", 0))
        self.text_dim = int(m.get("text_dim", 0)) if self.text_len else 0
        self.noise_std = float(m.get("noise_std", 0.3))
        self.drop_label = float(m.get("drop_label", 0.1))
        self.latent_norm_weight = float(m.get("latent_norm_weight", 1e-4))
        self.best_metric = "loss"
        self._jitted: dict = {}

        # --- latents: where they come from and their grid
        self.ae = None
        if self.ae_kind == AE_NONE:
            self.field = "latent" if "latent" in spec else "image"
            if self.field not in spec:
                raise ConfigError(f"config.model.autoencoder='none' reads latents from a data "
                                  f"field 'latent' or 'image'; the data has {sorted(spec)}")
            self.field_spec = jax.ShapeDtypeStruct(tuple(spec[self.field].shape),
                                                   spec[self.field].dtype)
            self.latent_shape = tuple(int(d) for d in self.field_spec.shape)
        else:
            self.field = "image"
            image_shape = tuple(int(d) for d in data_info.image_shape)
            if len(image_shape) != 3:
                raise ConfigError(f"images must be [H, W, C], the data has {image_shape}")
            self.field_spec = jax.ShapeDtypeStruct(image_shape, jnp.uint8)
            h, w, c = image_shape
            levels = len(tuple(m.ae.channels))
            f = 2**levels
            if h % f or w % f:
                raise ConfigError(
                    f"images {h}x{w} do not fit the autoencoder: {levels} stride-2 levels "
                    f"(config.model.ae.channels={tuple(m.ae.channels)}) need sides divisible "
                    f"by {f}")
            self.latent_shape = (h // f, w // f, int(m.ae.latent_channels))
            self.ae = autoencoder_from_config(config, c)
            self._check_ae_setup(config, image_shape)
        self.latent_scale = float(m.get("latent_scale", 0.0))
        if not (self.latent_scale > 0 and math.isfinite(self.latent_scale)):
            where = ("" if self.ae_kind in (AE_NONE, AE_RANDOM)
                     else f": {os.path.join(self.ae_kind, 'latent_scale.json')} is missing")
            raise ConfigError(
                f"config.model.latent_scale={m.get('latent_scale', 0.0)} is not set{where}",
                hint="compute it with jaxflows.models.autoencoder.latent_scale on the training "
                     "images and save it with save_latent_scale in the autoencoder workdir (or "
                     "set --config.model.latent_scale)")

        # --- conditioning vs the data
        if self.num_classes and data_info.num_classes \
                and self.num_classes != data_info.num_classes:
            raise ConfigError(f"config.model.num_classes={self.num_classes} but the data has "
                              f"{data_info.num_classes} classes")
        self.has_text = False
        if self.text_len:
            self.has_text = "text" in spec
            if self.has_text:
                shape = tuple(spec["text"].shape)
                if shape != (self.text_len, self.text_dim):
                    raise ConfigError(f"the data's text features are {list(shape)} per example; "
                                      f"config.model.text_len/text_dim say "
                                      f"[{self.text_len}, {self.text_dim}]")
                if "text_mask" not in spec or tuple(spec["text_mask"].shape) != (self.text_len,):
                    have = spec.get("text_mask")
                    raise ConfigError(f"a text-conditional model needs a data field 'text_mask' "
                                      f"[{self.text_len}]; the data has "
                                      f"{'none' if have is None else list(have.shape)}")
            else:
                logging.warning("starflow: the data has no 'text' field; the text prefix is "
                                "the null (all-zero) features (fine for jaxflows info, not for "
                                "training a text-to-image model)")
        try:
            self.model = model_from_config(config, self.latent_shape)
        except ValueError as e:
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(str(e)) from None
        chunk = int(m.get("jacobi_chunk", 0))
        if chunk and self.model.num_tokens % chunk:
            raise ConfigError(f"config.model.jacobi_chunk={chunk} does not divide the number of "
                              f"tokens {self.model.num_tokens}")

    def _check_ae_setup(self, config, image_shape) -> None:
        """The autoencoder subtree must be frozen, and a workdir one loaded by init_from."""
        x = jnp.zeros((1, *image_shape), jnp.float32)
        shapes = jax.eval_shape(self.ae.init, jax.random.key(0), x)["params"]
        paths = [f"{AE_TARGET}/" + "/".join(str(k.key) for k in path)
                 for path, _ in jax.tree_util.tree_leaves_with_path(shapes)]
        patterns = config.optim.get("freeze", ()) or ()
        patterns = [patterns] if isinstance(patterns, str) else list(patterns)
        try:
            rx = [re.compile(p) for p in patterns]
        except re.error:
            rx = []  # the engine names the bad regex
        loose = [p for p in paths if not any(r.fullmatch(p) for r in rx)]
        if loose:
            raise ConfigError(f"the autoencoder must be frozen, but {loose[0]} is trained",
                              hint="add 'autoencoder/.*' to config.optim.freeze")
        if self.ae_kind != AE_RANDOM:
            targets = [str(dict(e).get("target", "") or "").strip("/")
                       for e in (config.get("init_from", ()) or ())]
            if not any(t in ("", AE_TARGET) for t in targets):  # '' = all params
                raise ConfigError(
                    f"config.model.autoencoder={self.ae_kind!r} but config.init_from loads "
                    "nothing into 'autoencoder'",
                    hint=f"add {{'path': '{self.ae_kind}', 'source': 'best_params', 'target': "
                         "'autoencoder'}} to config.init_from (or use autoencoder='random')")

    # ---- structure -----------------------------------------------------------------------
    def example_spec(self) -> ElementSpec:
        """The image (or latent) field, ``label`` int32 ``[]`` (class-conditional) and
        ``text [T, E]`` + ``text_mask [T]`` (text-conditional, when the data has them)."""
        spec = {self.field: self.field_spec}
        if self.num_classes:
            spec["label"] = jax.ShapeDtypeStruct((), jnp.int32)
        if self.has_text:
            ds = self.data_info.element_spec
            spec["text"] = jax.ShapeDtypeStruct((self.text_len, self.text_dim), ds["text"].dtype)
            spec["text_mask"] = jax.ShapeDtypeStruct((self.text_len,), ds["text_mask"].dtype)
        return spec

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The flow's input: the latent grid ``(h, w, c)``."""
        return self.latent_shape

    # ---- latents and conditions --------------------------------------------------------------
    def _ae_params(self, params) -> PyTree:
        return jax.lax.stop_gradient(nn.unbox(params[AE_TARGET]))

    def encode(self, params: PyTree, images: jax.Array) -> jax.Array:
        """Scaled latents ``E(images) * latent_scale`` (posterior mean) of uint8 ``images:
        [B, H, W, C]`` -> float32 ``[B, h, w, c]``; ``autoencoder='none'``: the latent field
        times the scale."""
        if self.ae is None:
            return jnp.asarray(images).astype(jnp.float32) * self.latent_scale
        from jaxflows.models.autoencoder import ConvAutoencoder, to_signed

        mean, _ = self.ae.apply({"params": self._ae_params(params)}, to_signed(images),
                                method=ConvAutoencoder.encode)
        return mean.astype(jnp.float32) * self.latent_scale

    def decode(self, params: PyTree, latents: jax.Array) -> jax.Array:
        """uint8 images of scaled latents ``[B, h, w, c]`` (divided by the scale, then the frozen
        decoder); ``autoencoder='none'``: the unscaled latents (float32)."""
        u = jnp.asarray(latents, jnp.float32) / self.latent_scale
        if self.ae is None:
            return u
        from jaxflows.models.autoencoder import ConvAutoencoder

        x = self.ae.apply({"params": self._ae_params(params)}, u, method=ConvAutoencoder.decode)
        return to_uint8(x)

    def null_text(self, batch: int) -> jax.Array:
        """The null text features ``[batch, T, E]`` (zeros)."""
        return jnp.zeros((batch, self.text_len, self.text_dim), jnp.float32)

    def text_features(self, text: jax.Array, mask: jax.Array | None) -> jax.Array:
        """``text [B, T, E]`` float32 with the padded rows (``mask == 0``) zeroed."""
        text = jnp.asarray(text).astype(jnp.float32)
        if mask is None:
            return text
        return text * (jnp.asarray(mask) != 0)[..., None].astype(jnp.float32)

    def drop_labels(self, rng: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(labels with a drop_label fraction set to the null id K, the drop flags [B])``."""
        drop = jax.random.uniform(rng, labels.shape) < self.drop_label
        return jnp.where(drop, self.num_classes, labels), drop

    def condition(self, batch: dict[str, jax.Array], rng: jax.Array | None = None
                  ) -> tuple[jax.Array | None, jax.Array]:
        """``(cond for the flow, dropped flags [B])`` of a batch: labels ``[B]`` (dropped to the
        null id with ``rng``), text features ``[B, T, E]`` (dropped to zeros) or None."""
        b = batch[self.field].shape[0]
        none = jnp.zeros((b,), bool)
        if self.num_classes:
            y = jnp.asarray(batch["label"], jnp.int32)
            if rng is None or self.drop_label == 0:
                return y, none
            return self.drop_labels(rng, y)
        if self.text_len:
            if not self.has_text:
                return self.null_text(b), jnp.ones((b,), bool)
            feats = self.text_features(batch["text"], batch["text_mask"])
            if rng is None or self.drop_label == 0:
                return feats, none
            drop = jax.random.uniform(rng, (b,)) < self.drop_label
            return jnp.where(drop[:, None, None], 0.0, feats), drop
        return None, none

    def _forward(self, params, batch, rng, drop: bool):
        r_noise, r_drop = jax.random.split(rng)
        x = self.encode(params, batch[self.field])
        x = x + self.noise_std * jax.random.normal(r_noise, x.shape, jnp.float32)
        cond, dropped = self.condition(batch, r_drop if drop else None)
        z, logdets, outputs = self.model.apply({"params": params["flow"]}, x, cond)
        return z, logdets, outputs, dropped

    # ---- Task API --------------------------------------------------------------------------
    def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> PyTree:
        """``{'flow': ..., 'autoencoder': ...}`` (flow leaves boxed with logical axis names)."""
        del batch
        from jaxflows.models.starflow import example_cond

        r_flow, r_ae = jax.random.split(rng)
        x = jnp.zeros((1, *self.latent_shape), jnp.float32)
        params = {"flow": self.model.init(r_flow, x, example_cond(self.model))["params"]}
        if self.ae is not None:
            img = jnp.zeros((1, *self.field_spec.shape), jnp.float32)
            params[AE_TARGET] = self.ae.init(r_ae, img)["params"]
        return params

    def loss(self, params: PyTree, batch: dict[str, jax.Array], rng: jax.Array,
             step: jax.Array) -> tuple[jax.Array, Metrics]:
        """STARFlow's objective on noisy scaled latents with condition dropout. Metrics:
        ``nll`` (per dimension, ``0.5 log 2 pi`` included), ``loss_z``, ``loss_logdet``,
        ``latent_norm`` and ``cond_drop_frac``."""
        del step
        z, logdets, outputs, dropped = self._forward(params, batch, rng, drop=True)
        terms = loss_terms(z, logdets, outputs, self.latent_norm_weight)
        metrics = {"loss": terms["loss"], "nll": terms["nll"] + 0.5 * _LOG2PI,
                   "loss_z": terms["loss_z"], "loss_logdet": terms["loss_logdet"],
                   "latent_norm": terms["latent_norm"],
                   "cond_drop_frac": jnp.mean(dropped.astype(jnp.float32))}
        return terms["loss"], metrics

    def eval_batch(self, params: PyTree, batch: dict[str, jax.Array], rng: jax.Array
                   ) -> Metrics:
        """Per-example ``loss`` (training objective, true condition), ``nll`` (nats per latent
        dimension) and ``bpd`` (bits per latent dimension)."""
        z, logdets, outputs, _ = self._forward(params, batch, rng, drop=False)
        b = z.shape[0]
        per = lambda a: jnp.mean(a.reshape(b, -1).astype(jnp.float32), axis=-1)  # noqa: E731
        nll = 0.5 * per(jnp.square(z)) - sum(per(ld) for ld in logdets)
        reg = sum(per(jnp.square(o)) for o in outputs[:-1])
        nll_dim = nll + 0.5 * _LOG2PI
        return {"loss": nll + self.latent_norm_weight * reg, "nll": nll_dim,
                "bpd": nll_dim / math.log(2)}

    # ---- sampling ------------------------------------------------------------------------
    def resolve_sample_options(self, guidance: float | None = None, rule: str | None = None,
                               annealed: bool | None = None, jacobi_chunk: int | None = None,
                               jacobi_max_iters: int | None = None,
                               jacobi_tol: float | None = None) -> ss.SampleOptions:
        """:class:`SampleOptions` from the arguments; ``None`` (NaN, ``''``,
        ``jacobi_chunk=-1``: the ``jaxflows sample`` defaults) falls back on ``config.model``."""
        m = self.config.model
        guidance, rule = _given(guidance), _given(rule)
        if jacobi_chunk is not None and int(jacobi_chunk) == -1:
            jacobi_chunk = None
        g_name = "config.sample.guidance" if guidance is not None \
            else "config.model.sample_guidance"
        opts = ss.SampleOptions(
            guidance=float(m.get("sample_guidance", 0.0) if guidance is None else guidance),
            rule=str(m.get("sample_rule", "gaussian") if rule is None else rule),
            annealed=bool(m.get("sample_annealed", False) if annealed is None else annealed),
            jacobi_chunk=int(m.get("jacobi_chunk", 0) if jacobi_chunk is None else jacobi_chunk),
            jacobi_max_iters=int(m.get("jacobi_max_iters", 32)
                                 if jacobi_max_iters is None else jacobi_max_iters),
            jacobi_tol=float(m.get("jacobi_tol", 1e-3) if jacobi_tol is None else jacobi_tol))
        if not (math.isfinite(opts.guidance) and opts.guidance >= 0):
            raise ConfigError(f"{g_name}={opts.guidance} must be a finite number >= 0")
        if opts.rule not in ss.RULES:
            raise ConfigError(f"config.sample.rule={opts.rule!r}; use one of "
                              f"{', '.join(ss.RULES)}")
        if opts.guidance > 0 and not self.model.conditional:
            raise ConfigError(f"{g_name}={opts.guidance} asked of an unconditional model "
                              "(guidance needs class labels or text)")
        if opts.jacobi_chunk < 0 or (opts.jacobi_chunk
                                     and self.model.num_tokens % opts.jacobi_chunk):
            raise ConfigError(f"config.sample.jacobi_chunk={opts.jacobi_chunk} must be 0 "
                              f"(sequential), -1 (config.model.jacobi_chunk) or divide the "
                              f"number of tokens {self.model.num_tokens}")
        if opts.jacobi_max_iters < 1 or not opts.jacobi_tol >= 0:
            raise ConfigError("jacobi_max_iters must be >= 1 and jacobi_tol >= 0")
        return opts

    def resolve_labels(self, rng: jax.Array, num: int, class_label) -> jax.Array | None:
        """``[num]`` int32 labels (random classes for ``None`` / ``-2``, ``-1`` = null id
        ``K``); None for a model without classes (:func:`resolve_class_labels`)."""
        return resolve_class_labels(rng, num, class_label, self.num_classes,
                                    null_id=self.num_classes)
    def _resolve_text(self, num: int, text, text_mask, null_text):
        """``(features [num, T, E], null features [num, T, E])`` for a text model."""
        shape = (self.text_len, self.text_dim)

        def fit(a, what):
            a = jnp.asarray(a, jnp.float32)
            if a.shape == shape:
                a = jnp.broadcast_to(a, (num, *shape))
            if a.shape != (num, *shape):
                raise ConfigError(f"{what} must be [{num}, {shape[0]}, {shape[1]}] (or "
                                  f"[{shape[0]}, {shape[1]}]), got {list(a.shape)}")
            return a

        null = self.null_text(num) if null_text is None else fit(null_text, "null_text")
        if text is None:
            logging.warning("starflow: no text features given; sampling from the null text")
            return null, null
        feats = fit(text, "text")
        if text_mask is not None:
            mask = jnp.asarray(text_mask)
            if mask.shape == (self.text_len,):
                mask = jnp.broadcast_to(mask, (num, self.text_len))
            if mask.shape != (num, self.text_len):
                raise ConfigError(f"text_mask must be [{num}, {self.text_len}], got "
                                  f"{list(mask.shape)}")
            feats = self.text_features(feats, mask)
        return feats, null

    def _sample_fn(self, opts: ss.SampleOptions):
        """Jitted ``(flow params, z [B, N, D], cond, null) -> scaled latents [B, h, w, c]``."""
        key = ("sample", opts)
        if key not in self._jitted:
            model = self.model

            def fn(params, z, cond, null):
                x = ss.sample_tokens(model, params, z, cond, null, opts)
                return model.apply({"params": params}, x, method="from_tokens")

            self._jitted[key] = jax.jit(fn)
        return self._jitted[key]

    def nll_sum(self, flow_params: PyTree, x: jax.Array, cond) -> jax.Array:
        """``-log p(x)`` of scaled latents ``x [B, h, w, c]`` summed over dimensions -> ``[B]``."""
        z, logdets, _ = self.model.apply({"params": flow_params}, x, cond)
        b = z.shape[0]
        log_pz = -0.5 * jnp.sum((jnp.square(z) + _LOG2PI).reshape(b, -1), axis=-1)
        return -(log_pz + sum(jnp.sum(ld.reshape(b, -1), axis=-1) for ld in logdets))

    def denoise(self, flow_params: PyTree, x: jax.Array, cond, sigma: float) -> jax.Array:
        """One score step ``x - sigma^2 grad_x NLL(x)`` (Tweedie) of scaled latents."""
        grad = jax.grad(lambda v: jnp.sum(self.nll_sum(flow_params, v, cond)))(x)
        return x - (sigma**2) * grad

    def _denoise_fn(self, sigma: float):
        key = ("denoise", sigma)
        if key not in self._jitted:
            self._jitted[key] = jax.jit(lambda p, x, c: self.denoise(p, x, c, sigma))
        return self._jitted[key]

    def _decode_fn(self):
        if ("decode",) not in self._jitted:
            self._jitted[("decode",)] = jax.jit(self.decode)
        return self._jitted[("decode",)]

    def sample(
        self,
        params: PyTree,
        rng: jax.Array,
        num: int,
        guidance: float | None = None,
        rule: str | None = None,
        class_label: int | Any | None = None,
        denoise: bool | None = None,
        denoise_sigma: float | None = None,
        annealed: bool | None = None,
        jacobi_chunk: int | None = None,
        temperature: float = 1.0,
        batch_size: int | None = None,
        max_retries: int = 3,
        text: Any = None,
        text_mask: Any = None,
        null_text: Any = None,
        return_latents: bool = False,
        **kwargs,
    ) -> jax.Array:
        """``num`` samples: uint8 images ``[num, H, W, C]`` through the frozen decoder (float32
        unscaled latents with ``autoencoder='none'``; the flow's scaled latents with
        ``return_latents=True``, after the optional denoising).

        Args:
          guidance, rule, annealed, jacobi_chunk: see :class:`starflow_sampling.SampleOptions`;
            None (NaN, ``''``, -1) = ``config.model``'s ``sample_guidance``, ``sample_rule``,
            ``sample_annealed``, ``jacobi_chunk``.
          class_label: None or -2 (random classes), an int or ``[num]`` ints; -1 = null label.
          denoise: one score step at ``denoise_sigma`` (None/NaN: ``noise_std``) before
            decoding; None = ``config.model.sample_denoise``.
          temperature: prior temperature (noise ``N(0, T^2 I)``).
          batch_size: samples per compiled call (0/None: ``sample_batch_size`` or all).
          max_retries: redraws of samples that came out NaN.
          text, text_mask, null_text: text features ``[num or 1, T, E]`` / ``[T, E]``, their mask
            and the unconditional features for guidance (default zeros).

        Raises:
          ConfigError: a bad option, named ``config.sample.<option>``.
        """
        if kwargs:
            logging.info("starflow.sample ignores %s", sorted(kwargs))
        if not (float(temperature) > 0 and math.isfinite(float(temperature))):
            raise ConfigError(f"config.sample.temperature must be > 0, got {temperature}")
        if batch_size is not None and int(batch_size) < 0:
            raise ConfigError(f"config.sample.batch_size={batch_size} must be >= 0")
        if int(max_retries) < 0:
            raise ConfigError(f"config.sample.max_retries={max_retries} must be >= 0")
        opts = self.resolve_sample_options(guidance, rule, annealed, jacobi_chunk)
        if denoise is None:
            denoise = bool(self.config.model.get("sample_denoise", True))
        sigma = 0.0
        if denoise:
            given = _given(denoise_sigma)
            sigma = self.noise_std if given is None else float(given)
            if not sigma >= 0:
                raise ConfigError(f"config.sample.denoise_sigma={denoise_sigma} must be >= 0")
        r_lab, r_noise = jax.random.split(rng)
        params = nn.unbox(params)
        flow = params["flow"]
        null = None
        if self.num_classes:
            cond = self.resolve_labels(r_lab, num, class_label)
        elif self.text_len:
            self.resolve_labels(r_lab, num, class_label)  # refuses a class label
            cond, null = self._resolve_text(num, text, text_mask, null_text)
        else:
            cond = self.resolve_labels(r_lab, num, class_label)
        fn = self._sample_fn(opts)
        bs = int(batch_size or self.config.model.get("sample_batch_size", 0) or num)
        n, d = self.model.num_tokens, self.model.token_dim
        outs = []
        for i, start in enumerate(range(0, num, bs)):
            cnt = min(bs, num - start)
            cb = None if cond is None else cond[start:start + cnt]
            nb = None if null is None else null[start:start + cnt]
            key = jax.random.fold_in(r_noise, i)
            z = temperature * jax.random.normal(key, (cnt, n, d), jnp.float32)
            x = fn(flow, z, cb, nb)
            for retry in range(int(max_retries)):
                bad = np.asarray(jnp.any(~jnp.isfinite(x.reshape(cnt, -1)), axis=-1))
                if not bad.any():
                    break
                logging.warning("starflow: %d samples not finite, redrawing (try %d)",
                                int(bad.sum()), retry + 1)
                key = jax.random.fold_in(key, 1000 + retry)
                z = jnp.where(jnp.asarray(bad)[:, None, None],
                              temperature * jax.random.normal(key, z.shape, jnp.float32), z)
                x = jnp.where(jnp.asarray(bad).reshape(-1, *([1] * (x.ndim - 1))),
                              fn(flow, z, cb, nb), x)
            if sigma > 0:
                x = self._denoise_fn(sigma)(flow, x, cb)
            outs.append(x if return_latents else self._decode_fn()(params, x))
        return jnp.concatenate(outs, axis=0)

    def write_samples(self, samples: Any, path: str) -> str:
        """uint8 images ``[N, H, W, C]`` -> a PNG grid of ``ceil(sqrt(N))`` columns; latents
        (float, ``autoencoder='none'``) -> a ``.npy`` file. Returns ``path``."""
        arr = np.asarray(jax.device_get(samples))
        if arr.ndim != 4:
            raise ConfigError(f"STARFlow samples must be [N, H, W, C], got shape {arr.shape}")
        if arr.dtype != np.uint8:
            if not os.fspath(path).endswith(".npy"):
                raise UserError("these samples are latents (a model with autoencoder='none' "
                                "has no decoder)", hint="write them to a .npy file")
            np.save(path, arr)
            return os.fspath(path)
        from jaxflows.eval.grid import save_grid

        save_grid(arr.astype(np.float32) / 255.0, path,
                  ncol=max(1, int(math.ceil(math.sqrt(arr.shape[0])))))
        return os.fspath(path)


TASK = StarFlowTask
