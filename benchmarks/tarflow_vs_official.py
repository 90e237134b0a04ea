"""TarFlow side by side: ours (jaxflows, the engine's compiled train step) vs the official PyTorch
TarFlow (apple/ml-tarflow ``transformer_flow.py``), same sizes, batch, optimiser and data.

Configs (``--configs``):
  * ``mnist``: ml-tarflow's MNIST notebook model, 4-128-4-4 on 28x28x1, 10 classes, batch 256,
    Gaussian noise 0.1 (the notebook's sigma; our ``tarflow_mnist.py:conditional_notebook`` row
    without label dropout, as the notebook); guided sampling is class guidance (the
    unconditional pass uses the mean class embedding, attention temperature 1);
  * ``small16``: 2-256-4-2 on 16x16x3, unconditional, batch 32, Gaussian noise 0.05 (the
    ``benchmarks/tarflow.py`` row); guided sampling is attention-temperature guidance (the
    unconditional pass at temperature 0.5: an unconditional model has no other one).
Both sides: AdamW (0.9, 0.95), weight decay 1e-4, constant lr 1e-4, float32 (``--dtype
bfloat16``: our ``config.dtype`` and the official ``train.py``'s bf16 autocast), loss ``0.5
mean(z^2) - mean(logdet)`` on ``x / 127.5 - 1 + noise_std * N(0, 1)``, one fixed batch of random
uint8 images (and labels) from ``--seed``, the same sampling noise and labels.

Per config, the parameter counts of the two models are printed and must be equal; then ``--rounds``
rounds alternate the sides (round 1 official first, round 2 ours first, ...). Each side measures:
training examples/s (median step time of ``--steps`` after ``--warmup`` steps; ours the jitted
engine step, the official one its eager step, or ``torch.compile``d with ``--torch_compile``), and
sampling images/s of ``--sample_batch`` images for each guidance weight in ``--guidances``
(median of ``--sample_reps`` calls after one warm-up call; guidance not annealed, as the official
default). Our guided sampler runs the conditional and unconditional passes as one doubled batch;
the official one runs them as two calls per token. The official side runs in its own Python (with
torch: ``--torch_python``) as ``benchmarks/official_tarflow_worker.py``, one subprocess per round.

It refuses to run when the 1-minute load average is above ``--max_load`` (1.0; ``--force`` for a
smoke test), records the load at the start and the end, the machine, jax and torch versions, the
git commit, our train-step compile time (target for ``mnist``: < 10 s), prints a Markdown table
and writes ``benchmarks/results/tarflow_vs_official.json`` (``--out``).

    python benchmarks/tarflow_vs_official.py --official ML_TARFLOW_DIR --torch_python TORCH_PY
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from machine_load import add_load_args, require_quiet

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER = pathlib.Path(__file__).resolve().with_name("official_tarflow_worker.py")
DEFAULT_OUT = ROOT / "benchmarks/results/tarflow_vs_official.json"
#: sha256 of ``transformer_flow.py`` at apple/ml-tarflow 313120e9dfaec546b3f464d0fa87866eb0c309fa
OFFICIAL_REFERENCE = ("313120e9dfaec546b3f464d0fa87866eb0c309fa",
                      "ec2603e32daf8c63778450a212fc2ac0ce975f4ef1b855f94e80adf76150095f")


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """One model size and its data (both sides)."""

    name: str
    image: tuple[int, int, int]  # (H, W, C)
    patch_size: int
    channels: int
    num_blocks: int
    layers_per_block: int
    num_classes: int
    batch: int
    noise_std: float
    guidance_attn_temp: float  # attention temperature of the unconditional (guidance) pass

    @property
    def size(self) -> str:
        """``P-C-T-K``."""
        return f"{self.patch_size}-{self.channels}-{self.num_blocks}-{self.layers_per_block}"

    @property
    def num_tokens(self) -> int:
        h, w, _ = self.image
        return (h // self.patch_size) * (w // self.patch_size)

    @property
    def token_dim(self) -> int:
        return self.patch_size**2 * self.image[2]


CONFIGS = {
    "mnist": BenchConfig("mnist", (28, 28, 1), 4, 128, 4, 4, 10, 256, 0.1, 1.0),
    "small16": BenchConfig("small16", (16, 16, 3), 2, 256, 4, 2, 0, 32, 0.05, 0.5),
}
#: our config row the ``mnist`` config must match (model sizes, classes, noise)
MNIST_ROW = "experiments/configs/tarflow_mnist.py:conditional_notebook"
LR, BETAS, WEIGHT_DECAY = 1e-4, (0.9, 0.95), 1e-4


# --------------------------------------------------------------------------------------------
# arguments and the load check


def parse_args(argv=None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--official", required=True,
                    help="local copy of apple/ml-tarflow (the folder with transformer_flow.py)")
    ap.add_argument("--torch_python", required=True,
                    help="python executable of an environment with torch (and numpy)")
    ap.add_argument("--configs", default=",".join(CONFIGS),
                    help=f"comma-separated, of {', '.join(CONFIGS)}")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10, help="timed train steps per round")
    ap.add_argument("--warmup", type=int, default=3, help="untimed train steps per round")
    ap.add_argument("--sample_batch", type=int, default=16)
    ap.add_argument("--sample_reps", type=int, default=3, help="timed sampling calls per round")
    ap.add_argument("--guidances", default="0,2", help="comma-separated guidance weights")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--torch_device", default="auto",
                    help="auto (cuda when jax runs on a GPU, else cpu) | cpu | cuda")
    ap.add_argument("--torch_threads", type=int, default=0, help="0 = torch's default")
    ap.add_argument("--torch_compile", default="",
                    help="'' = eager (official default); else a torch.compile mode of the "
                         "official loss, e.g. max-autotune (train.py --compile)")
    ap.add_argument("--host_devices", type=int, default=1,
                    help="our side on a CPU: split the batch over this many XLA host devices "
                         "(data parallel, mesh.data = N); 1 = one device")
    ap.add_argument("--seed", type=int, default=0)
    add_load_args(ap)
    ap.add_argument("--worker_timeout", type=float, default=3600.0, help="seconds per round")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    args = ap.parse_args(argv)
    names = [s for s in args.configs.split(",") if s]
    bad = [s for s in names if s not in CONFIGS]
    if bad or not names:
        ap.error(f"--configs: unknown {bad or names}; choose from {', '.join(CONFIGS)}")
    args.config_names = names
    try:
        args.guidance_list = [float(g) for g in args.guidances.split(",") if g]
    except ValueError:
        ap.error(f"--guidances {args.guidances!r}: comma-separated numbers expected")
    if not args.guidance_list or any(g < 0 for g in args.guidance_list):
        ap.error(f"--guidances {args.guidances!r}: at least one weight, all >= 0")
    for key in ("rounds", "steps", "sample_batch", "sample_reps", "host_devices"):
        if getattr(args, key) < 1:
            ap.error(f"--{key} must be >= 1")
    if args.warmup < 1:
        ap.error("--warmup must be >= 1 (the first step is never timed)")
    if args.torch_device not in ("auto", "cpu") and not args.torch_device.startswith("cuda"):
        ap.error(f"--torch_device {args.torch_device!r}: auto, cpu or cuda[:N]")
    return args


# --------------------------------------------------------------------------------------------
# shared data and the official side


def make_data(cfg: BenchConfig, sample_batch: int, seed: int) -> dict[str, np.ndarray]:
    """The fixed inputs both sides use: ``images`` uint8 ``[B, H, W, C]``, ``labels`` int32
    ``[B]``, sampling ``noise`` float32 ``[S, N, D]`` and ``sample_labels`` int32 ``[S]``."""
    rng = np.random.default_rng(seed)
    classes = max(cfg.num_classes, 1)
    return {
        "images": rng.integers(0, 256, (cfg.batch, *cfg.image), dtype=np.uint8),
        "labels": rng.integers(0, classes, (cfg.batch,)).astype(np.int32),
        "noise": rng.standard_normal((sample_batch, cfg.num_tokens, cfg.token_dim),
                                     dtype=np.float32),
        "sample_labels": rng.integers(0, classes, (sample_batch,)).astype(np.int32),
    }


def worker_spec(cfg: BenchConfig, args, device: str) -> dict:
    """The JSON spec of one official round (``official_tarflow_worker.py --spec``)."""
    return {
        "image": list(cfg.image), "patch_size": cfg.patch_size, "channels": cfg.channels,
        "num_blocks": cfg.num_blocks, "layers_per_block": cfg.layers_per_block,
        "num_classes": cfg.num_classes, "batch": cfg.batch, "noise_std": cfg.noise_std,
        "drop_label": 0.0, "lr": LR, "dtype": args.dtype, "device": device,
        "steps": args.steps, "warmup": args.warmup, "sample_reps": args.sample_reps,
        "guidances": args.guidance_list, "attn_temp": cfg.guidance_attn_temp,
        "compile": args.torch_compile, "torch_threads": args.torch_threads, "seed": args.seed,
    }


def parse_worker_output(stdout: str) -> dict:
    """The JSON of the worker's last ``RESULT {...}`` line."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        raise RuntimeError("the official worker printed no RESULT line")
    return json.loads(lines[-1][len("RESULT "):])


