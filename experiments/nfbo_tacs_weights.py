"""How far TACS moves the perturbation probabilities away from the uniform 0.1, on real anchors.

TACS (NF-BO, Lee et al. ICLR 2025; ``jaxflows.bo.tacs``) perturbs token ``i``'s latent dims
with probability ``min(0.1 * w_i, 1)``, ``w = L * softmax(omega / tau)``, ``omega_i = n_i *
log 19`` where ``n_i`` counts the decoded tokens that change when latent token ``i`` is
resampled. With the released temperature ``tau = 400`` the spread of ``w`` is bounded by
``exp(L log 19 / 400)`` (1.5 for L = 56); this script measures the spread that actually occurs,
on the initial molecules of the small setting (the anchors of the first iteration) and the
pretrained SeqFlow of the table, with the same decoder the loop uses. It explains how close
``nfbo`` and ``nfbo_no_tacs`` are by construction.

    python experiments/nfbo_tacs_weights.py [--task adip] [--seed 0]

Writes ``experiments/results/nfbo_tacs_weights.json`` (``--out``): the quantiles of ``n_i``,
``w_i`` and the perturbation probability over all anchors and tokens, their mean per token
position, the expected number of perturbed dims per candidate with and without TACS, and the
command, git commit and machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="adip", help="config row of nfbo_guacamol.py (small)")
    p.add_argument("--seed", type=int, default=0, help="seed of the resampling noise")
    p.add_argument("--out", default=os.path.join(ROOT, "experiments", "results",
                                                 "nfbo_tacs_weights.json"))
    return p.parse_args(argv)


def _quantiles(x: np.ndarray) -> dict:
    q = np.quantile(x, [0.0, 0.05, 0.5, 0.95, 1.0])
    return {"min": float(q[0]), "p05": float(q[1]), "median": float(q[2]), "p95": float(q[3]),
            "max": float(q[4]), "mean": float(np.mean(x))}


def main(argv=None) -> dict:
    import jax

    from jaxflows.bo.flow import load_flow
    from jaxflows.bo.initial import initial_smiles, moses_data_dir
    from jaxflows.bo.tacs import LOG_RATIO, tacs_scores, tacs_weights
    from jaxflows.provenance import git_commit, machine_info, write_json_atomic
    from jaxflows.train.config_loader import load_config_file

    args = parse_args(argv)
    t0 = time.time()
    load0 = os.getloadavg()[0]
    config = load_config_file(os.path.join(HERE, "configs", "nfbo_guacamol.py") + ":" + args.task)
    data_dir = moses_data_dir(config)
    smiles, info = initial_smiles(config, data_dir)
    ops, params = load_flow(config, smiles, data_dir)
    tok = ops.codec.tokenize(smiles)
    tokens = np.asarray(tok.tokens)[np.asarray(tok.ok)]
    z = ops.encode(params, tokens).reshape(len(tokens), ops.length, ops.features)
    decoder = ops.tacs_decoder(params)
    omega = np.concatenate([
        np.asarray(tacs_scores(jax.random.fold_in(jax.random.key(args.seed), i), z[i:i + 1],
                               tokens[i:i + 1], decoder))
        for i in range(len(tokens))])  # [A, L]
    n = omega / LOG_RATIO
    w = np.asarray(tacs_weights(omega, float(config.tacs_temperature)))
    base = float(config.perturb_prob)
    prob = np.minimum(base * w, 1.0)
    out = {
        "title": "TACS perturbation probabilities on the first iteration's anchors",
        "task": args.task,
        "anchors": int(len(tokens)),
        "length": int(ops.length),
        "features": int(ops.features),
        "temperature": float(config.tacs_temperature),
        "base_prob": base,
        "bound_w_ratio": float(np.exp(ops.length * LOG_RATIO / float(config.tacs_temperature))),
        "changed_tokens": _quantiles(n),
        "w": _quantiles(w),
        "prob": _quantiles(prob),
        "w_max_over_min_per_anchor": _quantiles(w.max(1) / w.min(1)),
        "mean_w_by_position": [float(v) for v in w.mean(0)],
        "mean_changed_by_position": [float(v) for v in n.mean(0)],
        "expected_perturbed_dims_tacs": float(prob.sum(1).mean() * ops.features),
        "expected_perturbed_dims_uniform": base * ops.length * ops.features,
        "seqflow": config.seqflow_workdir,
        "initial": info,
        "command": " ".join(["python experiments/nfbo_tacs_weights.py",
                             *(sys.argv[1:] if argv is None else argv)]),
        "git_commit": git_commit(ROOT),
        "machine": machine_info(load0),
        "wall_time_s": time.time() - t0,
    }
    write_json_atomic(args.out, out)
    print(f"w over {len(tokens)} anchors x {ops.length} tokens: {out['w']}")
    print(f"prob: {out['prob']}; per-anchor max/min w: {out['w_max_over_min_per_anchor']}")
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
