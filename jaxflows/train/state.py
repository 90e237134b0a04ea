"""The train state: a plain pytree checkpointed as one item."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax

PyTree = Any


@flax.struct.dataclass
class TrainState:
    """step: int32 []; rng: uint32 [2] raw key data (checkpointable); params/opt_state pytrees.

    ``ema_params`` is an EMA of params (``None`` when ``optim.ema_decay == 0``);
    ``best_params`` holds, by value, the params with the best validation metric so far
    (``None`` when ``train.keep_best_params`` is off).
    """

    step: jax.Array
    rng: jax.Array
    params: PyTree
    opt_state: PyTree
    ema_params: PyTree = None
    best_params: PyTree = None

    def eval_params(self) -> PyTree:
        """The params to evaluate: best if kept, else EMA if kept, else the live params."""
        if self.best_params is not None:
            return self.best_params
        if self.ema_params is not None:
            return self.ema_params
        return self.params
