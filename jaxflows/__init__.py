"""jaxflows: normalizing flows joined with latent-variable models, in JAX/Flax.

Subpackages: ``bijectors`` (distrax-compatible flow maps), ``nn`` (Flax building blocks),
``models`` (one file per method), ``train`` (the sharded engine), ``data`` (offline datasets),
``eval`` (likelihood and sample metrics).
"""

__version__ = "0.1.0"
