"""Multi-host start-up: ``jax.distributed.initialize`` from CLI flags or the cluster environment."""

from __future__ import annotations

import logging

import jax


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, auto: bool = False) -> None:
    """Joins the multi-controller runtime when flags are given (or ``auto`` on a TPU/GPU slice).

    On CPU the gloo collectives are selected so localhost multi-process runs work.
    Must run before any other jax call touches a backend.
    """
    if coordinator_address is None and not auto:
        return
    if jax.config.jax_platforms in (None, "", "cpu") or "cpu" in str(jax.config.jax_platforms):
        try:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        except AttributeError:  # older/newer jax without the option
            pass
    kwargs = {}
    if coordinator_address is not None:
        kwargs = dict(coordinator_address=coordinator_address, num_processes=num_processes,
                      process_id=process_id)
    jax.distributed.initialize(**kwargs)
    logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())