def run_worker(args, spec: dict, data_path: str = "", count_only: bool = False) -> dict:
    """Runs ``official_tarflow_worker.py`` in ``--torch_python``; returns its result."""
    cmd = [args.torch_python, str(WORKER), "--official", args.official, "--data", data_path,
           "--spec", json.dumps(spec)]
    if count_only:
        cmd.append("--count_only")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.worker_timeout)
    if p.returncode != 0:
        tail = "\n".join(p.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"official worker failed (exit {p.returncode}):\n{tail}")
    return parse_worker_output(p.stdout)


def official_provenance(path: str) -> dict:
    """sha256 of the copy's ``transformer_flow.py`` (and its git HEAD if it is a work tree);
    no local path is recorded."""
    src = pathlib.Path(path) / "transformer_flow.py"
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    info = {"repo": "apple/ml-tarflow", "transformer_flow_sha256": digest,
            "matches_reference": digest == OFFICIAL_REFERENCE[1],
            "reference_commit": OFFICIAL_REFERENCE[0]}
    try:
        head = subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        info["git_head"] = head
    except (OSError, subprocess.CalledProcessError):
        pass
    return info


# --------------------------------------------------------------------------------------------
# our side


def set_host_devices(n: int) -> None:
    """Asks jax for ``n`` CPU devices (:func:`jaxflows.train.mesh.use_cpu_devices`, as
    ``jaxflows train --cpu_devices``); must run before jax starts its backends, so it refuses
    once jax has a different device count."""
    from jaxflows.errors import ConfigError
    from jaxflows.train.mesh import use_cpu_devices

    try:
        use_cpu_devices(n)
    except ConfigError as e:
        raise SystemExit(f"--host_devices {n}: jax is already running ({e}); start a fresh "
                         "process") from None


