"""The NF-BO loop (Lee et al., ICLR 2025, Algorithm 1) and its baselines, resumable.

:func:`run_bo` runs ``config`` (:mod:`jaxflows.bo.config`) in a workdir. Each iteration ``i``
of ``config.method``:

``nfbo`` / ``nfbo_no_tacs`` / ``lsbo``
  1. (``nfbo*`` only) **fine-tune SeqFlow** when at least ``train_oracle`` new oracle calls were
     made since the last fine-tuning: one epoch (``finetune.*``: Adam 1e-3, batch 32, clip 1.0,
     Adam state kept across fine-tunings) of :meth:`SeqFlowTask.loss` on ``D_tr``; then
     re-encode ``D_tr``'s latents with the new flow (``finetune.reencode = False``, an
     ablation: each point keeps the latent it had, as in LS-BO). As in the released code
     (``now_train_oracles``), the counter starts at ``-train_oracle`` (its first
     ``update_models_e2e`` trains ``init_vae_epochs = 0`` epochs) and at most one fine-tuning
     runs per iteration.
  2. **fit the GP** on ``D_tr`` (latents ``[n, L*F]``, scores): every iteration when
     ``gp.refit_every_iteration`` (paper, Alg. 1 line 4), warm-started from the last fit
     (``gp.refit_steps`` Adam steps; the first fit ``gp.init_steps``). The released code
     (``run_NFBO``) fits the surrogate once before the loop and never again
     (``refit_every_iteration = False``: one fit at iteration 0; the exact GP still conditions
     on the current ``D_tr`` each iteration, the released SVGP sees no new data at all).
  3. draw ``num_anchors`` **anchors** among all evaluated molecules (softmax over min-max
     normalised scores, ``anchor_temperature``; :func:`~jaxflows.bo.anchors.sample_anchors`)
     and **re-encode** their token ids with the current flow.
  4. per-dim **perturbation probabilities**: TACS (``nfbo``,
     :func:`~jaxflows.bo.tacs.perturb_prob`, ``tacs_temperature``) or uniform ``perturb_prob``.
  5. **candidates**: Sobol points in each anchor's trust-region box, sparsely applied
     (:func:`~jaxflows.bo.candidates.make_candidates`; ``n_cand = min(cand_max, max(2000,
     200 D))`` split over the anchors).
  6. **Thompson sampling**: ``batch_per_anchor`` distinct picks per trust region
     (:func:`~jaxflows.bo.thompson.thompson_batch`).
``random``
  steps 1-6 are replaced by ``N_TR * q`` latents from the SeqFlow prior N(0, I).

Then, for every method: **decode** the picks (sequential inverse, argmax cosine, SELFIES round
trip), drop invalid decodes, canonicalise, drop molecules already evaluated and repeats within
the batch (first one kept), and call the **oracle** on the rest (budget = unique new molecules;
the last batch stops where the budget does). New molecules join the data with the latent that
proposed them; ``D_tr`` = the ``top_k`` best and ``num_recent`` most recent molecules (their
union; the released code concatenates the two lists, repeats included). The **trust region**
is updated by ``tr.rule``: ``duplicate_ratio`` (released code: ``r = 1 - new / (N_TR q)``;
``r > 0.95`` grows the length 1.2x, ``r < 0.8`` shrinks it) or ``turbo`` (LOL-BO; a batch with
no new molecule counts as a failure). The run stops when the budget is used or after
:func:`~jaxflows.bo.config.max_iterations` iterations. Each iteration's record counts the
proposals, valid decodes, new molecules and ``same_as_anchor``: decodes that reproduce the
molecule of their own anchor (-1 for ``random``), summed over the run in the summary's
``decodes_same_as_anchor``.

``lsbo`` is the same loop with a frozen flow and uniform perturbations (no fine-tuning, no TACS).

Compilation: every array that reaches a jitted function has a fixed shape for the whole run:
the scores padded to the data capacity (``n_init + budget``) with a validity mask, ``D_tr``
padded to ``min(top_k + num_recent, capacity)`` rounded up to 64 (the GP compiles once), one
encode/decode chunk of ``decode_batch`` molecules, one fine-tuning batch shape (compiled before
the loop), fixed candidate sets. The compile count of every iteration is recorded
(:class:`~jaxflows.bo.compiles.CompileCounter`); after the first iteration it is 0.

Resuming: the workdir's checkpoint (:mod:`jaxflows.bo.state`) is written after every
``checkpoint_every`` iterations; a run started on a workdir with one continues from it and
follows the uninterrupted trajectory exactly. Outputs: :mod:`jaxflows.bo.outputs`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxflows.bo import outputs
from jaxflows.bo import state as st
from jaxflows.bo.anchors import sample_anchors
from jaxflows.bo.candidates import make_candidates, num_candidates, uniform_prob
from jaxflows.bo.compiles import CompileCounter
from jaxflows.bo.config import RESUMABLE_KEYS, max_iterations, surrogate_config, validate
from jaxflows.bo.gp import fit_surrogate
from jaxflows.bo.surrogate import init_surrogate
from jaxflows.bo.tacs import perturb_prob
from jaxflows.bo.thompson import thompson_batch
from jaxflows.bo.trust_region import TrustRegionState, update_trust_region
from jaxflows.errors import UserError
from jaxflows.provenance import params_fingerprint

log = logging.getLogger(__name__)

GP_ROW_MULTIPLE = 64


def gp_padded_rows(k_tr: int, capacity: int) -> int:
    """Rows the GP's data are padded to (one compiled fit per run): ``top_k + num_recent``
    (``k_tr``) or the data capacity ``n_init + budget`` if smaller, rounded up to
    :data:`GP_ROW_MULTIPLE`."""
    return GP_ROW_MULTIPLE * math.ceil(min(k_tr, capacity) / GP_ROW_MULTIPLE)


def select_training_set(y: np.ndarray, n: int, top_k: int, num_recent: int) -> np.ndarray:
    """``D_tr``: sorted indices of the ``top_k`` best of ``y[:n]`` (ties: earlier first) and
    the ``num_recent`` last ones."""
    top = np.argsort(-y[:n], kind="stable")[:top_k]
    recent = np.arange(max(0, n - num_recent), n)
    return np.union1d(top, recent).astype(np.int32)


def _canonical(smiles: list[str]) -> list[str | None]:
    from jaxflows.chem.selfies_vocab import canonical_smiles, quiet_rdkit

    with quiet_rdkit():
        return [canonical_smiles(s) if s else None for s in smiles]


class BORun:
    """One BO run in one workdir (see the module docstring); :meth:`run` executes it."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        self.config = config
        self.workdir = workdir
        self.method = config.method
        self.seed = int(config.seed)
        self.t_q = config.num_anchors * config.batch_per_anchor
        self.counter = CompileCounter().__enter__()
        self._stepped = False
        self._times: dict[str, float] = {}
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    def _setup(self) -> None:
        from jaxflows.bo.flow import load_flow
        from jaxflows.bo.initial import initial_smiles, moses_data_dir

        config, workdir = self.config, self.workdir
        c0 = self.counter.count
        t0 = time.perf_counter()
        data_dir = moses_data_dir(config)
        meta = st.read_meta(workdir)
        self.init_info: dict = {}
        init = None
        if meta is None or not config.seqflow_workdir:
            init, self.init_info = initial_smiles(config, data_dir)
        self.ops, params0 = load_flow(config, init, data_dir)
        self.flow_fingerprint = params_fingerprint(params0)
        self.length, self.dim = self.ops.length, self.ops.dim
        self.k_tr = config.top_k + config.num_recent
        restored = st.restore(
            workdir, length=self.length, tr_shape=(self.k_tr, self.dim),
            flow_template=params0, opt_template=self.ops.init_optimizer(params0),
            gp_template_fn=self._gp_template, budget=config.budget) if meta else None
        if restored is None:
            self.state = self._initial_state(init, params0)
        else:
            self.state, saved = restored
            self.init_info = saved.get("initial", {})
            self._grow(self.state.n_init + config.budget)
        cap = self.state.tokens.shape[0]
        self.pad = gp_padded_rows(self.k_tr, cap)
        self.surrogate = surrogate_config(config, self.pad)
        if self.method in ("nfbo", "nfbo_no_tacs"):
            self.ops.warmup(self.state.flow_params, self.state.opt_state)
        self.setup = {"compiles": self.counter.count - c0,
                      "seconds": time.perf_counter() - t0, "resumed": restored is not None}

    # --- construction --------------------------------------------------------------------
    def _gp_template(self, meta: dict):
        from jaxflows.bo.svgp import init_variational

        t = init_surrogate(surrogate_config(self.config, GP_ROW_MULTIPLE), jax.random.key(0),
                           self.dim)
        if meta["kind"] == "svgp":
            t = init_variational(t, np.zeros((meta["num_inducing"], self.dim), np.float32))
        return t

    def _initial_state(self, smiles: list[str], params) -> st.LoopState:
        from jaxflows.chem.oracle import Oracle

        c = self.config
        tok = self.ops.codec.tokenize(smiles)
        keep, seen = [], set()
        for i, (ok, can) in enumerate(zip(tok.ok, tok.canonical, strict=True)):
            if ok and can not in seen:
                seen.add(can)
                keep.append(i)
        dropped = {r: tok.reasons.count(r) for r in set(tok.reasons) if r}
        self.init_info.update(num_kept=len(keep), dropped=dropped,
                              repeats=int(tok.ok.sum()) - len(keep))
        if len(keep) < c.num_anchors:
            raise UserError(f"only {len(keep)} initial molecules can be encoded; the loop needs "
                            f"at least num_anchors={c.num_anchors}")
        canonical = [tok.canonical[i] for i in keep]
        oracle = Oracle(c.task, c.budget)
        y0 = oracle.add_initial(canonical)
        n0 = len(keep)
        cap = n0 + c.budget
        tokens = np.full((cap, self.length), 1, np.int32)
        tokens[:n0] = tok.tokens[keep]
        y = np.zeros(cap, np.float64)
        y[:n0] = y0
        tr_idx = np.full(self.k_tr, -1, np.int32)
        tr_z = np.zeros((self.k_tr, self.dim), np.float32)
        if self.method != "random":
            idx = select_training_set(y, n0, c.top_k, c.num_recent)
            tr_idx[:len(idx)] = idx
            tr_z[:len(idx)] = self.ops.encode(params, tokens[idx])
        trust = TrustRegionState(
            length=c.tr.length, length_init=c.tr.length, length_min=c.tr.length_min,
            length_max=c.tr.length_max, success_tolerance=c.tr.success_tolerance,
            failure_tolerance=c.tr.failure_tolerance, best_value=float(np.max(y0)))
        self.init_info.update(best=float(np.max(y0)), best_smiles=canonical[int(np.argmax(y0))],
                              mean=float(np.mean(y0)))
        return st.LoopState(
            iteration=0, tokens=tokens, y=y, smiles=canonical, origin=[-1] * n0, n_init=n0,
            tr_idx=tr_idx, tr_z=tr_z, flow_params=params,
            opt_state=self.ops.init_optimizer(params), gp_params=None, trust=trust,
            oracle=oracle, pending_train=-int(c.train_oracle))

    def _grow(self, capacity: int) -> None:
        """Makes room for ``capacity`` molecules (a resume with a larger budget)."""
        s = self.state
        if capacity > s.tokens.shape[0]:
            extra = capacity - s.tokens.shape[0]
            s.tokens = np.concatenate([s.tokens, np.ones((extra, self.length), np.int32)])
            s.y = np.concatenate([s.y, np.zeros(extra)])

    # --- one iteration -------------------------------------------------------------------
    @contextlib.contextmanager
    def _timed(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._times[name] = self._times.get(name, 0.0) + time.perf_counter() - t0

    def _finetune(self, it: int) -> float | None:
        s, c = self.state, self.config
        if self.method not in ("nfbo", "nfbo_no_tacs") or s.pending_train < 0:
            return None
        members = s.tr_idx[:s.n_tr]
        s.flow_params, s.opt_state, loss = self.ops.finetune(
            s.flow_params, s.opt_state, s.tokens[members], st.jax_key(self.seed, it, "finetune"),
            st.np_rng(self.seed, it, "finetune"), epochs=c.finetune.epochs)
        s.pending_train -= int(c.train_oracle)
        if c.finetune.reencode:
            s.tr_z[:len(members)] = self.ops.encode(s.flow_params, s.tokens[members])
        s.finetunes += 1
        return loss

    def _fit_gp(self, it: int):
        s, c = self.state, self.config
        members = s.tr_idx[:s.n_tr]
        x, y = s.tr_z[:len(members)], s.y[members].astype(np.float32)
        if s.gp_params is None or c.gp.refit_every_iteration:
            warm = s.gp_params is not None and c.gp.warm_start
            s.gp_params = fit_surrogate(
                self.surrogate, x, y, st.jax_key(self.seed, it, "gp"),
                init_params=s.gp_params if warm else None,
                num_steps=c.gp.refit_steps if warm else c.gp.init_steps)
            if warm and not np.isfinite(float(s.gp_params.loss)):
                # a warm start from a broken fit would stay broken: start again from scratch
                log.warning("iteration %d: the warm-started GP fit is not finite; refitting "
                            "from a fresh initialisation", it)
                s.gp_params = fit_surrogate(self.surrogate, x, y,
                                            st.jax_key(self.seed, it, "gp_restart"),
                                            num_steps=c.gp.init_steps)
        return x, y

    def _propose(self, it: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Latents to decode this iteration ``[N_TR * q, D]`` (anchor-major: ``q`` per anchor)
        and the anchors' data indices ``[N_TR]`` (None for ``random``)."""
        s, c = self.state, self.config
        if self.method == "random":
            with self._timed("prior"):
                return self.ops.prior_sample(st.jax_key(self.seed, it, "prior"), self.t_q), None
        with self._timed("gp_fit"):
            x_tr, y_tr = self._fit_gp(it)
            jax.block_until_ready(s.gp_params)
        with self._timed("anchors"):
            cap = s.tokens.shape[0]
            valid = np.arange(cap) < s.n
            idx = np.asarray(sample_anchors(st.jax_key(self.seed, it, "anchors"),
                                            s.y.astype(np.float32), c.num_anchors,
                                            c.anchor_temperature, valid))
            anchor_tokens = s.tokens[idx]
            z_anchor = self.ops.encode(s.flow_params, anchor_tokens)
        with self._timed("tacs"):
            if self.method == "nfbo":
                prob = np.asarray(perturb_prob(
                    st.jax_key(self.seed, it, "tacs"),
                    z_anchor.reshape(len(idx), self.length, self.ops.features), anchor_tokens,
                    self.ops.tacs_decoder(s.flow_params), temperature=c.tacs_temperature,
                    base_prob=c.perturb_prob))
            else:
                prob = uniform_prob(self.dim, c.perturb_prob)
        with self._timed("candidates"):
            n = num_candidates(self.dim, c.num_anchors, c.cand_max)
            cand = make_candidates(st.np_rng(self.seed, it, "candidates"), z_anchor,
                                   s.trust.length, n, prob, force_one=c.force_one)
        with self._timed("thompson"):
            _, points = thompson_batch(
                st.jax_key(self.seed, it, "thompson"), s.gp_params, x_tr, y_tr, cand,
                c.batch_per_anchor, exact_max_candidates=c.gp.exact_max_candidates,
                num_features=c.gp.num_features, observation_noise=c.gp.observation_noise,
                pad_multiple=self.pad)
            points = np.asarray(points, np.float32)
        return points.reshape(self.t_q, self.dim), idx

    def _evaluate(self, it: int, z: np.ndarray, anchors: np.ndarray | None) -> dict:
        """Decode, filter, call the oracle, add the new molecules; returns counts."""
        s, c = self.state, self.config
        dec = self.ops.decode(s.flow_params, z)
        canonical = _canonical([smi if v else "" for smi, v in zip(dec.smiles, dec.valid,
                                                                   strict=True)])
        seen = set(s.smiles)
        picks: list[tuple[int, str]] = []
        for j, can in enumerate(canonical):
            if can is not None and can not in seen:
                seen.add(can)
                picks.append((j, can))
        # decodes that reproduce their own anchor molecule (picks are anchor-major: q per anchor)
        same = (-1 if anchors is None else sum(
            can is not None and can == s.smiles[int(anchors[j // c.batch_per_anchor])]
            for j, can in enumerate(canonical)))
        before = s.oracle.calls
        # the oracle gets the decoded spelling: its canonical form is then exactly ``can``
        scores = (s.oracle([dec.smiles[j] for j, _ in picks], partial=True) if picks
                  else np.zeros(0))
        charged = {smi for smi, _ in s.oracle.history[before:]}
        n_old = s.n
        new_j, new_y = [], []
        for (j, can), y in zip(picks, scores, strict=True):
            if can not in charged:   # over the budget (NaN), or cached under another spelling
                continue
            i = s.n
            s.tokens[i] = dec.tokens[j]
            s.y[i] = y
            s.smiles.append(can)
            s.origin.append(it)
            new_j.append(j)
            new_y.append(float(y))
        if self.method != "random":
            self._update_training_set(n_old, z[new_j] if new_j else None)
        dup = 1.0 - len(new_j) / self.t_q
        s.trust = update_trust_region(c.tr.rule, s.trust, duplicate_ratio=dup,
                                      y_next=new_y if new_y else [-math.inf])
        s.pending_train += len(new_j)
        return {"proposed": int(len(z)), "valid": int(dec.valid.sum()), "same_as_anchor": same,
                "unique_new": len(picks), "new": len(new_j), "new_scores": new_y,
                "n_old": n_old}

    def _update_training_set(self, n_old: int, z_new: np.ndarray | None) -> None:
        s, c = self.state, self.config
        old = {int(i): r for r, i in enumerate(s.tr_idx[:s.n_tr])}
        idx = select_training_set(s.y, s.n, c.top_k, c.num_recent)
        tr_z = np.zeros_like(s.tr_z)
        for r, i in enumerate(idx):
            i = int(i)
            tr_z[r] = s.tr_z[old[i]] if i in old else z_new[i - n_old]
        s.tr_idx[:] = -1
        s.tr_idx[:len(idx)] = idx
        s.tr_z = tr_z

    def step(self) -> dict:
        """Runs one iteration; returns its record."""
        s = self.state
        it = s.iteration
        t0, c0 = time.perf_counter(), self.counter.count
        self._times = {}
        with self._timed("finetune"):
            loss = self._finetune(it)
        z, anchors = self._propose(it)
        with self._timed("decode_oracle"):
            out = self._evaluate(it, z, anchors)
        lines = outputs.history_lines(s.smiles[out["n_old"]:], out["new_scores"],
                                      [it] * out["new"], first_call=out["n_old"] - s.n_init + 1)
        outputs.append_history(self.workdir, lines)
        s.iteration = it + 1
        record = {
            "iteration": it, "calls": s.oracle.calls, "proposed": out["proposed"],
            "valid": out["valid"], "new": out["new"], "same_as_anchor": out["same_as_anchor"],
            "best": float(s.y[:s.n].max()), "tr_length": s.trust.length,
            "finetune_loss": loss,
            "gp_loss": None if s.gp_params is None else float(s.gp_params.loss),
            "seconds": time.perf_counter() - t0, "compiles": self.counter.count - c0,
            "first_in_process": not self._stepped,
            "phase_seconds": {k: round(v, 4) for k, v in self._times.items()},
        }
        self._stepped = True
        s.records.append(record)
        return record

    # --- the run -------------------------------------------------------------------------
    def done(self) -> bool:
        """True when the budget is used or the iteration guard is reached."""
        return (self.state.oracle.exhausted
                or self.state.iteration >= max_iterations(self.config))

    def run(self, stop_after: int | None = None) -> dict:
        """Iterates until :meth:`done` (or ``stop_after`` iterations in this call); writes
        the outputs and returns the summary."""
        s, c = self.state, self.config
        outputs.rewrite_history(self.workdir, outputs.history_lines(
            s.smiles[s.n_init:], s.y[s.n_init:s.n], s.origin[s.n_init:], first_call=1))
        bar = None
        if c.progress_bar and sys.stderr.isatty():
            from tqdm import tqdm

            bar = tqdm(total=s.oracle.budget, initial=s.oracle.calls, unit="call",
                       dynamic_ncols=True, desc=f"{c.task} {c.method}")
        steps = 0
        try:
            while not self.done() and (stop_after is None or steps < stop_after):
                rec = self.step()
                steps += 1
                if (s.iteration % c.checkpoint_every == 0 or self.done()
                        or (stop_after is not None and steps >= stop_after)):
                    st.save(self.workdir, s, {"initial": self.init_info})
                log.info("iteration %d: %d new, %d calls, best %.4f, length %.4f, %.2f s, "
                         "%d compiles", rec["iteration"], rec["new"], rec["calls"], rec["best"],
                         rec["tr_length"], rec["seconds"], rec["compiles"])
                if bar is not None:
                    bar.update(rec["new"])
                    bar.set_postfix(best=f"{rec['best']:.4f}", it=rec["iteration"])
        finally:
            if bar is not None:
                bar.close()
        return self.write_outputs()

    def write_outputs(self) -> dict:
        """Writes ``best.json``, ``best_so_far.png`` and ``summary.json``; returns the summary."""
        from jaxflows.provenance import git_commit, machine_summary, write_json_atomic

        s, c = self.state, self.config
        calls = s.smiles[s.n_init:]
        scores = s.y[s.n_init:s.n]
        its = s.origin[s.n_init:]
        y0 = s.y[:s.n_init]
        i0 = int(np.argmax(y0))
        outputs.write_best(self.workdir, calls, scores, its, (s.smiles[i0], float(y0[i0])))
        if len(scores):
            outputs.plot_best_so_far(
                os.path.join(self.workdir, "best_so_far.png"),
                {c.method: outputs.best_so_far(scores)},
                title=f"{c.task}: {c.method}, seed {c.seed}", initial_best=float(y0[i0]))
        recs = s.records
        secs = [r["seconds"] for r in recs]
        later = [r for r in recs if not r["first_in_process"]]
        metrics = s.oracle.metrics(top_k=(1, 10, 100))
        phases: dict[str, list[float]] = {}
        for r in later:
            for k, v in r.get("phase_seconds", {}).items():
                phases.setdefault(k, []).append(v)
        summary = {
            "task": c.task, "method": c.method, "seed": self.seed,
            "budget": s.oracle.budget, "calls": s.oracle.calls, "iterations": s.iteration,
            "finished": self.done(),
            "final_best": float(scores.max()) if len(scores) else None,
            "final_best_with_initial": float(s.y[:s.n].max()),
            "auc_top10": metrics["auc_top10"], "metrics": metrics,
            "initial": {**self.init_info, "n": s.n_init, "best": float(y0.max())},
            "setup_seconds": self.setup["seconds"],
            "iteration_seconds_total": float(np.sum(secs)) if secs else 0.0,
            "seconds_per_iteration": float(np.mean(secs)) if secs else None,
            "seconds_per_iteration_after_first": (float(np.mean([r["seconds"] for r in later]))
                                                  if later else None),
            "phase_seconds_after_first": {k: float(np.mean(v)) for k, v in phases.items()},
            "compile_counts": {
                "setup": self.setup["compiles"],
                "first_iteration": sum(r["compiles"] for r in recs if r["first_in_process"]),
                "later_iterations": sum(r["compiles"] for r in later),
                "per_iteration": [r["compiles"] for r in recs],
                "note": "XLA compilations in this process (a resumed run compiles again in "
                        "its first iteration); later_iterations should be 0",
            },
            "finetunes": s.finetunes, "tr_length_final": s.trust.length,
            "tr_restarts": s.trust.restarts,
            "proposed": int(sum(r["proposed"] for r in recs)),
            "valid_decodes": int(sum(r["valid"] for r in recs)),
            # decodes equal to their anchor molecule, over the records that count them
            # (None for random, which has no anchors, and for records written before the count)
            "decodes_same_as_anchor": (sum(same) if (same := [
                r["same_as_anchor"] for r in recs if r.get("same_as_anchor", -1) >= 0]) else None),
            "model": {"seqflow_workdir": (os.path.basename(os.path.normpath(c.seqflow_workdir))
                                          if c.seqflow_workdir else "tiny random SeqFlow"),
                      "fingerprint": self.flow_fingerprint,
                      "L": self.length, "F": self.ops.features, "D": self.dim,
                      "params": int(sum(np.size(x) for x in
                                        jax.tree.leaves(s.flow_params)))},
            "git_commit": git_commit(), "machine": machine_summary(),
            "config": json.loads(c.to_json()),
        }
        write_json_atomic(os.path.join(self.workdir, "summary.json"), summary)
        return summary

    def close(self) -> None:
        """Stops counting compilations."""
        self.counter.__exit__(None, None, None)


def _check_resumable(workdir: str, config: ml_collections.ConfigDict) -> None:
    """A workdir with a checkpoint resumes only under the same config (but RESUMABLE_KEYS)."""
    from jaxflows.train.workdir import config_differences

    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path) or st.checkpoint_dir(workdir) is None:
        return
    with open(path) as f:
        saved = json.load(f)
    diffs = [d for d in config_differences(saved, json.loads(config.to_json()))
             if d[0] not in RESUMABLE_KEYS]
    if diffs:
        shown = "; ".join(f"{k}: {a} -> {b}" for k, a, b in diffs[:4])
        raise UserError(f"workdir {workdir} holds a BO run with a different config ({shown})",
                        hint=f"only {', '.join(RESUMABLE_KEYS)} may change on resume; use a "
                             "new --workdir")


def run_bo(config: ml_collections.ConfigDict, workdir: str, *,
           stop_after: int | None = None) -> dict[str, Any]:
    """Runs (or resumes) the BO loop of ``config`` in ``workdir``; returns the summary.

    ``stop_after``: stop after this many iterations in this call (checkpointed; a later call
    continues).
    """
    from jaxflows.provenance import write_json_atomic
    from jaxflows.train.workdir import WorkdirLock, check_workdir_path

    validate(config)
    check_workdir_path(workdir)
    os.makedirs(workdir, exist_ok=True)
    with WorkdirLock(workdir):
        _check_resumable(workdir, config)
        write_json_atomic(os.path.join(workdir, "config.json"), json.loads(config.to_json()),
                          indent=2)
        run = BORun(config, workdir)
        try:
            return run.run(stop_after)
        finally:
            run.close()


__all__ = ["BORun", "run_bo", "select_training_set"]
