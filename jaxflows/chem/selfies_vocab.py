"""Molecules as SELFIES token sequences: conversion, a vocabulary, bulk tokenisation.

The pipeline for one molecule (NF-BO, Lee et al., ICLR 2025, and its code ``mlvlab/NFBO``
represent molecules the same way)::

    SMILES --RDKit--> canonical SMILES --selfies.encoder--> SELFIES --split_selfies--> tokens

and back: token ids -> tokens up to the first ``<stop>`` -> SELFIES -> ``selfies.decoder`` ->
SMILES. A :class:`Vocabulary` is an ordered token list whose first two entries are the special
tokens ``<start>`` (id 0, never emitted by ``encode``) and ``<stop>`` (id 1, the end/padding
token), followed by the alphabet in sorted order -- the layout of NF-BO's vocabulary.

Nothing is dropped silently: a SMILES that cannot be converted raises :class:`ConversionError`
with a ``reason`` (one of :data:`REASONS`), and :func:`tokenize_many` records the reason of
every failed row, so callers can count failures by reason.

Speed (one core of this repo's CPU, MOSES SMILES): about 3,000 molecules per second end to
end (RDKit canonicalisation ~7,000/s, ``selfies.encoder`` ~5,500/s, ``split_selfies``
~70,000/s); :func:`tokenize_many` spreads chunks over worker processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import multiprocessing
import os
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

log = logging.getLogger(__name__)

START = "<start>"
STOP = "<stop>"
START_ID = 0
STOP_ID = 1
SPECIAL_TOKENS = (START, STOP)

#: failure reasons
EMPTY = "empty"  # an empty SMILES, or one RDKit reads as a molecule without atoms
RDKIT_PARSE = "rdkit_parse"  # RDKit cannot parse the SMILES
SELFIES_ENCODE = "selfies_encode"  # selfies cannot encode the canonical SMILES
UNKNOWN_TOKEN = "unknown_token"  # a token outside the vocabulary (used by dataset builders)
REASONS = (EMPTY, RDKIT_PARSE, SELFIES_ENCODE, UNKNOWN_TOKEN)


class ConversionError(ValueError):
    """A SMILES that cannot become SELFIES tokens; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, smiles: str, detail: str = ""):
        self.reason = reason
        self.smiles = smiles
        msg = f"cannot convert SMILES {smiles!r}: {reason}"
        super().__init__(f"{msg} ({detail})" if detail else msg)


def _import_chem():
    try:
        import selfies
        from rdkit import Chem
    except ImportError as e:  # pragma: no cover - depends on the environment
        from jaxflows.errors import UserError

        raise UserError(f"SELFIES tokens need rdkit and selfies ({e.name} is missing)",
                        hint="pip install 'jaxflows[chem]'") from None
    return Chem, selfies


@contextlib.contextmanager
def quiet_rdkit() -> Iterator[None]:
    """Silences RDKit's log (``RDLogger``) inside the block, restoring the previous levels."""
    from rdkit import RDLogger, rdBase

    enabled = [line.split(":")[0] for line in rdBase.LogStatus().splitlines()
               if line.strip().endswith(":enabled")]
    RDLogger.DisableLog("rdApp.*")
    try:
        yield
    finally:
        for name in enabled:
            RDLogger.EnableLog(name)


def canonical_smiles(smiles: str) -> str | None:
    """RDKit's canonical (isomeric) SMILES, or None for an unparseable or empty molecule."""
    Chem, _ = _import_chem()
    mol = Chem.MolFromSmiles(smiles) if smiles else None
    if mol is None or mol.GetNumAtoms() == 0:
        return None
    return Chem.MolToSmiles(mol)