def our_config(cfg: BenchConfig, dtype: str, devices: int = 1):
    """Our engine config: ml-tarflow's recipe (the notebook row's optimiser, AdamW 0.9/0.95,
    weight decay 1e-4) at a constant lr 1e-4, data parallel over ``devices``, model ``cfg``."""
    from jaxflows.models.tarflow_config import default_model_config
    from jaxflows.train.config_loader import load_config_file

    c = load_config_file(str(ROOT / MNIST_ROW.split(":")[0]) + ":" + MNIST_ROW.split(":")[1])
    if cfg.name == "mnist":  # the notebook row, as configured in the repository
        m = c.model
        row = (m.patch_size, m.channels, m.num_blocks, m.layers_per_block, m.num_classes,
               m.noise_type, m.noise_std, c.train.batch_size)
        want = (cfg.patch_size, cfg.channels, cfg.num_blocks, cfg.layers_per_block,
                cfg.num_classes, "gaussian", cfg.noise_std, cfg.batch)
        if row != want:
            raise AssertionError(f"{MNIST_ROW} is {row}, the mnist benchmark config {want}")
    c.model = default_model_config(
        patch_size=cfg.patch_size, channels=cfg.channels, num_blocks=cfg.num_blocks,
        layers_per_block=cfg.layers_per_block, head_dim=64, num_classes=cfg.num_classes,
        drop_label=0.0, noise_type="gaussian", noise_std=cfg.noise_std)
    c.dtype = dtype
    c.mesh.data = devices
    c.optim.name = "adamw"
    c.optim.b1, c.optim.b2 = BETAS
    c.optim.weight_decay = WEIGHT_DECAY
    c.optim.learning_rate = LR
    c.optim.schedule = "constant"
    c.optim.warmup_epochs = 0.0
    c.optim.grad_clip_norm = 0.0
    c.train.batch_size = c.train.eval_batch_size = cfg.batch
    return c


