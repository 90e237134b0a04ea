"""jaxflows.bo: the Bayesian-optimisation pieces of NF-BO (Lee et al., ICLR 2025).

Independent of the generative model:

* :mod:`~jaxflows.bo.gp` -- deep-kernel GP surrogate (exact GP for small data, SVGP/PPGPR above
  ``exact_max_points``): :func:`fit_surrogate`, :func:`posterior`;
* :mod:`~jaxflows.bo.anchors` -- trust-region anchors drawn from a softmax over scores;
* :mod:`~jaxflows.bo.trust_region` -- length state, ``duplicate_ratio`` / ``turbo`` rules, box;
* :mod:`~jaxflows.bo.candidates` -- Sobol candidates with a sparse perturbation mask;
* :mod:`~jaxflows.bo.tacs` -- token-level adaptive perturbation probabilities;
* :mod:`~jaxflows.bo.thompson` -- Thompson sampling without replacement per trust region.

The loop (uses a SeqFlow and the Guacamol oracle):

* :mod:`~jaxflows.bo.loop` -- :func:`run_bo` / :class:`BORun`: NF-BO and its baselines
  (``random``, ``lsbo``, ``nfbo_no_tacs``, ``nfbo``), resumable, compile-once;
* :mod:`~jaxflows.bo.config` -- :func:`default_config` (every key, released NF-BO defaults),
  :func:`validate`;
* :mod:`~jaxflows.bo.state` -- loop state, per-(seed, iteration, purpose) random streams,
  atomic Orbax + JSON checkpoints;
* :mod:`~jaxflows.bo.flow` -- SeqFlow encode / decode / TACS decoder / fine-tuning;
* :mod:`~jaxflows.bo.initial` -- initial molecules drawn from ``moses_selfies``;
* :mod:`~jaxflows.bo.outputs` -- ``bo_history.jsonl``, ``best.json``, ``best_so_far.png``;
* :mod:`~jaxflows.bo.compiles` -- :class:`CompileCounter` (XLA compilations via
  ``jax.monitoring``).
"""

from jaxflows.bo.anchors import sample_anchors
from jaxflows.bo.candidates import make_candidates, num_candidates, uniform_prob
from jaxflows.bo.compiles import CompileCounter
from jaxflows.bo.config import METHODS, default_config, validate
from jaxflows.bo.gp import fit_surrogate, observation_noise, posterior, steps_for_epochs
from jaxflows.bo.loop import BORun, run_bo
from jaxflows.bo.surrogate import Surrogate, SurrogateConfig
from jaxflows.bo.tacs import perturb_prob, tacs_scores, tacs_weights
from jaxflows.bo.thompson import sample_posterior, select_without_replacement, thompson_batch
from jaxflows.bo.trust_region import RULES, TrustRegionState, box, update_trust_region

__all__ = [
    "METHODS",
    "RULES",
    "BORun",
    "CompileCounter",
    "Surrogate",
    "SurrogateConfig",
    "TrustRegionState",
    "box",
    "default_config",
    "fit_surrogate",
    "make_candidates",
    "num_candidates",
    "observation_noise",
    "perturb_prob",
    "posterior",
    "run_bo",
    "sample_anchors",
    "sample_posterior",
    "select_without_replacement",
    "steps_for_epochs",
    "tacs_scores",
    "tacs_weights",
    "thompson_batch",
    "uniform_prob",
    "update_trust_region",
    "validate",
]
