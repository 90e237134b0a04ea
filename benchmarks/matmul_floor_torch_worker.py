"""Times einsum matmuls with torch, for ``benchmarks/tarflow_matmul_floor.py``'s side-by-side.

Runs in a separate Python that has torch (torch is not a dependency of jaxflows; nothing in
jaxflows or its tests imports this file). Reads a JSON list of ``{"spec", "lhs", "rhs"}``
(an einsum string and the two operand shapes) from the file named on the command line and prints
one JSON object: ``{"torch", "threads", "seconds": [median seconds per einsum]}``.

    /path/to/torch/python benchmarks/matmul_floor_torch_worker.py dots.json [--reps 15]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def time_einsum(torch, spec: str, lhs: list[int], rhs: list[int], reps: int) -> float:
    """Median seconds of ``torch.einsum(spec, a, b)`` on float32 contiguous operands."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(*lhs, generator=g)
    b = torch.randn(*rhs, generator=g)
    with torch.no_grad():
        for _ in range(3):
            torch.einsum(spec, a, b)
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            torch.einsum(spec, a, b)
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dots")
    ap.add_argument("--reps", type=int, default=15)
    args = ap.parse_args(argv)
    import torch

    with open(args.dots) as f:
        dots = json.load(f)
    seconds = [time_einsum(torch, d["spec"], d["lhs"], d["rhs"], args.reps) for d in dots]
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                      "seconds": seconds}))


if __name__ == "__main__":
    main()
