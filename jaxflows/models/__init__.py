"""Models: one module per method, each a task the engine finds by its module path.

``config.model.name = "jaxflows.models.vae"`` (or ``"vae"``) names :mod:`jaxflows.models.vae`,
whose ``TASK`` is the task class; nothing is imported here, so ``import jaxflows.train`` (which
never imports this package) and ``import jaxflows.models`` stay light. The contract is
:mod:`jaxflows.train.task`.
"""