def _median_times(fn, reps: int) -> list[float]:
    import jax

    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return times


class OursBench:
    """Our side of one config: the engine's compiled train step and the jitted KV-cache
    sampler (one per guidance weight), compiled once; :meth:`measure` is one round."""

    def __init__(self, cfg: BenchConfig, args, data: dict[str, np.ndarray]):
        import jax
        import jax.numpy as jnp
        from engine_step import compiled_engine_step

        from jaxflows.models import tarflow_sampling as ts
        from jaxflows.models.tarflow import count_params
        from jaxflows.nn.patches import unpatchify
        from jaxflows.train.task import DataInfo

        self.cfg, self.args = cfg, args
        config = our_config(cfg, args.dtype, args.host_devices)
        local = {"image": data["images"]}
        if cfg.num_classes:
            local["label"] = data["labels"]
        info = DataInfo.for_images(cfg.image, cfg.num_classes, 60_000)
        self.run, self.state, self.batch, self.step, self.compile_s = compiled_engine_step(
            config, info, local)
        model = self.run.task.model
        self.num_params = count_params(model)
        self.z = jnp.asarray(data["noise"])
        self.y = jnp.asarray(data["sample_labels"]) if cfg.num_classes else None
        self.samplers, self.sampler_compile_s = {}, {}
        params = self._params()
        for g in args.guidance_list:
            opts = ts.SampleOptions(guidance=g, attn_temp=cfg.guidance_attn_temp,
                                    annealed=False)

            def fn(p, z, y, opts=opts):
                return unpatchify(ts.sample_tokens(model, p, z, y, opts), cfg.patch_size,
                                  cfg.image)

            t = time.perf_counter()
            self.samplers[g] = jax.jit(fn).lower(params, self.z, self.y).compile()
            self.sampler_compile_s[g] = time.perf_counter() - t

    def _params(self):
        import flax.linen as nn

        return nn.unbox(self.state.params)

    def measure(self) -> dict:
        """One round: ``{'train': {...}, 'sampling': [...]}`` (the worker's layout)."""
        import jax

        cfg, args = self.cfg, self.args
        t = time.perf_counter()
        self.state, metrics = self.step(self.state, self.batch)
        jax.block_until_ready((self.state, metrics))
        first = time.perf_counter() - t
        for _ in range(args.warmup - 1):
            self.state, metrics = self.step(self.state, self.batch)
        jax.block_until_ready((self.state, metrics))
        times = []
        for _ in range(args.steps):
            t = time.perf_counter()
            self.state, metrics = self.step(self.state, self.batch)
            jax.block_until_ready((self.state, metrics))
            times.append(time.perf_counter() - t)
        med = statistics.median(times)
        out = {"train": {"first_step_s": first, "step_times_s": times, "step_s_median": med,
                         "examples_per_s": cfg.batch / med,
                         "final_loss": float(metrics["loss"])}}
        params = self._params()  # after training: the step donates the old state's buffers
        sampling = []
        for g in args.guidance_list:
            c = self.samplers[g]
            t = time.perf_counter()
            x = jax.block_until_ready(c(params, self.z, self.y))
            first = time.perf_counter() - t
            times = _median_times(lambda c=c: c(params, self.z, self.y), args.sample_reps)
            med = statistics.median(times)
            sampling.append({"guidance": g, "first_call_s": first, "times_s": times,
                             "s_median": med, "images_per_s": args.sample_batch / med,
                             "finite": bool(np.isfinite(np.asarray(x)).all()),
                             "compile_s": self.sampler_compile_s[g]})
        out["sampling"] = sampling
        return out


# --------------------------------------------------------------------------------------------
# results


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def round_ratios(ours: dict, official: dict) -> dict:
    """ours / official of the round's rates: ``train`` and ``sampling_g{w}`` per guidance."""
    r = {"train": _ratio(ours["train"]["examples_per_s"], official["train"]["examples_per_s"])}
    off = {s["guidance"]: s for s in official["sampling"]}
    for s in ours["sampling"]:
        if s["guidance"] in off:
            r[f"sampling_g{s['guidance']:g}"] = _ratio(s["images_per_s"],
                                                       off[s["guidance"]]["images_per_s"])
    return r