def smiles_to_tokens(smiles: str) -> tuple[str, list[str]]:
    """``(canonical SMILES, SELFIES tokens)`` of one molecule.

    Raises :class:`ConversionError` with reason ``empty``, ``rdkit_parse`` or
    ``selfies_encode``. RDKit's own messages about a bad SMILES are logged unless the caller
    silences them (:func:`quiet_rdkit`).
    """
    Chem, sf = _import_chem()
    text = smiles.strip() if isinstance(smiles, str) else ""
    if not text:
        raise ConversionError(EMPTY, smiles)
    mol = Chem.MolFromSmiles(text)
    if mol is None:
        raise ConversionError(RDKIT_PARSE, smiles)
    if mol.GetNumAtoms() == 0:
        raise ConversionError(EMPTY, smiles)
    canonical = Chem.MolToSmiles(mol)
    try:
        encoded = sf.encoder(canonical)
    except Exception as e:  # selfies.EncoderError, or anything its own SMILES parser raises
        raise ConversionError(SELFIES_ENCODE, smiles,
                              str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    tokens = list(sf.split_selfies(encoded)) if encoded else []
    if not tokens:
        raise ConversionError(SELFIES_ENCODE, smiles, "empty SELFIES")
    return canonical, tokens


def selfies_to_smiles(selfies_string: str) -> str:
    """``selfies.decoder`` of a SELFIES string; ``''`` when it cannot be decoded."""
    _, sf = _import_chem()
    if not selfies_string:
        return ""
    try:
        return sf.decoder(selfies_string) or ""
    except Exception:  # selfies.DecoderError: a malformed symbol
        return ""


class Vocabulary:
    """An ordered list of SELFIES tokens: ``<start>`` (0), ``<stop>`` (1), then the alphabet.

    ``encode(tokens) -> int32 ids`` (no ``<stop>`` added), ``decode(ids) -> SMILES`` (reads up
    to the first ``<stop>``), ``to_json`` / ``from_json``.
    """

    def __init__(self, tokens: Sequence[str]):
        tokens = tuple(str(t) for t in tokens)
        if tokens[:2] != SPECIAL_TOKENS:
            raise ValueError(f"a vocabulary starts with {SPECIAL_TOKENS}, got {tokens[:2]}")
        if len(set(tokens)) != len(tokens):
            dup = sorted(t for t, n in Counter(tokens).items() if n > 1)
            raise ValueError(f"duplicate vocabulary tokens: {dup}")
        self.tokens = tokens
        self.index = {t: i for i, t in enumerate(tokens)}

    @classmethod
    def from_alphabet(cls, alphabet: Iterable[str]) -> Vocabulary:
        """``<start>``, ``<stop>``, then the distinct tokens of ``alphabet`` sorted."""
        return cls(SPECIAL_TOKENS + tuple(sorted(set(alphabet) - set(SPECIAL_TOKENS))))

    @classmethod
    def from_sequences(cls, sequences: Iterable[Sequence[str]]) -> Vocabulary:
        """The vocabulary of every token in ``sequences`` (lists of tokens)."""
        return cls.from_alphabet(t for seq in sequences for t in seq)

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: object) -> bool:
        return token in self.index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.tokens == other.tokens

    def __hash__(self) -> int:
        return hash(self.tokens)

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} tokens)"

    def unknown(self, tokens: Iterable[str]) -> list[str]:
        """The tokens of ``tokens`` not in the vocabulary (in order, with repeats)."""
        return [t for t in tokens if t not in self.index]

    def encode(self, tokens: Sequence[str]) -> np.ndarray:
        """Token ids ``int32 [len(tokens)]``; a token outside the vocabulary is a ValueError."""
        try:
            return np.fromiter((self.index[t] for t in tokens), np.int32, len(tokens))
        except KeyError as e:
            raise ValueError(f"token {e.args[0]!r} is not in the vocabulary") from None

    def encode_smiles(self, smiles: str) -> np.ndarray:
        """:func:`smiles_to_tokens` then :meth:`encode` (ConversionError / ValueError)."""
        return self.encode(smiles_to_tokens(smiles)[1])

    def tokens_of(self, ids: Sequence[int] | np.ndarray) -> list[str]:
        """The tokens of ``ids`` before the first ``<stop>``, without ``<start>`` tokens."""
        ids = np.asarray(ids).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self)):
            raise ValueError(f"token ids must be in [0, {len(self)}), got "
                             f"[{ids.min()}, {ids.max()}]")
        stops = np.flatnonzero(ids == STOP_ID)
        if stops.size:
            ids = ids[: stops[0]]
        return [self.tokens[i] for i in ids.tolist() if i != START_ID]

    def decode_selfies(self, ids: Sequence[int] | np.ndarray) -> str:
        """The SELFIES string of ``ids`` (up to the first ``<stop>``; ``<start>`` skipped)."""
        return "".join(self.tokens_of(ids))

    def decode(self, ids: Sequence[int] | np.ndarray, *, canonical: bool = False) -> str:
        """SMILES of ``ids``: tokens up to the first ``<stop>`` -> SELFIES -> SMILES.

        ``''`` for an empty sequence (e.g. ``<stop>`` first) or one selfies cannot decode.
        ``canonical=True`` returns RDKit's canonical form (``''`` if RDKit rejects it).
        """
        smiles = selfies_to_smiles(self.decode_selfies(ids))
        if canonical and smiles:
            with quiet_rdkit():
                smiles = canonical_smiles(smiles) or ""
        return smiles

    def to_list(self) -> list[str]:
        return list(self.tokens)

    def to_json(self) -> str:
        """``{"tokens": [...]}`` as JSON text."""
        return json.dumps({"tokens": list(self.tokens)})

    @classmethod
    def from_json(cls, text: str) -> Vocabulary:
        data = json.loads(text)
        return cls(data["tokens"] if isinstance(data, dict) else data)


