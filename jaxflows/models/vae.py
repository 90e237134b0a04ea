"""VAE with flow posteriors: Householder flow (Tomczak & Welling 2016), (cc)linear IAF (Tomczak &
Welling 2017), and the planar / IAF / Sylvester baselines.

Model (as in the papers and the official code, ``jmtomczak/vae_vpflows``):

* encoder: gated ``D -> 300 -> 300`` MLP (``D = prod(image_shape)``, so 8x8 digits work too),
  last hidden layer ``h``; heads ``mu(h)``, ``logvar(h)`` (latent ``M = 40``);
* posterior: ``z0 = mu + exp(logvar / 2) * eps``, then an amortized flow fed by ``h``
  (``config.model.flow``): ``zT, logdet = flow(h).forward_and_log_det(z0)``;
* decoder: gated ``M -> 300 -> 300`` MLP, then a Bernoulli likelihood (logits) or, with
  ``likelihood='gaussian'`` for gray data, a per-pixel Gaussian with mean ``sigmoid(.)`` and
  log-variance bounded by ``Hardtanh(-4.5, 0)`` (the later VampPrior code);
* objective per example, one sample:
  ``ELBO = log p(x|zT) + log N(zT; 0, I) - log q(z0|x) + logdet``, reported as
  ``-ELBO = RE + KL`` with ``RE = -log p(x|zT)`` and the Monte Carlo
  ``KL = log q(z0|x) - logdet - log N(zT; 0, I)`` (both Gaussians include their
  ``-M/2 log 2 pi`` constant, so the constants cancel inside the KL).

Training uses KL warm-up ``beta = min(1, epoch / warmup_epochs)`` with the fractional
``epoch = step / steps_per_epoch``. The paper code's ``beta = (epoch - 1) / 100`` with epochs
counted from 1 is the same schedule counted from 0. Training images are binarized dynamically and
the binary sample is both the encoder input and the Bernoulli target (this fixes reference bug
§9.2, where the gray image was the target). Eval batches arrive binarized once (uint8 {0, 255},
the ``binarize_eval`` data transform), so the model just divides by 255.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxflows.data.transforms import dynamic_binarize
from jaxflows.errors import ConfigError
from jaxflows.eval.likelihood import importance_sampled_nll
from jaxflows.nn.activations import softplus
from jaxflows.nn.gated import GatedMLP, logical_dense
from jaxflows.train.task import (
    DataInfo,
    Metrics,
    PyTree,
    Task,
    image_element_spec,
    masked_mean,
    to_host,
)
from jaxflows.train.xla_options import cpu_library_fusions_off

FLOWS = ("none", "householder", "linear_iaf", "cc_linear_iaf", "planar", "iaf", "sylvester")
LIKELIHOODS = ("bernoulli", "gaussian")
_LOG_2PI = math.log(2.0 * math.pi)


def make_flow(
    flow: str,
    latent_dim: int,
    num_flows: int,
    num_components: int,
) -> nn.Module | None:
    """Builds the amortized posterior flow module named ``flow`` (``None`` for ``'none'``).

    Each returned module maps ``h: [B, H]`` to a ``distrax.Bijector`` acting on ``[B, M]``.
    """
    if flow == "none":
        return None
    from jaxflows.nn import amortized  # imported lazily: the plain VAE does not need it

    if flow == "householder":
        return amortized.HouseholderFlow(latent_dim, num_flows)
    if flow == "linear_iaf":
        return amortized.LinearIAF(latent_dim)
    if flow == "cc_linear_iaf":
        return amortized.CCLinearIAF(latent_dim, num_components)
    if flow == "planar":
        return amortized.PlanarFlow(latent_dim, num_flows)
    if flow == "iaf":
        return amortized.IAF(latent_dim, num_flows, hidden=320)
    if flow == "sylvester":
        return amortized.SylvesterFlow(latent_dim, num_flows, kind="orthogonal")
    raise ValueError(f"unknown flow {flow!r}; valid flows: {', '.join(FLOWS)}")


def bernoulli_log_prob(x: jax.Array, logits: jax.Array) -> jax.Array:
    """``sum_d log Bernoulli(x_d; sigmoid(logits_d))`` over the last axis: ``[..., D] -> [...]``.

    Uses the exact, numerically stable form ``x log sigmoid(l) + (1 - x) log sigmoid(-l)
    = x l - softplus(l)`` (one stable softplus per pixel) rather than clamping the mean to
    ``[1e-7, 1 - 1e-7]`` as the original code did; it is finite for any logits.
    """
    logits = logits.astype(jnp.float32)
    return jnp.sum(x * logits - softplus(logits), axis=-1)


def gaussian_log_prob(x: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """``sum_d log N(x_d; mean_d, exp(logvar_d))`` over the last axis: ``[..., D] -> [...]``.

    Includes ``-0.5 * D * log(2 pi)`` (the original Keras HF code *added* it, reference §9.3).
    """
    ll = -0.5 * (_LOG_2PI + logvar + jnp.square(x - mean) * jnp.exp(-logvar))
    return jnp.sum(ll, axis=-1)


def std_normal_log_prob(z: jax.Array) -> jax.Array:
    """``log N(z; 0, I)`` summed over the last axis: ``[..., M] -> [...]``."""
    return -0.5 * jnp.sum(_LOG_2PI + jnp.square(z), axis=-1)


class FlowVAE(nn.Module):
    """The VP-flow VAE. Inputs ``x: [B, D]`` in [0, 1]; see the module docstring.

    Attributes:
      image_dim: ``D``, the flattened image size.
      latent_dim: ``M``.
      hidden: gated layer widths of the encoder and (mirrored) decoder.
      flow, num_flows, num_components: the posterior flow (see :data:`FLOWS`).
      likelihood: ``'bernoulli'`` or ``'gaussian'``.
      dtype: matmul dtype of the gated MLPs; heads, flows and densities are float32.
    """

    image_dim: int
    latent_dim: int = 40
    hidden: Sequence[int] = (300, 300)
    flow: str = "none"
    num_flows: int = 1
    num_components: int = 3
    likelihood: str = "bernoulli"
    dtype: Any = jnp.float32

    def setup(self):
        m = self.latent_dim
        self.encoder = GatedMLP(self.hidden, in_axis="embed", dtype=self.dtype)
        self.mu_head = logical_dense(m, ("hidden", "latent"))
        self.logvar_head = logical_dense(m, ("hidden", "latent"))
        self.flow_net = make_flow(self.flow, m, self.num_flows, self.num_components)
        self.decoder = GatedMLP(tuple(self.hidden), in_axis="latent", dtype=self.dtype)
        self.out_head = logical_dense(self.image_dim, ("hidden", "embed"))
        if self.likelihood == "gaussian":
            self.logvar_out_head = logical_dense(self.image_dim, ("hidden", "embed"))

    # --- pieces --------------------------------------------------------------------------
    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``x: [B, D]`` -> ``(mu [B, M], logvar [B, M], h [B, H])`` (float32)."""
        h = self.encoder(x.astype(self.dtype)).astype(jnp.float32)
        return self.mu_head(h), self.logvar_head(h), h

    def posterior_bijector(self, h: jax.Array) -> distrax.Bijector | None:
        """The amortized flow for context ``h: [B, H]`` (``None`` for the plain VAE)."""
        return None if self.flow_net is None else self.flow_net(h)

    def decode(self, z: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        """``z: [..., M]`` -> ``(logits or mean-logits [..., D], logvar [..., D] or None)``."""
        g = self.decoder(z.astype(self.dtype)).astype(jnp.float32)
        logits = self.out_head(g)
        if self.likelihood == "gaussian":
            return logits, jnp.clip(self.logvar_out_head(g), -4.5, 0.0)  # Hardtanh(-4.5, 0)
        return logits, None

    def log_likelihood(self, x: jax.Array, z: jax.Array) -> jax.Array:
        """``log p(x | z)``: ``x: [B, D]``, ``z: [..., B, M]`` -> ``[..., B]``."""
        logits, logvar = self.decode(z)
        if self.likelihood == "gaussian":
            return gaussian_log_prob(x, jax.nn.sigmoid(logits), logvar)
        return bernoulli_log_prob(x, logits)

    def mean_image(self, z: jax.Array) -> jax.Array:
        """Decoder mean ``sigmoid(logits)`` in [0, 1]: ``z: [..., M]`` -> ``[..., D]``."""
        return jax.nn.sigmoid(self.decode(z)[0])

    # --- the objective -------------------------------------------------------------------
    def __call__(self, x: jax.Array, eps: jax.Array) -> dict[str, jax.Array]:
        """Per-sample log-density terms for noise ``eps: [..., B, M]`` (leading sample axes).

        Returns a dict of ``[..., B]`` arrays: ``log_px`` = log p(x|zT), ``log_pz`` =
        log N(zT; 0, I), ``log_qz0`` = log q(z0|x), ``logdet`` (of z0 -> zT), and ``zT``
        ``[..., B, M]``.
        """
        mu, logvar, h = self.encode(x)
        eps = eps.astype(jnp.float32)
        z0 = mu + jnp.exp(0.5 * logvar) * eps
        # log N(z0; mu, sigma^2) written through eps = (z0 - mu) / sigma
        log_qz0 = -0.5 * jnp.sum(_LOG_2PI + logvar + jnp.square(eps), axis=-1)
        bij = self.posterior_bijector(h)
        if bij is None:
            zt, logdet = z0, jnp.zeros(z0.shape[:-1], jnp.float32)
        else:
            fwd = bij.forward_and_log_det
            for _ in range(z0.ndim - 2):  # extra leading sample axes: same bijector per sample
                fwd = jax.vmap(fwd)
            zt, logdet = fwd(z0)
            logdet = jnp.broadcast_to(logdet, z0.shape[:-1]).astype(jnp.float32)
        return {
            "log_px": self.log_likelihood(x, zt),
            "log_pz": std_normal_log_prob(zt),
            "log_qz0": log_qz0,
            "logdet": logdet,
            "zT": zt,
        }


def _flatten(images: jax.Array) -> jax.Array:
    """uint8/float ``[B, H, W, C]`` in 0..255 -> float32 ``[B, H*W*C]`` in [0, 1]."""
    return images.reshape(images.shape[0], -1).astype(jnp.float32) / 255.0



class VAETask(Task):
    """The VP-flow VAE task (``config.model.name = 'jaxflows.models.vae'``).

    ``config.model`` keys: ``flow`` (one of :data:`FLOWS`), ``num_flows``, ``num_components``,
    ``latent_dim``, ``hidden`` (tuple), ``likelihood`` (``'bernoulli'`` | ``'gaussian'``),
    ``warmup_epochs``, ``num_is_samples``, ``is_chunk`` (samples per scan step of the
    importance-sampled NLL), ``cpu_library_fusions_in_eval`` (optional, default False: on a CPU
    the eval computations compile without YNNPACK library fusions, see
    :mod:`jaxflows.train.xla_options`).
    """

    best_metric = "neg_elbo"
    sample_options = {}  # decoder means of z ~ N(0, I): nothing to choose

    def __init__(self, config: ml_collections.ConfigDict, data_info: DataInfo):
        super().__init__(config, data_info)
        mc = config.model
        if mc.flow not in FLOWS:
            raise ConfigError(f"config.model.flow={mc.flow!r}; valid flows: {', '.join(FLOWS)}")
        if mc.likelihood not in LIKELIHOODS:
            raise ConfigError(
                f"config.model.likelihood={mc.likelihood!r}; valid: {', '.join(LIKELIHOODS)}"
            )
        for key in ("latent_dim", "num_is_samples", "is_chunk"):
            if int(mc[key]) < 1:
                raise ConfigError(f"config.model.{key} must be >= 1, got {mc[key]}")
        if not mc.hidden or any(int(h) < 1 for h in mc.hidden):
            raise ConfigError(f"config.model.hidden must be positive widths, got {mc.hidden}")
        if mc.flow in ("householder", "planar", "iaf", "sylvester") and int(mc.num_flows) < 1:
            raise ConfigError(f"config.model.num_flows must be >= 1 for flow {mc.flow!r}")
        if mc.flow == "cc_linear_iaf" and int(mc.num_components) < 1:
            raise ConfigError("config.model.num_components must be >= 1 for cc_linear_iaf")
        self.image_shape = tuple(data_info.image_shape)
        self.image_dim = int(np.prod(self.image_shape))
        self.latent_dim = int(mc.latent_dim)
        self.model = FlowVAE(
            image_dim=self.image_dim,
            latent_dim=self.latent_dim,
            hidden=tuple(int(h) for h in mc.hidden),
            flow=mc.flow,
            num_flows=int(mc.num_flows),
            num_components=int(mc.num_components),
            likelihood=mc.likelihood,
            dtype=jnp.dtype(config.get("dtype", "float32")),
        )
        self.steps_per_epoch = max(1, data_info.num_train // int(config.train.batch_size))
        self.warmup_epochs = float(mc.warmup_epochs)
        self.num_is_samples = int(mc.num_is_samples)
        self.is_chunk = int(mc.is_chunk)
        # the eval computations compile without CPU library fusions unless the config asks
        opts = {} if mc.get("cpu_library_fusions_in_eval", False) else cpu_library_fusions_off()
        self._terms_jit = jax.jit(self.terms, compiler_options=opts)
        self._is_nll_jit = jax.jit(
            importance_sampled_nll, compiler_options=opts,
            static_argnames=("log_weight_fn", "num_samples", "chunk"))

    def example_spec(self):
        """``{'image': uint8 [H, W, C]}``: labels are not used."""
        return image_element_spec(self.image_shape)

    # --- helpers -------------------------------------------------------------------------
    def _apply(self, params: PyTree, *args, **kwargs):
        return self.model.apply({"params": nn.unbox(params)}, *args, **kwargs)

    def _train_input(self, image: jax.Array, rng: jax.Array) -> jax.Array:
        """Training pixels ``[B, D]``: a fresh binarization (Bernoulli) or gray values in [0, 1]."""
        if self.config.model.likelihood == "bernoulli":
            return dynamic_binarize(rng, image).reshape(image.shape[0], -1).astype(jnp.float32)
        return _flatten(image)

    def beta(self, step: jax.Array) -> jax.Array:
        """KL warm-up weight ``min(1, (step / steps_per_epoch) / warmup_epochs)``."""
        if self.warmup_epochs <= 0:
            return jnp.ones((), jnp.float32)
        epoch = jnp.asarray(step, jnp.float32) / self.steps_per_epoch
        return jnp.minimum(1.0, epoch / self.warmup_epochs)

    def terms(self, params: PyTree, x: jax.Array, rng: jax.Array) -> dict[str, jax.Array]:
        """One-sample ELBO parts for ``x: [B, D]`` in [0, 1]: ``recon, kl, neg_elbo: [B]``.

        ``recon = -log p(x|zT)``, ``kl = log q(z0|x) - logdet - log p(zT)``,
        ``neg_elbo = recon + kl``. Also returns the raw terms of :meth:`FlowVAE.__call__`.
        """
        eps = jax.random.normal(rng, (x.shape[0], self.latent_dim), jnp.float32)
        t = self._apply(params, x, eps)
        recon = -t["log_px"]
        kl = t["log_qz0"] - t["logdet"] - t["log_pz"]
        return dict(t, recon=recon, kl=kl, neg_elbo=recon + kl)

    def log_weights(self, params: PyTree, x: jax.Array, rng: jax.Array, n: int) -> jax.Array:
        """``n`` importance log-weights ``log p(x|zT) + log p(zT) - log q(z0|x) + logdet``.

        ``x: [B, D]`` in [0, 1] -> ``[n, B]``; the encoder runs once for the ``n`` samples.
        """
        eps = jax.random.normal(rng, (n, x.shape[0], self.latent_dim), jnp.float32)
        t = self._apply(params, x, eps)
        return t["log_px"] + t["log_pz"] - t["log_qz0"] + t["logdet"]

    # --- Task contract -------------------------------------------------------------------
    def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> PyTree:
        """Params (with logical-partitioning boxes) for images shaped like ``batch['image']``."""
        x = _flatten(batch["image"])
        eps = jnp.zeros((x.shape[0], self.latent_dim), jnp.float32)
        return self.model.init({"params": rng}, x, eps)["params"]

    def loss(
        self, params: PyTree, batch: dict[str, jax.Array], rng: jax.Array, step: jax.Array
    ) -> tuple[jax.Array, Metrics]:
        """Mean over the batch of ``recon + beta * kl`` on a fresh binarization of the batch.

        Metrics (scalars): ``neg_elbo`` (beta = 1), ``recon``, ``kl``, ``beta``.
        """
        bin_rng, eps_rng = jax.random.split(rng)
        x = self._train_input(batch["image"], bin_rng)
        t = self.terms(params, x, eps_rng)
        beta = self.beta(step)
        mask = batch.get("mask")
        loss = masked_mean(t["recon"] + beta * t["kl"], mask)
        metrics = {
            "neg_elbo": masked_mean(t["neg_elbo"], mask),
            "recon": masked_mean(t["recon"], mask),
            "kl": masked_mean(t["kl"], mask),
            "beta": beta,
        }
        return loss, metrics

    def eval_batch(self, params: PyTree, batch: dict[str, jax.Array], rng: jax.Array) -> Metrics:
        """Per-example one-sample ``{'neg_elbo', 'recon', 'kl'}: [B]`` at beta = 1.

        Eval images are already binarized (uint8 {0, 255}); padded rows are computed but the
        engine drops them via ``batch['mask']``.
        """
        t = self.terms(params, _flatten(batch["image"]), rng)
        return {k: t[k] for k in ("neg_elbo", "recon", "kl")}

    def sample(self, params: PyTree, rng: jax.Array, num: int) -> jax.Array:
        """Decoder means (Bernoulli probabilities) of ``z ~ N(0, I)``: ``[num, H, W, C]``."""
        z = jax.random.normal(rng, (num, self.latent_dim), jnp.float32)
        means = self._apply(params, z, method=FlowVAE.mean_image)
        return means.reshape((num, *self.image_shape))

    def write_samples(self, samples: jax.Array, path: str) -> str:
        """A PNG grid of the ``[num, H, W, C]`` decoder means."""
        from jaxflows.eval.grid import save_grid

        save_grid(np.asarray(samples), path)
        return path

    def reconstruct(self, params: PyTree, images: jax.Array, rng: jax.Array) -> jax.Array:
        """Decoder means for one posterior sample of each image: uint8 ``[B, H, W, C]`` -> float
        ``[B, H, W, C]`` in [0, 1] (for figures; gray inputs are used as they are)."""
        x = _flatten(images)
        zt = self.terms(params, x, rng)["zT"]
        means = self._apply(params, zt, method=FlowVAE.mean_image)
        return means.reshape(images.shape[:1] + self.image_shape)

    def final_eval(
        self, params: PyTree, batches: Callable[[], Iterable[dict[str, Any]]], rng: jax.Array
    ) -> dict[str, float]:
        """Test-set metrics over ``batches()`` (padded rows excluded through ``mask``).

        Returns ``neg_elbo``, ``recon``, ``kl`` (one sample, beta = 1), ``nll_is`` (the
        importance-sampled ``-log p(x)`` with ``config.model.num_is_samples`` samples per image,
        ``-(logsumexp - log S)``), the standard errors of the mean ``neg_elbo_sem`` and
        ``nll_is_sem`` across images, ``num_is_samples`` and ``num_examples``. All in nats.
        """
        params = nn.unbox(params)
        limit = int(self.config.model.get("num_is_examples", -1))
        cols: dict[str, list[np.ndarray]] = {"neg_elbo": [], "recon": [], "kl": [], "nll_is": []}
        for i, batch in enumerate(batches()):
            x = _flatten(batch["image"])
            r_elbo, r_is = jax.random.split(jax.random.fold_in(rng, i))
            t = self._terms_jit(params, x, r_elbo)
            mask = batch.get("mask")
            keep = np.ones(x.shape[0], bool) if mask is None else to_host(mask).astype(bool)
            for k in ("neg_elbo", "recon", "kl"):
                cols[k].append(to_host(t[k])[keep])
            done = sum(len(v) for v in cols["nll_is"])
            if limit < 0 or done < limit:  # IS on the first `limit` test images only
                nll = self._is_nll_jit(
                    self.log_weights, params, x, r_is, self.num_is_samples, self.is_chunk
                )
                kept = to_host(nll)[keep]
                cols["nll_is"].append(kept if limit < 0 else kept[: limit - done])
        vals = {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in cols.items()}
        n, n_is = int(vals["neg_elbo"].shape[0]), int(vals["nll_is"].shape[0])
        if n == 0:
            raise ValueError("final_eval received no (unmasked) examples")

        def sem(v: np.ndarray) -> float:
            return float(np.std(v, ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")

        out = {k: float(np.mean(v)) for k, v in vals.items()}
        out["neg_elbo_sem"] = sem(vals["neg_elbo"])
        out["nll_is_sem"] = sem(vals["nll_is"])
        # -ELBO on the same images as the IS estimate, for a paired comparison
        out["neg_elbo_on_is_examples"] = float(np.mean(vals["neg_elbo"][:n_is]))
        out["num_is_samples"] = float(self.num_is_samples)
        out["num_examples"] = float(n)
        out["num_is_examples"] = float(n_is)
        # per-image values (test order) for paired comparisons; the engine saves them to
        # WORKDIR/eval_per_example.npz instead of eval.json
        out["per_example"] = {"nll_is": vals["nll_is"], "neg_elbo": vals["neg_elbo"]}
        return out


TASK = VAETask
