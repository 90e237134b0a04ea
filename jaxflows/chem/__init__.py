"""jaxflows.chem: molecules as token sequences, and objectives on them.

- :mod:`~jaxflows.chem.selfies_vocab`: SMILES -> canonical SMILES (RDKit) -> SELFIES tokens,
  the :class:`~jaxflows.chem.selfies_vocab.Vocabulary` (``<start>`` = 0, ``<stop>`` = 1, then
  the sorted alphabet, as in NF-BO's code), bulk conversion with per-reason failure counts.

Needs the ``chem`` extra (``rdkit``, ``selfies``); importing this package imports neither.
"""
