"""Phantom generation speed: images per second, batch 64, on 1 and on 2 CPU threads.

    .venv/bin/python benchmarks/bench_phantom.py                    # 224 and 128 px
    .venv/bin/python benchmarks/bench_phantom.py --sizes 224 --repeats 10

Two paths are timed, each from sample indices to finished tensors (random parameters, rendering,
labels): ``dataset`` is what training reads (images + the labels of all four tasks; masks are
dropped once the labels are computed), ``concept set`` what dissection reads (images + all 13
masks at the image size).  Every timed batch uses fresh indices after one warm-up batch.  Both
images per wall-clock second and images per CPU second (all threads together) are shown: on a
shared machine the CPU figure for 1 thread is the steadier measure of one core's throughput.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from cxrsem.default_plugins.phantom import generate

PATHS = {
    "dataset": {"masks": False},
    "concept set": {"masks": True},
}


def measure(size: int, threads: int, path: str, batch: int, repeats: int) -> tuple[float, float]:
    """Median images per wall-clock second and per CPU second over ``repeats`` batches."""
    torch.set_num_threads(threads)
    kwargs = PATHS[path]
    generate(range(batch), seed=0, split="train", image_size=size, **kwargs)  # warm-up
    wall, cpu = [], []
    for r in range(repeats):
        indices = range((r + 1) * batch, (r + 2) * batch)
        w0, c0 = time.perf_counter(), time.process_time()
        generate(indices, seed=0, split="train", image_size=size, **kwargs)
        wall.append(batch / (time.perf_counter() - w0))
        cpu.append(batch / (time.process_time() - c0))  # all threads' CPU time together
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 128])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {load:.1f}, "
          f"batch {args.batch}, median of {args.repeats} batches")
    print(f"{'size':>5} {'threads':>7}  {'path':<12} {'images/s':>9} {'images/CPU-s':>13}")
    for size in args.sizes:
        for threads in args.threads:
            for path in PATHS:
                wall, cpu = measure(size, threads, path, args.batch, args.repeats)
                print(f"{size:>5} {threads:>7}  {path:<12} {wall:>9.0f} {cpu:>13.0f}")


if __name__ == "__main__":
    main()