def write_smiles_lines(smiles: Sequence[str], path: str) -> str:
    """Writes one SMILES per line in order (``''`` as an empty line, so line ``i`` is molecule
    ``i``), atomically (a temporary file renamed over ``path``). Returns ``path``."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for s in smiles:
            if "\n" in s:
                raise ValueError(f"a SMILES with a line break: {s!r}")
            f.write(s + "\n")
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------------------------
# Bulk tokenisation


@dataclasses.dataclass
class TokenizedSmiles:
    """The result of :func:`tokenize_many` for ``N`` input SMILES, in input order.

    Attributes:
      canonical: canonical SMILES per row, None where the row failed.
      reasons: None per converted row, else the failure reason (:data:`REASONS`).
      alphabet: the distinct tokens seen, in order of first appearance; ``ids`` index it.
      ids: int32, all converted rows' token indices into ``alphabet``, concatenated.
      offsets: int64 ``[N + 1]``: row ``i``'s tokens are ``ids[offsets[i]:offsets[i+1]]``
        (empty for a failed row).
      examples: the first few failing inputs per reason (for messages).
    """

    canonical: list[str | None]
    reasons: list[str | None]
    alphabet: list[str]
    ids: np.ndarray
    offsets: np.ndarray
    examples: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.canonical)

    @property
    def ok(self) -> np.ndarray:
        """bool ``[N]``: rows converted."""
        return np.fromiter((r is None for r in self.reasons), bool, len(self.reasons))

    @property
    def lengths(self) -> np.ndarray:
        """int64 ``[N]``: token count per row (0 for a failed row)."""
        return np.diff(self.offsets)

    def token_ids(self, i: int) -> np.ndarray:
        """Row ``i``'s tokens as indices into :attr:`alphabet`."""
        return self.ids[self.offsets[i]:self.offsets[i + 1]]

    def tokens(self, i: int) -> list[str] | None:
        """Row ``i``'s SELFIES tokens, or None if it failed."""
        if self.reasons[i] is not None:
            return None
        return [self.alphabet[j] for j in self.token_ids(i).tolist()]

    def dropped(self, rows: Iterable[int] | None = None) -> dict[str, int]:
        """``{reason: count}`` of the failed rows (among ``rows``, default all)."""
        reasons = self.reasons if rows is None else (self.reasons[i] for i in rows)
        return dict(sorted(Counter(r for r in reasons if r is not None).items()))


