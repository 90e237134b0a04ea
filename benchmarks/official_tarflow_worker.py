"""The official (PyTorch) side of ``benchmarks/tarflow_vs_official.py``: one measurement round.

Run by ``tarflow_vs_official.py`` as a subprocess of a *separate* Python environment that has
torch (torch is not a dependency of jaxflows; nothing in jaxflows or its tests imports this file).
It builds ``transformer_flow.Model`` from a local copy of apple/ml-tarflow (``--official``), trains
it on the fixed batch of ``--data`` (an ``.npz`` of uint8 images ``[B, H, W, C]``, int labels and
the sampling noise, written by the parent so that both sides see the same numbers) with the
official step, samples with the official ``Model.reverse``, and prints one JSON line on stdout.

The training step is the official one: ``zero_grad``; Gaussian noise ``noise_std * randn_like``
added to the pixels in [-1, 1] (``ToTensor`` + ``Normalize(0.5, 0.5)`` = ``x / 127.5 - 1``);
``Model.get_loss`` (``0.5 mean(z^2) - mean(logdets)``); backward; ``AdamW((0.9, 0.95),
weight_decay=1e-4)`` step; ``loss.item()`` (the notebook's and ``train.py``'s per-step sync).
Like ``train.py``: bf16 autocast when ``dtype`` is ``bfloat16``, a ``GradScaler`` on CUDA, label
dropout (label -1) when ``drop_label > 0`` and optionally ``torch.compile`` of the loss
(``compile`` = ``max-autotune`` as ``train.py --compile``, or another inductor mode). The
learning-rate schedule (a host-side setter) is left out: a constant lr on both sides.

Sampling: ``Model.reverse(noise, y, guidance, attn_temp=...)`` under ``torch.no_grad`` (and the
autocast above); with ``guidance > 0`` the official sampler runs the conditional and the
unconditional pass as two separate calls per token, each on the batch ``B``.

    python benchmarks/official_tarflow_worker.py --official ML_TARFLOW_DIR --data DATA.npz \
        --spec '{"image": [28, 28, 1], "patch_size": 4, ...}' [--count_only]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build_model(spec: dict, official: str):
    """The official ``transformer_flow.Model`` for ``spec`` (imported from ``official``)."""
    sys.path.insert(0, official)
    import transformer_flow

    h, w, c = spec["image"]
    if h != w:
        raise ValueError(f"the official model takes square images, got {h}x{w}")
    return transformer_flow.Model(
        in_channels=c, img_size=h, patch_size=spec["patch_size"], channels=spec["channels"],
        num_blocks=spec["num_blocks"], layers_per_block=spec["layers_per_block"], nvp=True,
        num_classes=spec["num_classes"])


def run(spec: dict, official: str, data_path: str, count_only: bool = False) -> dict:
    """One round: ``{'torch', 'num_params', 'train': {...}, 'sampling': [...]}``."""
    import numpy as np
    import torch

    torch.manual_seed(int(spec.get("seed", 0)))
    if int(spec.get("torch_threads", 0)) > 0:
        torch.set_num_threads(int(spec["torch_threads"]))
    device = spec.get("device", "cpu")
    model = build_model(spec, official)
    out = {
        "torch": torch.__version__,
        "num_params": int(sum(p.numel() for p in model.parameters())),
        "device": device,
        "torch_threads": torch.get_num_threads(),
    }
    if device.startswith("cuda"):
        out["device_name"] = torch.cuda.get_device_name(0)
    if count_only:
        return out
    model = model.to(device)
    d = np.load(data_path)
    x0 = torch.from_numpy(d["images"]).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    x0 = x0.contiguous().to(device)
    y0 = torch.from_numpy(d["labels"]).long().to(device) if spec["num_classes"] else None
    amp = spec.get("dtype", "float32") == "bfloat16"
    dev_type = "cuda" if device.startswith("cuda") else "cpu"
    noise_std, drop_label = float(spec["noise_std"]), float(spec.get("drop_label", 0.0))
    optimizer = torch.optim.AdamW(model.parameters(), betas=(0.9, 0.95), lr=spec["lr"],
                                  weight_decay=1e-4)
    scaler = torch.amp.GradScaler(dev_type) if dev_type == "cuda" else None

    def compute_loss(x, y):
        with torch.autocast(device_type=dev_type, dtype=torch.bfloat16, enabled=amp):
            z, _, logdets = model(x, y)
            return model.get_loss(z, logdets)

    if spec.get("compile"):
        compute_loss = torch.compile(compute_loss, fullgraph=False, backend="inductor",
                                     mode=spec["compile"])

    def step() -> float:
        x = x0 + noise_std * torch.randn_like(x0)
        y = y0
        if y is not None and drop_label > 0:
            mask = (torch.rand(y.size(0), device=device) < drop_label).int()
            y = (1 - mask) * y - mask
        optimizer.zero_grad()
        loss = compute_loss(x, y)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        return loss.item()

    model.train()
    t0 = time.perf_counter()
    step()
    _sync(device)
    first = time.perf_counter() - t0
    for _ in range(max(0, int(spec["warmup"]) - 1)):
        step()
    times, loss = [], float("nan")
    for _ in range(int(spec["steps"])):
        _sync(device)
        t0 = time.perf_counter()
        loss = step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    out["train"] = {"first_step_s": first, "step_times_s": times, "step_s_median": med,
                    "examples_per_s": spec["batch"] / med, "final_loss": loss}

    model.eval()
    z0 = torch.from_numpy(d["noise"]).float().to(device)
    ys = torch.from_numpy(d["sample_labels"]).long().to(device) if spec["num_classes"] else None
    sampling = []
    for g in spec["guidances"]:
        def sample(g=g):
            with torch.no_grad(), torch.autocast(device_type=dev_type, dtype=torch.bfloat16,
                                                 enabled=amp):
                # reverse writes the tokens into its input in place: a fresh copy per call
                return model.reverse(z0.clone(), ys, guidance=float(g),
                                     attn_temp=float(spec["attn_temp"]))

        t0 = time.perf_counter()
        x = sample()
        _sync(device)
        first = time.perf_counter() - t0
        times = []
        for _ in range(int(spec["sample_reps"])):
            _sync(device)
            t0 = time.perf_counter()
            x = sample()
            _sync(device)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        sampling.append({"guidance": float(g), "first_call_s": first, "times_s": times,
                         "s_median": med, "images_per_s": z0.shape[0] / med,
                         "finite": bool(torch.isfinite(x.float()).all().item())})
    out["sampling"] = sampling
    return out


def main(argv=None) -> None:
    """Parses the arguments, runs one round and prints its JSON on one line."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--official", required=True, help="local copy of apple/ml-tarflow")
    ap.add_argument("--data", default="", help=".npz written by tarflow_vs_official.py")
    ap.add_argument("--spec", required=True, help="JSON: model sizes and timing settings")
    ap.add_argument("--count_only", action="store_true", help="only build and count params")
    args = ap.parse_args(argv)
    result = run(json.loads(args.spec), args.official, args.data, args.count_only)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
