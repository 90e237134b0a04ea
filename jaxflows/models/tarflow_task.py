"""TarFlow as a training task: :class:`TarFlowTask` (``config.model.name =
'jaxflows.models.tarflow_task'``, alias ``'tarflow'``).

The flow is :mod:`jaxflows.models.tarflow`, ``config.model`` is
:mod:`jaxflows.models.tarflow_config` and the samplers are :mod:`jaxflows.models.tarflow_sampling`.
Here: the loss (noised or dequantised pixels, label dropout, the VP prior-variance fit), bits/dim
evaluation, and sampling to an image grid.

``jaxflows sample`` options (``--config.sample.KEY=VALUE``, see :attr:`TarFlowTask.sample_options`):

* ``guidance`` (float): class guidance weight (attention-temperature guidance for an
  unconditional model); ``nan`` = ``config.model.sample_guidance``.
* ``class_label`` (int): ``-2`` = a random class per sample, ``-1`` = the null (mean) class,
  ``k`` = class ``k``; conditional models only (an unconditional model takes only ``-2``).
* ``denoise`` (bool): the one-step Tweedie denoiser at ``denoise_sigma`` (``nan`` = the training
  ``noise_std``).
* ``attn_temp`` (float): attention temperature of the unconditional pass; ``nan`` =
  ``config.model.sample_attn_temp``.
* ``annealed`` (bool): ramp the guidance weight over the token index (ml-tarflow's FID protocol).
  A call of :meth:`TarFlowTask.sample` without it uses ``config.model.sample_annealed``.
* ``jacobi_chunk`` (int): ``-1`` = ``config.model.jacobi_chunk``, ``0`` = sequential, ``L > 0``
  = Jacobi over chunks of ``L`` tokens (``L`` divides the token count).
* ``temperature`` (float): prior temperature ``T`` (noise ``N(0, T^2 I)``), > 0.
* ``batch_size`` (int): samples per compiled call; ``0`` = ``config.model.sample_batch_size`` or
  all at once.
* ``max_retries`` (int): redraws of samples that came out NaN.

A bad value raises :class:`jaxflows.errors.ConfigError` (a ``ValueError``) naming
``config.sample.<option>`` (or the ``config.model`` key it fell back on).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxflows.data.transforms import uniform_dequantize
from jaxflows.errors import ConfigError
from jaxflows.models import tarflow_sampling as ts
from jaxflows.models.class_labels import RANDOM_CLASSES, resolve_class_labels
from jaxflows.models.tarflow import logit_bijector, to_signed_unit
from jaxflows.models.tarflow_config import validate_model_config
from jaxflows.nn.patches import unpatchify
from jaxflows.train.task import DataInfo, ElementSpec, Metrics, PyTree, Task, image_element_spec

_LOG2PI = math.log(2 * math.pi)

#: ``class_label`` value meaning "a random class per sample" (the ``jaxflows sample`` default)


def _given(value):
    """``None`` for an option left at its "from config.model" default (None or NaN)."""
    if value is None:
        return None
    if isinstance(value, (float, np.floating)) and math.isnan(value):
        return None
    return value


class TarFlowTask(Task):
    """TarFlow for the training engine (see :mod:`jaxflows.train.task`).

    ``config.model`` keys (see :func:`jaxflows.models.tarflow_config.default_model_config`):
    ``patch_size, channels, num_blocks, layers_per_block, head_dim, mlp_ratio, num_classes``
    (0 = unconditional; must equal the data's class count otherwise), ``nvp, remat, attention,
    noise_type`` ('gaussian' | 'uniform' | 'none'), ``noise_std, drop_label, logit_alpha,
    max_log_scale`` and sampling defaults ``sample_guidance, sample_attn_temp, sample_annealed,
    jacobi_chunk, jacobi_max_iters, jacobi_tol, sample_batch_size``.
    """

    #: ``jaxflows sample`` options and their defaults (see the module docstring): NaN / -1 / 0
    #: fall back on ``config.model``; ``class_label=-2`` draws a random class per sample
    sample_options: ClassVar[dict[str, Any]] = {
        "guidance": float("nan"),
        "class_label": RANDOM_CLASSES,
        "denoise": False,
        "denoise_sigma": float("nan"),
        "attn_temp": float("nan"),
        "annealed": True,
        "jacobi_chunk": -1,
        "temperature": 1.0,
        "batch_size": 0,
        "max_retries": 3,
    }

    def __init__(self, config: ml_collections.ConfigDict, data_info: DataInfo):
        super().__init__(config, data_info)
        self.model = validate_model_config(config, data_info.image_shape, data_info.num_classes)
        m = config.model
        self.noise_type = str(m.get("noise_type", "gaussian"))
        self.noise_std = float(m.get("noise_std", 0.0))
        self.drop_label = float(m.get("drop_label", 0.0))
        self.num_classes = int(m.get("num_classes", 0))
        self.logit_alpha = float(m.get("logit_alpha", 0.0))
        self._logit = logit_bijector(self.logit_alpha) if self.logit_alpha else None
        self.best_metric = "bpd" if self.noise_type == "uniform" else "loss"
        self._jitted: dict = {}

    def example_spec(self) -> ElementSpec:
        """``{'image': uint8 [H, W, C]}``, plus ``'label': int32 []`` for a conditional model."""
        return image_element_spec(self.data_info.image_shape, self.num_classes)

    # ---- helpers ---------------------------------------------------------------------
    def _labels(self, batch) -> jax.Array | None:
        if not self.num_classes:
            return None
        return jnp.asarray(batch["label"], jnp.int32)

    def _apply(self, params, x, y):
        """Flow of pixels ``x`` in [-1, 1] -> ``(z, logdet per dimension [B])``, the logit
        preprocessing (when on) included in the log-det."""
        if self._logit is None:
            return self.model.apply({"params": params}, x, y)
        x, ld_pre = self._logit.forward_and_log_det(x)
        z, logdet = self.model.apply({"params": params}, x, y)
        return z, logdet + jnp.mean(ld_pre, axis=(1, 2, 3))

    def _noisy(self, rng, image):
        if self.noise_type == "uniform":
            return uniform_dequantize(rng, image)
        x = to_signed_unit(image)
        if self.noise_type == "gaussian":
            x = x + self.noise_std * jax.random.normal(rng, x.shape, jnp.float32)
        return x

    # ---- Task API --------------------------------------------------------------------
    def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> PyTree:
        """Params (with logical-partitioning boxes) from a dummy one-example input."""
        h, w, c = self.data_info.image_shape
        x = jnp.zeros((1, h, w, c), jnp.float32)
        y = jnp.zeros((1,), jnp.int32) if self.num_classes else None
        return self.model.init(rng, x, y)["params"]

    def loss(
        self, params: PyTree, batch: dict[str, jax.Array], rng: jax.Array, step: jax.Array
    ) -> tuple[jax.Array, Metrics]:
        """``0.5 mean(z^2) - mean(sum_t logdet_t)`` on noised / dequantised pixels, with label
        dropout (label -> -1, the mean class embedding). VP mode adds the prior-variance fit."""
        del step
        r_noise, r_drop = jax.random.split(rng)
        x = self._noisy(r_noise, batch["image"])
        y = self._labels(batch)
        if y is not None and self.drop_label > 0:
            drop = jax.random.uniform(r_drop, y.shape) < self.drop_label
            y = jnp.where(drop, -1, y)
        z, logdet = self._apply(params, x, y)
        mse = 0.5 * jnp.mean(jnp.square(z))
        flow_loss = mse - jnp.mean(logdet)
        metrics = {"flow_loss": flow_loss, "mse_z": mse, "logdet": jnp.mean(logdet)}
        loss = flow_loss
        if not self.model.nvp:
            logvar = self.model.apply({"params": params}, method="prior_log_var")
            z2 = jax.lax.stop_gradient(jnp.mean(jnp.square(z), axis=0))
            var_fit = 0.5 * jnp.mean(z2 * jnp.exp(-logvar) + logvar)
            loss = loss + var_fit
            metrics["prior_var_fit"] = var_fit
        metrics["loss"] = loss
        return loss, metrics

    def eval_batch(
        self, params: PyTree, batch: dict[str, jax.Array], rng: jax.Array
    ) -> Metrics:
        """Per-example ``{'bpd', 'loss'}`` (plus ``'bpd_cond'`` for conditional models).

        ``bpd``: ml-tarflow's protocol -- one uniform dequantisation sample in float32, no label
        (mean class embedding), ``log p = sum(-0.5 (z^2 + log 2 pi)) - D log 128``,
        ``bpd = (-log p / D - sum_t logdet_t) / ln 2``. ``loss``: the training objective per
        example at the training noise, with the true labels.
        """
        image = batch["image"]
        dim = math.prod(image.shape[1:])
        r_deq, r_noise = jax.random.split(rng)
        x_deq = uniform_dequantize(r_deq, image)

        def bpd_of(z, logdet):
            log_p = -0.5 * jnp.sum(jnp.square(z) + _LOG2PI, axis=(1, 2)) - dim * math.log(128)
            return (-log_p / dim - logdet) / math.log(2)

        y = self._labels(batch)
        out = {}
        uncond_y = None if y is None else -jnp.ones_like(y)
        z, logdet = self._apply(params, x_deq, uncond_y)
        out["bpd"] = bpd_of(z, logdet)
        if self.noise_type == "uniform" and y is None:
            out["loss"] = 0.5 * jnp.mean(jnp.square(z), axis=(1, 2)) - logdet
            return out
        if y is not None:
            zc, ldc = self._apply(params, x_deq, y)
            out["bpd_cond"] = bpd_of(zc, ldc)
            if self.noise_type == "uniform":
                out["loss"] = 0.5 * jnp.mean(jnp.square(zc), axis=(1, 2)) - ldc
                return out
        z, logdet = self._apply(params, self._noisy(r_noise, image), y)
        out["loss"] = 0.5 * jnp.mean(jnp.square(z), axis=(1, 2)) - logdet
        return out

    def final_eval(self, params: PyTree, batches, rng: jax.Array) -> dict[str, Any]:
        """Per-image bits/dim on the test split (one fresh dequantisation sample per image):
        ``bpd_sem`` (standard error of the mean), ``bpd_median``, ``bpd_max`` and
        ``num_bpd_over_8`` (images above 8 bits/dim, i.e. worse than a uniform density: a
        mean can hide a handful of blown-up images), plus ``per_example['bpd']``."""
        if ("eval_batch",) not in self._jitted:
            self._jitted[("eval_batch",)] = jax.jit(self.eval_batch)
        fn = self._jitted[("eval_batch",)]
        vals = []
        for i, batch in enumerate(batches()):
            out = fn(nn.unbox(params), batch, jax.random.fold_in(rng, i))
            keep = np.asarray(batch["mask"]).astype(bool)
            vals.append(np.asarray(out["bpd"])[keep])
        bpd = np.concatenate(vals) if vals else np.zeros((0,))
        if bpd.size == 0:
            return {}
        finite = bpd[np.isfinite(bpd)]
        return {
            "bpd_sem": float(np.std(bpd, ddof=1) / np.sqrt(bpd.size)) if bpd.size > 1 else 0.0,
            "bpd_median": float(np.median(finite)) if finite.size else float("nan"),
            "bpd_max": float(np.max(bpd)),
            "num_bpd_over_8": int(np.sum(~(bpd <= 8.0))),
            "per_example": {"bpd": bpd},
        }

    def _resolve_labels(self, rng, num, class_label):
        """``[num]`` int32 labels (random classes for ``None`` / ``-2``, ``-1`` = no label);
        None if unconditional (:func:`resolve_class_labels`)."""
        return resolve_class_labels(rng, num, class_label, self.num_classes)

    def resolve_sample_options(self, guidance: float | None = None,
                               attn_temp: float | None = None, annealed: bool | None = None,
                               jacobi_chunk: int | None = None,
                               jacobi_max_iters: int | None = None,
                               jacobi_tol: float | None = None) -> ts.SampleOptions:
        """:class:`SampleOptions` from the arguments, falling back on ``config.model`` for
        ``None`` (and for NaN floats / ``jacobi_chunk=-1``, the ``jaxflows sample`` defaults)."""
        m = self.config.model
        guidance, attn_temp = _given(guidance), _given(attn_temp)
        if jacobi_chunk is not None and int(jacobi_chunk) == -1:
            jacobi_chunk = None
        opts = ts.SampleOptions(
            guidance=float(m.get("sample_guidance", 0.0) if guidance is None else guidance),
            attn_temp=float(m.get("sample_attn_temp", 1.0) if attn_temp is None else attn_temp),
            annealed=bool(m.get("sample_annealed", True) if annealed is None else annealed),
            jacobi_chunk=int(m.get("jacobi_chunk", 0) if jacobi_chunk is None else jacobi_chunk),
            jacobi_max_iters=int(m.get("jacobi_max_iters", 32)
                                 if jacobi_max_iters is None else jacobi_max_iters),
            jacobi_tol=float(m.get("jacobi_tol", 1e-6) if jacobi_tol is None else jacobi_tol),
        )
        name = lambda opt, key, given: (f"config.sample.{opt}" if given is not None
                                        else f"config.model.{key}")
        g_name = name("guidance", "sample_guidance", guidance)
        t_name = name("attn_temp", "sample_attn_temp", attn_temp)
        if not math.isfinite(opts.guidance):
            raise ConfigError(f"{g_name}={opts.guidance} must be a finite number")
        if not (opts.attn_temp > 0 and math.isfinite(opts.attn_temp)):
            raise ConfigError(f"{t_name}={opts.attn_temp} must be > 0")
        if opts.guidance != 0 and not self.num_classes and opts.attn_temp == 1.0:
            raise ConfigError(
                f"{g_name}={opts.guidance} asked of an unconditional model: it needs "
                f"{t_name} != 1 (unconditional guidance by attention temperature)")
        c_name = name("jacobi_chunk", "jacobi_chunk", jacobi_chunk)
        if opts.jacobi_chunk < 0:
            raise ConfigError(f"{c_name}={opts.jacobi_chunk} must be 0 (sequential), a divisor "
                              f"of the number of tokens {self.model.num_tokens}, or -1 "
                              "(config.model.jacobi_chunk)")
        if opts.jacobi_chunk > 0 and self.model.num_tokens % opts.jacobi_chunk:
            raise ConfigError(f"{c_name}: jacobi_chunk {opts.jacobi_chunk} does not divide the "
                              f"number of tokens {self.model.num_tokens}")
        if opts.jacobi_max_iters < 1:
            raise ConfigError(f"jacobi_max_iters={opts.jacobi_max_iters} must be >= 1")
        if not opts.jacobi_tol >= 0:
            raise ConfigError(f"jacobi_tol={opts.jacobi_tol} must be >= 0")
        return opts

    def _sample_fn(self, opts: ts.SampleOptions):
        """Jitted ``(params, z [B, N, D], y) -> images [B, H, W, C]`` in [-1, 1] (unclipped)."""
        key = ("sample", opts)
        if key not in self._jitted:
            model, shape, p = self.model, self.data_info.image_shape, self.model.patch_size

            def fn(params, z, y):
                x = unpatchify(ts.sample_tokens(model, params, z, y, opts), p, shape)
                return x if self._logit is None else self._logit.inverse(x)

            self._jitted[key] = jax.jit(fn)
        return self._jitted[key]

    def _denoise_fn(self, sigma: float):
        key = ("denoise", sigma)
        if key not in self._jitted:
            model = self.model
            self._jitted[key] = jax.jit(
                lambda params, x, y: ts.denoise(model, params, x, y, sigma))
        return self._jitted[key]

    def sample(
        self,
        params: PyTree,
        rng: jax.Array,
        num: int,
        guidance: float | None = None,
        class_label: int | Any | None = None,
        denoise: bool = False,
        attn_temp: float | None = None,
        annealed: bool | None = None,
        jacobi_chunk: int | None = None,
        denoise_sigma: float | None = None,
        batch_size: int | None = None,
        max_retries: int = 3,
        temperature: float = 1.0,
        return_both: bool = False,
        **kwargs,
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """``num`` images ``[num, H, W, C]`` float32 in [0, 1].

        Args:
          guidance: class (or attention-temperature) guidance weight; default (None or NaN)
            ``config.model.sample_guidance``.
          class_label: None or -2 (random classes for a conditional model), an int, or ``[num]``
            ints; -1 = the null (mean) class.
          denoise: apply the one-step Tweedie denoiser at ``denoise_sigma`` (default, None or
            NaN: the training ``noise_std``).
          attn_temp, annealed, jacobi_chunk: see :class:`SampleOptions`; None (NaN / -1) =
            ``config.model``'s ``sample_attn_temp``, ``sample_annealed``, ``jacobi_chunk``.
          batch_size: samples per compiled call (default ``config.model.sample_batch_size`` or
            ``num``).
          max_retries: samples containing NaN are redrawn with fresh noise up to this many times.
          temperature: prior temperature ``T``, noise ``z ~ N(0, T^2 I)`` (1 = the model).
          return_both: with ``denoise``, return ``(samples, denoised samples)`` of the same draw.

        Raises:
          ConfigError: a bad option, named ``config.sample.<option>``.
        """
        if return_both and not denoise:
            raise ValueError("return_both needs denoise=True")
        if not (float(temperature) > 0 and math.isfinite(float(temperature))):
            raise ConfigError(f"config.sample.temperature must be > 0, got {temperature}")
        if batch_size is not None and int(batch_size) < 0:
            raise ConfigError(f"config.sample.batch_size={batch_size} must be >= 0 "
                              "(0 = config.model.sample_batch_size, or all at once)")
        if int(max_retries) < 0:
            raise ConfigError(f"config.sample.max_retries={max_retries} must be >= 0")
        if kwargs:
            logging.info("tarflow.sample ignores %s", sorted(kwargs))
        opts = self.resolve_sample_options(guidance, attn_temp, annealed, jacobi_chunk)
        r_lab, r_noise = jax.random.split(rng)
        y = self._resolve_labels(r_lab, num, class_label)
        sigma = 0.0
        denoise_sigma = _given(denoise_sigma)
        if denoise:
            sigma = self.noise_std if denoise_sigma is None else float(denoise_sigma)
            if self._logit is not None:
                raise ConfigError("config.sample.denoise is not defined for a logit-preprocessed "
                                  "model (config.model.logit_alpha > 0)")
            if sigma <= 0:
                raise ConfigError("config.sample.denoise needs a noise level: train with "
                                  "noise_type='gaussian' or set config.sample.denoise_sigma > 0")
        fn = self._sample_fn(opts)
        bs = int(batch_size or self.config.model.get("sample_batch_size", 0) or num)
        n, d = self.model.num_tokens, self.model.token_dim
        outs, outs_denoised = [], []
        for i, start in enumerate(range(0, num, bs)):
            cnt = min(bs, num - start)
            yb = None if y is None else y[start:start + cnt]
            key = jax.random.fold_in(r_noise, i)
            z = temperature * jax.random.normal(key, (cnt, n, d), jnp.float32)
            x = fn(params, z, yb)
            for retry in range(max_retries):
                bad = np.asarray(jnp.any(jnp.isnan(x), axis=(1, 2, 3)))
                if not bad.any():
                    break
                logging.warning("tarflow: %d samples with NaN, redrawing (try %d)",
                                int(bad.sum()), retry + 1)
                key = jax.random.fold_in(key, 1000 + retry)
                z_new = temperature * jax.random.normal(key, z.shape, jnp.float32)
                z = jnp.where(jnp.asarray(bad)[:, None, None], z_new, z)
                x = jnp.where(jnp.asarray(bad)[:, None, None, None], fn(params, z, yb), x)
            outs.append(x)
            if sigma > 0:  # the one-step denoiser on the (NaN-free) draw
                outs_denoised.append(self._denoise_fn(sigma)(params, x, yb))

        def to_unit(parts):
            return jnp.clip((jnp.concatenate(parts, axis=0) + 1.0) / 2.0, 0.0, 1.0)

        if return_both:
            return to_unit(outs), to_unit(outs_denoised)
        return to_unit(outs_denoised if sigma > 0 else outs)

    def write_samples(self, samples: Any, path: str) -> str:
        """Writes images ``[N, H, W, C]`` in [0, 1] (what :meth:`sample` returns) to ``path`` as a
        PNG grid of ``ceil(sqrt(N))`` columns; returns ``path``."""
        images = np.asarray(jax.device_get(samples), np.float32)
        if images.ndim != 4:
            raise ConfigError(f"TarFlow samples must be images [N, H, W, C], got shape "
                              f"{images.shape}")
        from jaxflows.eval.grid import save_grid

        save_grid(images, path, ncol=max(1, int(math.ceil(math.sqrt(images.shape[0])))))
        return os.fspath(path)



TASK = TarFlowTask