def summarize(rounds: list[dict]) -> dict:
    """Medians over rounds of each side's rates and of the per-round ratios."""
    def med(vals):
        return statistics.median(vals) if vals else float("nan")

    out = {}
    for side in ("ours", "official"):
        out[side] = {"train_examples_per_s": med([r[side]["train"]["examples_per_s"]
                                                  for r in rounds])}
        for s in rounds[0][side]["sampling"] if rounds else []:
            g = s["guidance"]
            out[side][f"sampling_g{g:g}_images_per_s"] = med(
                [x["images_per_s"] for r in rounds for x in r[side]["sampling"]
                 if x["guidance"] == g])
    out["ratio"] = {k: med([r["ratio"][k] for r in rounds]) for k in
                    (rounds[0]["ratio"] if rounds else {})}
    return out


def markdown(result: dict) -> str:
    """The Markdown table of a results dict (as written to the JSON)."""
    gs = result["settings"]["guidances"]
    head = ("| config P-C-T-K | params (ours / official) | round (first) "
            "| train ex/s ours | official | ours/off. "
            + "".join(f"| sampling g={g:g} img/s ours | official | ours/off. " for g in gs) + "|")
    lines = [
        f"Ours: jaxflows (jax {result['machine'].get('jax', '?')}, engine train step"
        + (f" data parallel over {hd} host devices" if (hd := result["settings"].get(
            "host_devices", 1)) > 1 else "")
        + ", jitted KV-cache sampler); official: apple/ml-tarflow "
        f"(torch {result.get('torch', '?')}, "
        f"{result['official_settings']['step']}, device {result['official_settings']['device']})"
        f". dtype {result['settings']['dtype']}; batch per config; sampling "
        f"{result['settings']['sample_batch']} images; medians of "
        f"{result['settings']['steps']} steps / {result['settings']['sample_reps']} calls.",
        "",
        head,
        "|" + "---|" * (6 + 3 * len(gs)),
    ]

    def fmt(x):
        return "nan" if x is None or x != x else (f"{x:.3g}" if x < 100 else f"{x:,.0f}")

    for name, c in result["configs"].items():
        label = f"{name} {c['size']}"
        params = f"{c['num_params']['ours']:,} / {c['num_params']['official']:,}"
        for r in c["rounds"]:
            cells = [label, params, f"{r['round']} ({r['first']})",
                     fmt(r["ours"]["train"]["examples_per_s"]),
                     fmt(r["official"]["train"]["examples_per_s"]), f"{r['ratio']['train']:.2f}"]
            off = {s["guidance"]: s for s in r["official"]["sampling"]}
            for s in r["ours"]["sampling"]:
                g = s["guidance"]
                cells += [fmt(s["images_per_s"]), fmt(off[g]["images_per_s"]),
                          f"{r['ratio'][f'sampling_g{g:g}']:.2f}"]
            lines.append("| " + " | ".join(cells) + " |")
        s = c["summary"]
        cells = [label, params, "median", fmt(s["ours"]["train_examples_per_s"]),
                 fmt(s["official"]["train_examples_per_s"]), f"{s['ratio']['train']:.2f}"]
        for g in gs:
            k = f"sampling_g{g:g}"
            cells += [fmt(s["ours"][f"{k}_images_per_s"]),
                      fmt(s["official"][f"{k}_images_per_s"]), f"{s['ratio'][k]:.2f}"]
        lines.append("| **" + "** | **".join(cells) + "** |")
    lines.append("")
    for name, c in result["configs"].items():
        target = (" (target < 10 s: " + ("met" if c["train_compile_s"] < 10 else "MISSED") + ")"
                  if name == "mnist" else "")
        lines.append(f"Our train-step compile, {name}: {c['train_compile_s']:.1f} s{target}.")
    m = result["machine"]
    lines.append(
        f"Machine: {m.get('processor', '?')}, {m.get('cpu_count', '?')} CPUs, jax backend "
        f"{m.get('backend', '?')}; 1-minute load average {m.get('load_average_1m_at_start', 0):.2f}"
        f" at the start, {m.get('load_average_1m_at_end', 0):.2f} at the end; commit "
        f"`{result['git_commit']}`.")
    return "\n".join(lines)


def write_results(path: str, result: dict) -> None:
    """Writes ``result`` as JSON (atomically), creating the folder."""
    from jaxflows.provenance import write_json_atomic

    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(str(path), result, indent=2)


