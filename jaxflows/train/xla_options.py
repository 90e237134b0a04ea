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
"""

from __future__ import annotations

import jax

#: the debug option that lists the op kinds YNNPACK may fuse on a CPU ('' = none)
YNN_FUSION_OPTION = "xla_cpu_experimental_ynn_fusion_type"


def cpu_library_fusions_off() -> dict[str, str]:
    """``jax.jit(..., compiler_options=...)`` that keeps YNNPACK library fusions out of one
    computation on the CPU backend; ``{}`` on any other backend."""
    return {YNN_FUSION_OPTION: ""} if jax.default_backend() == "cpu" else {}
