"""Guidance sweep of a class-conditional TarFlow on MNIST: FD-MNIST and class accuracy.

    python experiments/tarflow_guidance.py --workdir workdirs/tarflow_mnist/conditional

For each prior temperature (``--temperatures``, default 1) and guidance weight (default 0, 1, 2,
3) it draws ``--num`` samples (balanced classes, ``i % 10``) and scores them as drawn and after
the one-step score denoiser (the same draw, so the two differ only by denoising); it measures
with the project's MNIST classifier (:mod:`jaxflows.eval.classifier`, trained here on the
training split when ``--classifier`` does not exist yet; the weights stay out of git):

* ``class_accuracy``: fraction of samples classified as the class they were drawn for;
* ``fd_mnist``: Fréchet distance between the classifier's penultimate features of the samples
  and of the 10,000 test images;
* ``draw_images_per_s``: throughput of the sequential KV-cache inverse plus the denoiser, timed
  after compilation.

Writes ``experiments/results/NAME_guidance.json`` (one row per setting, with provenance) and a
PNG grid per setting next to the workdir; ``run_table.py --merge`` puts the rows into the main
results file as ``conditional.guidance``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import flax.serialization
import jax
import ml_collections
import numpy as np

from jaxflows.provenance import git_commit, machine_summary, write_json_atomic

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def _arrays(dataset: str, split: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    from jaxflows.data.registry import load_source
    from jaxflows.train.input import materialize

    src = materialize(load_source(dataset, split, data_dir))
    return np.asarray(src.arrays["image"]), np.asarray(src.arrays["label"])


def load_or_train_classifier(path: str, dataset: str, data_dir: str | None, steps: int,
                             seed: int) -> tuple:
    """Classifier params from ``path`` (msgpack), else trained on the dataset's training split
    and saved there (atomically). Returns ``(params, info, test_images)``; ``info`` has the test
    accuracy and the recipe."""
    from jaxflows.eval import classifier

    test_x, test_y = _arrays(dataset, "test", data_dir)
    info = {"path": os.path.relpath(path, REPO), "dataset": dataset, "steps": steps,
            "seed": seed}
    if os.path.exists(path):
        template = classifier.train_classifier(test_x[:8], test_y[:8], 0, jax.random.key(0))
        with open(path, "rb") as f:
            params = flax.serialization.from_bytes(template, f.read())
        info["trained_now"] = False
    else:
        train_x, train_y = _arrays(dataset, "train", data_dir)
        t0 = time.time()
        params = classifier.train_classifier(train_x, train_y, steps, jax.random.key(seed))
        info["train_time_s"] = time.time() - t0
        info["trained_now"] = True
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(flax.serialization.to_bytes(params))
        os.replace(tmp, path)
    info["test_accuracy"] = classifier.accuracy(params, test_x, test_y)
    return params, info, test_x


def run_sweep(workdir: str, *, weights: list[float], num: int, batch_size: int, seed: int,
              temperatures: tuple[float, ...] = (1.0,), annealed: tuple[bool, ...] = (True,),
              classifier_path: str | None, classifier_steps: int, data_dir: str | None = None,
              title: str = "guidance sweep") -> dict:
    """Samples ``num`` images per (temperature, weight) from ``workdir``'s conditional TarFlow,
    scores them raw and denoised (the same draw), and returns the results dict (provenance + one
    row per (temperature, weight, denoise)); writes PNG grids into the workdir."""
    from jaxflows.errors import UserError
    from jaxflows.eval import classifier
    from jaxflows.eval.frechet import feature_stats, frechet_distance_from_stats
    from jaxflows.eval.grid import save_grid
    from jaxflows.train.loop import build, restore_for_eval

    t_start = time.time()
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise UserError(f"{workdir} has no config.json", hint="train the conditional row first")
    with open(path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    if data_dir:
        config.data.data_dir = data_dir
    run = build(config)
    task = run.task
    if not getattr(task, "num_classes", 0):
        raise UserError(f"{workdir} holds an unconditional model; the sweep needs classes")
    step, state = restore_for_eval(run, workdir)
    classifier_path = classifier_path or os.path.join(
        REPO, "workdirs", f"{config.data.name}_classifier", "params.msgpack")
    cls_params, cls_info, test_x = load_or_train_classifier(
        classifier_path, config.data.name, config.data.data_dir or None, classifier_steps, seed)
    print(f"classifier test accuracy {cls_info['test_accuracy']:.4f}", flush=True)
    ref_stats = feature_stats(np.asarray(classifier.features(cls_params, test_x)))
    params = state.eval_params()
    labels = np.arange(num) % task.num_classes
    rows = []
    if len(annealed) != len(temperatures):
        raise UserError(f"{len(temperatures)} temperatures but {len(annealed)} annealed flags: "
                        "give one flag per temperature")
    for temperature, anneal in zip(temperatures, annealed):
        for w in weights:
            kw = dict(guidance=w, denoise=True, return_both=True, batch_size=batch_size,
                      temperature=temperature, annealed=anneal)
            with jax.set_mesh(run.mesh):
                # compile on one batch, then time the full draw (sampling + denoising)
                task.sample(params, jax.random.key(seed), min(batch_size, num),
                            class_label=labels[:min(batch_size, num)], **kw)
                t0 = time.time()
                draws = jax.device_get(
                    task.sample(params, jax.random.key(seed), num, class_label=labels, **kw))
                dt = time.time() - t0
            for denoise, images in zip((False, True), draws):
                images = np.asarray(images)
                acc, per_class, feats = classifier.score(cls_params, images, labels,
                                                         task.num_classes)
                fd = frechet_distance_from_stats(*feature_stats(np.asarray(feats)), *ref_stats)
                row = {"weight": w, "denoise": denoise, "temperature": temperature,
                       "annealed": anneal,
                       "fd_mnist": fd, "class_accuracy": acc,
                       "class_accuracy_per_class": per_class,
                       "num_samples": num,
                       "draw_images_per_s": num / dt}
                rows.append(row)
                print(json.dumps(row), flush=True)
                first = images[:100][np.argsort(labels[:100], kind="stable")]
                name = (f"samples_w{w:g}_t{temperature:g}{'' if anneal else '_const'}"
                        f"{'_denoised' if denoise else ''}.png")
                save_grid(first, os.path.join(workdir, name), ncol=10)
    return {
        "title": title,
        "command": "python " + " ".join(sys.argv),
        "git_commit": git_commit(REPO),
        "machine": machine_summary(),
        "checkpoint_step": int(step),
        "wall_time_s": time.time() - t_start,
        "classifier": cls_info,
        "notes": "class_accuracy and fd_mnist use the project's classifier (jaxflows.eval."
                 "classifier); FD against its features of the whole test split; denoised rows "
                 "apply the one-step score denoiser to the same draws (same noise and labels); "
                 "temperature T draws the prior noise from N(0, T^2 I) (T=1: the model); "
                 "annealed: the guidance weight ramps linearly over the token index "
                 "(ml-tarflow's FID protocol) or is the same at every token; "
                 "draw_images_per_s times sampling plus denoising of the whole draw; "
                 "class_accuracy_per_class: the accuracy within each requested class",
        "rows": rows,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True, help="a trained class-conditional TarFlow")
    p.add_argument("--name", default="tarflow_mnist")
    p.add_argument("--row", default="conditional")
    p.add_argument("--weights", default="0,1,2,3")
    p.add_argument("--temperatures", default="1.0",
                   help="prior temperatures, comma-separated (1 = the model)")
    p.add_argument("--annealed", default="1",
                   help="per temperature: 1 = guidance ramps linearly over the tokens (official), "
                        "0 = the same weight at every token")
    p.add_argument("--num", type=int, default=10000)
    p.add_argument("--batch_size", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classifier", default=None,
                   help="classifier weights (msgpack); trained and saved there when missing "
                        "(default workdirs/DATASET_classifier/params.msgpack)")
    p.add_argument("--classifier_steps", type=int, default=3000)
    p.add_argument("--data_dir", default=None)
    p.add_argument("--out", default=None, help="default experiments/results/NAME_guidance.json")
    args = p.parse_args()
    from jaxflows.errors import UserError

    try:
        results = run_sweep(args.workdir, weights=[float(w) for w in args.weights.split(",")],
                            temperatures=tuple(float(t) for t in args.temperatures.split(",")),
                            annealed=tuple(a.strip() == "1" for a in args.annealed.split(",")),
                            num=args.num, batch_size=args.batch_size, seed=args.seed,
                            classifier_path=args.classifier,
                            classifier_steps=args.classifier_steps, data_dir=args.data_dir,
                            title=f"{args.name}: guidance sweep of row {args.row}")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or os.path.join(HERE, "results", f"{args.name}_guidance.json")
    write_json_atomic(out, results)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