def recorded_command(argv: list[str]) -> str:
    """The command line without this machine's paths (the official copy, the torch python and
    an output file outside the repository are replaced by placeholders)."""
    from jaxflows.provenance import recorded_command as record

    return record("benchmarks/tarflow_vs_official.py", argv, str(ROOT),
                  {"--official": "ML_TARFLOW_DIR", "--torch_python": "TORCH_PYTHON"})


# --------------------------------------------------------------------------------------------


def main(argv=None) -> dict | None:
    """Runs the benchmark; prints the table and writes the JSON (returns the results)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    load_start = require_quiet("tarflow_vs_official", args)
    if not (pathlib.Path(args.official) / "transformer_flow.py").is_file():
        sys.exit(f"tarflow_vs_official: no transformer_flow.py in --official {args.official}")
    # on a GPU both sides share the device: ours must not preallocate the usual 75%
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.45")
    if args.host_devices > 1:
        set_host_devices(args.host_devices)
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))  # engine_step
    import jax

    from jaxflows.provenance import git_commit, machine_info

    device = args.torch_device
    if device == "auto":
        device = "cuda" if jax.default_backend() == "gpu" else "cpu"
    official_step = ("torch.compile(" + args.torch_compile + ") loss" if args.torch_compile
                     else "eager step") + (" + GradScaler" if device.startswith("cuda") else "")
    configs, torch_version = {}, None
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.config_names:
            cfg = CONFIGS[name]
            data = make_data(cfg, args.sample_batch, args.seed)
            data_path = os.path.join(tmp, f"{name}.npz")
            np.savez(data_path, **data)
            spec = worker_spec(cfg, args, device)
            counted = run_worker(args, spec, count_only=True)
            torch_version = counted["torch"]
            ours = OursBench(cfg, args, data)
            print(f"{name} {cfg.size}: parameters ours {ours.num_params:,}, official "
                  f"{counted['num_params']:,}; our train-step compile {ours.compile_s:.1f} s",
                  flush=True)
            if ours.num_params != counted["num_params"]:
                raise SystemExit(f"{name}: parameter counts differ (ours {ours.num_params:,}, "
                                 f"official {counted['num_params']:,}): not the same model")
            rounds = []
            for i in range(args.rounds):
                first = "official" if i % 2 == 0 else "ours"
                rec = {"round": i + 1, "first": first, "load_average_1m": os.getloadavg()[0]}
                for side in (("official", "ours") if first == "official"
                             else ("ours", "official")):
                    rec[side] = (run_worker(args, spec, data_path) if side == "official"
                                 else ours.measure())
                rec["ratio"] = round_ratios(rec["ours"], rec["official"])
                rounds.append(rec)
                print(f"{name} round {i + 1}: train ex/s ours "
                      f"{rec['ours']['train']['examples_per_s']:.1f}, official "
                      f"{rec['official']['train']['examples_per_s']:.1f}", flush=True)
            configs[name] = {
                **dataclasses.asdict(cfg), "size": cfg.size,
                "num_params": {"ours": ours.num_params, "official": counted["num_params"]},
                "train_compile_s": ours.compile_s,
                "compile_target_s": 10.0 if name == "mnist" else None,
                "official_torch_threads": counted["torch_threads"],
                "rounds": rounds, "summary": summarize(rounds),
            }
            del ours
    result = {
        "command": recorded_command(argv),
        "git_commit": git_commit(str(ROOT)),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": machine_info(load_start, torch=torch_version),
        "torch": torch_version,
        "official": official_provenance(args.official),
        "settings": {"dtype": args.dtype, "steps": args.steps, "warmup": args.warmup,
                     "sample_batch": args.sample_batch, "sample_reps": args.sample_reps,
                     "guidances": args.guidance_list, "rounds": args.rounds,
                     "host_devices": args.host_devices, "seed": args.seed, "lr": LR,
                     "betas": list(BETAS),
                     "weight_decay": WEIGHT_DECAY, "forced": bool(args.force),
                     "max_load": args.max_load},
        "official_settings": {"device": device, "step": official_step,
                              "torch_compile": args.torch_compile or None,
                              "torch_threads": args.torch_threads or "default"},
        "configs": configs,
    }
    table = markdown(result)
    result["table"] = table
    print(table)
    write_results(args.out, result)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
