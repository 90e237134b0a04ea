"""Molecules in and out of a trained SeqFlow: SMILES -> latents and latents -> SMILES.

:class:`SeqFlowCodec` wraps a :class:`~jaxflows.models.seqflow_task.SeqFlowTask` and its
parameters-to-be for code that thinks in molecules (NF-BO's loop, the value-discrepancy check):

* :meth:`SeqFlowCodec.tokenize`: SMILES -> RDKit canonical SMILES -> SELFIES tokens -> ids
  padded with ``<stop>`` to ``L``, with a per-molecule outcome instead of an exception: an
  empty string, a SMILES RDKit cannot parse, one ``selfies`` cannot encode, a token outside the
  model's vocabulary or a sequence longer than ``L - 1`` tokens is flagged (``ok = False``)
  with its reason (:data:`REASONS`);
* :meth:`SeqFlowCodec.encode_smiles`: the clean latents ``z = g(normalize(E[x]))`` of the
  molecules that tokenize (zeros elsewhere), ``[N, L, F]``;
* :meth:`SeqFlowCodec.decode`: latents -> tokens (sequential inverse + argmax cosine + stop
  forcing) -> the SELFIES round trip the official decoder applies (``canonical: True`` in
  ``mlvlab/NFBO``: ``selfies.encoder(selfies.decoder(s))``, re-tokenised): a decode that is
  empty, does not decode, does not re-encode, or re-encodes to more than ``L - 1`` tokens or to
  a token outside the vocabulary is invalid (``valid = False``, SMILES ``''``).

Device work is jitted once per chunk size: inputs are cut into chunks of ``batch_size`` and the
last chunk is padded, so any number of molecules reuses one compiled encoder and decoder.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

from jaxflows.chem import selfies_vocab as sv

#: per-molecule outcomes of :meth:`SeqFlowCodec.tokenize` (``None`` = fine)
TOO_LONG = "too_long"
REASONS = (*sv.REASONS, TOO_LONG)


@dataclasses.dataclass
class Tokenized:
    """``tokens: int32 [N, L]`` (``<stop>`` rows where not ok), ``ok: bool [N]``,
    ``reasons: list[str | None]`` (one of :data:`REASONS`), ``canonical: list[str | None]``."""

    tokens: np.ndarray
    ok: np.ndarray
    reasons: list[str | None]
    canonical: list[str | None]


@dataclasses.dataclass
class Encoded(Tokenized):
    """:class:`Tokenized` plus ``z: float32 [N, L, F]`` (zeros where not ok)."""

    z: np.ndarray = None


@dataclasses.dataclass
class Decoded:
    """``raw: int32 [N, L]`` (decoder tokens), ``tokens: int32 [N, L]`` (after the SELFIES
    round trip; ``raw`` where invalid), ``smiles: list[str]`` (``''`` where invalid),
    ``valid: bool [N]``."""

    raw: np.ndarray
    tokens: np.ndarray
    smiles: list[str]
    valid: np.ndarray


class SeqFlowCodec:
    """SMILES <-> SeqFlow latents for one task (module docstring); ``batch_size``: molecules
    per jitted call."""

    def __init__(self, task, batch_size: int = 1000):
        self.task = task
        self.vocab = task.vocab
        self.length = task.length
        self.features = task.model.features
        self.batch_size = max(1, int(batch_size))
        self._encode = jax.jit(task.encode)
        self._decode = jax.jit(task.decode_tokens)

    # --- text <-> ids --------------------------------------------------------------------
    def tokenize(self, smiles: Sequence[str]) -> Tokenized:
        """Ids of each SMILES with its outcome (module docstring); never raises per molecule."""
        n = len(smiles)
        tokens = np.full((n, self.length), sv.STOP_ID, np.int32)
        ok = np.zeros(n, bool)
        reasons: list[str | None] = [None] * n
        canonical: list[str | None] = [None] * n
        with sv.quiet_rdkit():
            for i, s in enumerate(smiles):
                try:
                    canonical[i], toks = sv.smiles_to_tokens(s)
                except sv.ConversionError as e:
                    reasons[i] = e.reason
                    continue
                if self.vocab.unknown(toks):
                    reasons[i] = sv.UNKNOWN_TOKEN
                elif len(toks) > self.length - 1:
                    reasons[i] = TOO_LONG
                else:
                    tokens[i, :len(toks)] = self.vocab.encode(toks)
                    ok[i] = True
        return Tokenized(tokens, ok, reasons, canonical)

    def round_trip(self, ids: np.ndarray) -> tuple[np.ndarray, list[str], np.ndarray]:
        """The official canonical step on decoder tokens ``[N, L]``: ``(tokens, smiles,
        valid)`` (module docstring)."""
        _, sf = sv._import_chem()
        out = np.array(ids, np.int32, copy=True)
        smiles = [""] * len(out)
        valid = np.zeros(len(out), bool)
        for i, row in enumerate(out):
            text = self.vocab.decode_selfies(row)
            smi = sv.selfies_to_smiles(text)
            if not smi:
                continue
            try:
                again = sf.encoder(smi)
            except Exception:  # selfies.EncoderError
                continue
            toks = list(sf.split_selfies(again)) if again else []
            if not toks or len(toks) > self.length - 1 or self.vocab.unknown(toks):
                continue
            out[i] = sv.STOP_ID
            out[i, :len(toks)] = self.vocab.encode(toks)
            smiles[i] = sv.selfies_to_smiles(again)
            valid[i] = bool(smiles[i])
        return out, smiles, valid

    # --- latents -------------------------------------------------------------------------
    def _chunks(self, fn, params, arr: np.ndarray) -> np.ndarray:
        from jaxflows.train.task import map_in_chunks

        return map_in_chunks(lambda part: fn(params, part), arr, self.batch_size)

    def encode_tokens(self, params, tokens: np.ndarray) -> np.ndarray:
        """Clean latents ``float32 [N, L, F]`` of ids ``int [N, L]``."""
        tokens = np.asarray(tokens, np.int32)
        if tokens.ndim != 2 or tokens.shape[1] != self.length:
            raise ValueError(f"token ids must be [N, {self.length}], got {tokens.shape}")
        if tokens.size and (tokens.min() < 0 or tokens.max() >= len(self.vocab)):
            raise ValueError(f"token ids must be in [0, {len(self.vocab)}), got "
                             f"[{tokens.min()}, {tokens.max()}]")
        if not len(tokens):
            return np.zeros((0, self.length, self.features), np.float32)
        return self._chunks(self._encode, params, tokens)

    def encode_smiles(self, params, smiles: Sequence[str]) -> Encoded:
        """:meth:`tokenize` then :meth:`encode_tokens` of the molecules that tokenize."""
        tok = self.tokenize(smiles)
        z = np.zeros((len(smiles), self.length, self.features), np.float32)
        if tok.ok.any():
            z[tok.ok] = self.encode_tokens(params, tok.tokens[tok.ok])
        return Encoded(tok.tokens, tok.ok, tok.reasons, tok.canonical, z)

    def decode_ids(self, params, z: np.ndarray) -> np.ndarray:
        """Decoder tokens ``int32 [N, L]`` of latents ``[N, L, F]`` or flat ``[N, L * F]``."""
        z = np.asarray(z, np.float32)
        if z.ndim == 2 and z.shape[1] == self.length * self.features:
            z = z.reshape(len(z), self.length, self.features)
        if z.ndim != 3 or z.shape[1:] != (self.length, self.features):
            raise ValueError(f"latents must be [N, {self.length}, {self.features}] or "
                             f"[N, {self.length * self.features}], got {z.shape}")
        if not np.isfinite(z).all():
            raise ValueError("latents contain NaN or inf")
        if not len(z):
            return np.zeros((0, self.length), np.int32)
        return self._chunks(self._decode, params, z)

    def decode(self, params, z: np.ndarray) -> Decoded:
        """Latents -> molecules with a validity mask (module docstring)."""
        raw = self.decode_ids(params, z)
        tokens, smiles, valid = self.round_trip(raw)
        return Decoded(raw, tokens, smiles, valid)
