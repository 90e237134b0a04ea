"""Counting XLA compilations: a listener on JAX's ``backend_compile`` monitoring event.

Every XLA compilation in the process (a ``jax.jit`` function meeting new shapes, and also an
eager ``jnp`` op on a new shape) records the duration event
``/jax/core/compile/backend_compile_duration`` through :mod:`jax.monitoring`.
:class:`CompileCounter` counts them (and their seconds, per function name) while it is active;
the BO loop reads it around each iteration to show that every piece compiles once.
"""

from __future__ import annotations

import collections

import jax

EVENT = "/jax/core/compile/backend_compile_duration"


class CompileCounter:
    """A context manager counting XLA compilations (``count``, ``seconds``, ``by_name``)."""

    def __init__(self):
        self.count = 0
        self.seconds = 0.0
        self.by_name: collections.Counter[str] = collections.Counter()
        self._active = False

    def _listener(self, event: str, duration: float, **kwargs) -> None:
        if event == EVENT:
            self.count += 1
            self.seconds += float(duration)
            self.by_name[str(kwargs.get("fun_name", "?"))] += 1

    def __enter__(self) -> CompileCounter:
        jax.monitoring.register_event_duration_secs_listener(self._listener)
        self._active = True
        return self

    def __exit__(self, *exc) -> None:
        if self._active:
            jax.monitoring.unregister_event_duration_listener(self._listener)
            self._active = False
