"""jaxflows.chem: molecules as token sequences, and objectives on them.

- :mod:`~jaxflows.chem.selfies_vocab`: SMILES -> canonical SMILES (RDKit) -> SELFIES tokens,
  the :class:`~jaxflows.chem.selfies_vocab.Vocabulary` (``<start>`` = 0, ``<stop>`` = 1, then
  the sorted alphabet, as in NF-BO's code), bulk conversion with per-reason failure counts.
- :mod:`~jaxflows.chem.guacamol`: the Guacamol objectives (``TASKS``, ``score(task_id, smiles)``)
  written on RDKit from guacamol 0.5.5's benchmark definitions (the pieces in
  :mod:`~jaxflows.chem.scoring`); invalid or empty SMILES score -1.0.
- :mod:`~jaxflows.chem.oracle`: ``Oracle``: score cache by canonical SMILES, a budget in unique
  new molecules, the call history and the PMO metrics (Top-k, AUC Top-k); state saves/restores.

Needs the ``chem`` extra (``rdkit``, ``selfies``); importing this package imports neither.
"""
