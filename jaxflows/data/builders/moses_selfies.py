"""MOSES molecules as SELFIES token ids (the token sequences NF-BO's SeqFlow models).

Source and splits: exactly those of :mod:`jaxflows.data.builders.moses` (same raw files, same
``train`` / ``validation`` / ``test`` rows, file order). Each SMILES is canonicalised with
RDKit, encoded with ``selfies`` and split into tokens (:mod:`jaxflows.chem.selfies_vocab`).

Features:

- ``tokens``: int32 ``[n]``, the molecule's SELFIES token ids, *without* ``<stop>`` or padding
  (pad them with the ``pad_tokens`` data transform);
- ``smiles``: Text, the canonical SMILES.

The vocabulary is built from the ``train`` split only: ``<start>`` (0), ``<stop>`` (1), then the
training tokens sorted. A molecule is left out -- and counted -- when RDKit cannot parse it
(``rdkit_parse``), it is empty (``empty``), selfies cannot encode it (``selfies_encode``), or (in
``validation`` / ``test``) it has a token the vocabulary lacks (``unknown_token``).

Saved with the dataset (``builder.info.metadata``, read back by
:func:`jaxflows.data.registry.dataset_info` as ``metadata``):

- ``vocab``: the token list (index = token id);
- ``max_length``: the longest token count over the kept molecules of all splits (NF-BO's ``L``
  is this plus one, for the ``<stop>`` every sequence gets);
- ``dropped``: ``{split: {reason: count}}`` of the molecules left out;
- ``num_raw``: ``{split: rows before dropping}``.

Building converts about 1.76M molecules (a few thousand per second per core; chunks run in
``num_workers`` processes, default: the usable CPU count; the result does not depend on it).
"""

from __future__ import annotations

import logging

import numpy as np
import tensorflow_datasets as tfds

from jaxflows.data.builders.moses import JaxflowsMoses, validation_indices
from jaxflows.errors import UserError

log = logging.getLogger(__name__)

SPLIT_ORDER = ("train", "validation", "test")


def split_rows(n_train_file: int, n_test_file: int) -> dict[str, tuple[str, np.ndarray]]:
    """``{split: (raw file, row indices)}``: the rows of :mod:`jaxflows.data.builders.moses`."""
    val_idx = validation_indices(n_train_file)
    is_val = np.zeros(n_train_file, bool)
    is_val[val_idx] = True
    return {
        "train": ("train", np.flatnonzero(~is_val)),
        "validation": ("train", val_idx),
        "test": ("test", np.arange(n_test_file)),
    }


class JaxflowsMosesSelfies(JaxflowsMoses, skip_registration=True):
    """MOSES as SELFIES token ids: features ``tokens`` (int32 [n]) and ``smiles`` (Text).

    ``source_path`` (or ``$JAXFLOWS_MOSES_DIR``) may name a folder with ``train.csv.gz`` and
    ``test.csv.gz`` to use instead of the wheel's copies; ``num_workers`` sets the conversion
    processes (default: the usable CPU count).
    """

    name = "jaxflows_moses_selfies"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "MOSES (molsets 0.3.1) as SELFIES token ids; vocab from train."}

    def __init__(self, *, num_workers: int | None = None, **kwargs):
        self._num_workers = num_workers
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "tokens": tfds.features.Tensor(shape=(None,), dtype=np.int32),
                "smiles": tfds.features.Text(),
            }),
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        from jaxflows.chem.selfies_vocab import (
            UNKNOWN_TOKEN,
            Vocabulary,
            default_num_workers,
            tokenize_many,
        )

        workers = self._num_workers or default_num_workers()
        raw = {"train": self._read("train"), "test": self._read("test")}
        converted = {}
        for name, smiles in raw.items():
            log.info("moses_selfies: converting %d SMILES of %s.csv.gz (%d workers)",
                     len(smiles), name, workers)
            converted[name] = tokenize_many(smiles, num_workers=workers)
        rows = split_rows(len(raw["train"]), len(raw["test"]))

        # vocabulary: the tokens of the converted training rows (alphabet indices, counted)
        tr = converted["train"]
        train_rows = rows["train"][1]
        ok_train = train_rows[tr.ok[train_rows]]
        seen = np.zeros(len(tr.alphabet), bool)
        for i in ok_train.tolist():
            seen[tr.token_ids(i)] = True
        vocab = Vocabulary.from_alphabet(t for t, s in zip(tr.alphabet, seen) if s)

        plans, dropped, num_raw, max_length = {}, {}, {}, 0
        for split in SPLIT_ORDER:
            file, idx = rows[split]
            conv = converted[file]
            # alphabet index -> vocabulary id (-1: not in the vocabulary)
            remap = np.asarray([vocab.index.get(t, -1) for t in conv.alphabet], np.int32)
            ids = remap[conv.ids] if conv.ids.size else conv.ids
            counts = conv.dropped(idx.tolist())
            keep = []
            unknown = 0
            for i in idx[conv.ok[idx]].tolist():
                seq = ids[conv.offsets[i]:conv.offsets[i + 1]]
                if seq.size and seq.min() < 0:
                    unknown += 1
                    continue
                keep.append(i)
            if unknown:
                counts[UNKNOWN_TOKEN] = unknown
            keep = np.asarray(keep, np.int64)
            if keep.size:
                max_length = max(max_length, int(conv.lengths[keep].max()))
            plans[split] = (conv, ids, keep)
            dropped[split] = dict(sorted(counts.items()))
            num_raw[split] = len(idx)
            log.info("moses_selfies: %s keeps %d of %d (dropped %s)", split, len(keep), len(idx),
                     dropped[split] or "none")
            if not keep.size:
                raise UserError(
                    f"moses_selfies: no molecule of the {split} split is left ({len(idx)} read, "
                    f"dropped: {dropped[split] or 'none'})",
                    hint="every split needs valid molecules whose SELFIES tokens occur in the "
                         "training split (the vocabulary)")

        self.info.metadata.update({
            "vocab": vocab.to_list(),
            "max_length": max_length,
            "dropped": dropped,
            "num_raw": num_raw,
        })
        return {split: self._generate_examples(*plans[split]) for split in SPLIT_ORDER}

    def _generate_examples(self, conv, ids, keep):
        offsets = conv.offsets
        for key, i in enumerate(keep.tolist()):
            yield key, {
                "tokens": np.asarray(ids[offsets[i]:offsets[i + 1]], np.int32),
                "smiles": conv.canonical[i],
            }
