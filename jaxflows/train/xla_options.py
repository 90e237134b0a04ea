"""Per-computation XLA compile options for the CPU backend.

On this jax's CPU backend, XLA hands matmuls, and the elementwise and reduction ops around
them, to YNNPACK "library fusions" (``xla_cpu_experimental_ynn_fusion_type``). That is the
faster choice for training steps (TarFlow's gradient runs about 1.6x slower without them), but
not for an importance-sampled NLL, whose decoder matmuls feed a softplus over every pixel of
every sample: fused into the matmul, the elementwise tail runs slower and its time varies by up
to 1.5x from call to call on a 2-core CPU; as XLA's own dots and loop fusions it runs at a steady
speed (measured in ``benchmarks/vae.py``, README VAE section). The option applies per
``jax.jit`` (``compiler_options``), so the rest of the process keeps the defaults; on other
backends it is empty.

Convolutions are the other case (:func:`full_backend_optimization`): XLA:CPU emits the gradients
of a strided or transposed convolution as loops that LLVM must optimise. A process that lowers
XLA's backend optimisation level for every computation to compile faster (the test suite sets
``--xla_backend_optimization_level=0``) runs them about 50x slower: the gradient of the digit
classifier, batch 128 on 8 x 8 digits, takes 1.14 s per step at level 0 and 0.022 s at level 3
(one core). The models built on convolutions (the autoencoder, the digit classifier) compile their
steps at the full level per ``jax.jit``; where the process already uses the default level (3)
nothing changes.
"""

from __future__ import annotations

import jax

#: the debug option that lists the op kinds YNNPACK may fuse on a CPU ('' = none)
YNN_FUSION_OPTION = "xla_cpu_experimental_ynn_fusion_type"


def cpu_library_fusions_off() -> dict[str, str]:
    """``jax.jit(..., compiler_options=...)`` that keeps YNNPACK library fusions out of one
    computation on the CPU backend; ``{}`` on any other backend."""
    return {YNN_FUSION_OPTION: ""} if jax.default_backend() == "cpu" else {}


#: XLA's backend optimisation level, and its default (the highest)
BACKEND_LEVEL_OPTION = "xla_backend_optimization_level"
FULL_BACKEND_LEVEL = 3


def full_backend_optimization() -> dict[str, int]:
    """``jax.jit(..., compiler_options=...)`` that compiles one computation at XLA's full backend
    optimisation level whatever ``XLA_FLAGS`` set for the process (see the module docstring);
    ``{}`` on any backend but the CPU."""
    if jax.default_backend() != "cpu":
        return {}
    return {BACKEND_LEVEL_OPTION: FULL_BACKEND_LEVEL}