_NUM_EXAMPLES = 5


def _tokenize_chunk(smiles: Sequence[str]):
    """Worker: one chunk -> (canonical, reasons, local alphabet, int32 ids, lengths)."""
    canonical: list[str | None] = []
    reasons: list[str | None] = []
    local: dict[str, int] = {}
    ids: list[int] = []
    lengths = np.zeros(len(smiles), np.int64)
    with quiet_rdkit():
        for row, s in enumerate(smiles):
            try:
                can, toks = smiles_to_tokens(s)
            except ConversionError as e:
                canonical.append(None)
                reasons.append(e.reason)
                continue
            canonical.append(can)
            reasons.append(None)
            for t in toks:
                j = local.get(t)
                if j is None:
                    j = local[t] = len(local)
                ids.append(j)
            lengths[row] = len(toks)
    return canonical, reasons, list(local), np.asarray(ids, np.int32), lengths


def default_num_workers() -> int:
    """Worker processes for :func:`tokenize_many` by default: the usable CPU count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def tokenize_many(
    smiles: Sequence[str],
    *,
    num_workers: int = 1,
    chunk_size: int = 5000,
    min_parallel: int = 20000,
) -> TokenizedSmiles:
    """SELFIES tokens of many SMILES, in input order; failures recorded per row.

    ``num_workers > 1`` converts chunks of ``chunk_size`` in that many processes when there
    are at least ``min_parallel`` SMILES; results are merged in input order, so the output does
    not depend on the worker count. The pool forks, or spawns if ``jax`` is imported (its
    threads make forking unsafe): a script that imports jax and calls this in parallel needs
    the usual ``if __name__ == "__main__":`` guard. RDKit's log is silenced
    while converting.
    """
    smiles = list(smiles)
    chunks = [smiles[i:i + chunk_size] for i in range(0, len(smiles), chunk_size)]
    if num_workers > 1 and len(smiles) >= min_parallel and len(chunks) > 1:
        # fork (workers only run RDKit and selfies, and a caller's script is not re-imported),
        # unless JAX's threads are running in this process: then spawn
        fork = "fork" in multiprocessing.get_all_start_methods() and "jax" not in sys.modules
        ctx = multiprocessing.get_context("fork" if fork else "spawn")
        with ctx.Pool(min(num_workers, len(chunks))) as pool:
            parts = list(pool.imap(_tokenize_chunk, chunks))
    else:
        parts = [_tokenize_chunk(c) for c in chunks]

    canonical: list[str | None] = []
    reasons: list[str | None] = []
    alphabet: dict[str, int] = {}
    ids_parts, len_parts = [], []
    for (can, rea, local, ids, lengths) in parts:
        remap = np.asarray([alphabet.setdefault(t, len(alphabet)) for t in local], np.int32)
        canonical.extend(can)
        reasons.extend(rea)
        ids_parts.append(remap[ids] if ids.size else ids)
        len_parts.append(lengths)
    examples: dict[str, list[str]] = {}
    for s, r in zip(smiles, reasons):
        if r is not None and len(examples.setdefault(r, [])) < _NUM_EXAMPLES:
            examples[r].append(s)
    lengths = np.concatenate(len_parts) if len_parts else np.zeros(0, np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = np.concatenate(ids_parts) if ids_parts else np.zeros(0, np.int32)
    result = TokenizedSmiles(canonical, reasons, list(alphabet), flat.astype(np.int32),
                             offsets, examples)
    failed = result.dropped()
    if failed:
        log.info("tokenize_many: %d of %d SMILES not converted: %s (e.g. %s)",
                 sum(failed.values()), len(smiles), failed, examples)
    return result
