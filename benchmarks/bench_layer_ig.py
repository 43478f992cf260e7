"""Per-image calls of ``layer_integrated_gradients`` in a loop, against a bare forward pass.

    .venv/bin/python benchmarks/bench_layer_ig.py [--arch densenet121] [--images 8] [--threads 1]

One process, CPU, a random-init model of ``--arch`` at 224 px, ``features.denseblock4``, IG with
32 steps, one image per call, side by side in rotating rounds: (1) a bare forward pass per image;
(2) ``layer_integrated_gradients(model, layer, x[i:i+1], target)`` in a loop -- the split made on
the first call is reused (issue 17's goal: <= 1.4x the forward pass); (3) the same with the cache
emptied before every call, i.e. a trace and split check per call (what every call cost before).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from cxrsem.api import create_architecture
from cxrsem.attribution import ig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="densenet121")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_architecture(args.arch, num_outputs=14, in_channels=1).eval()
    x = torch.rand(args.images, 1, 224, 224)
    layer = "features.denseblock4"

    def forward() -> None:
        with torch.no_grad():
            for i in range(args.images):
                model(x[i:i + 1])

    def cached() -> None:
        for i in range(args.images):
            ig.layer_integrated_gradients(model, layer, x[i:i + 1], 0, steps=32)

    def retraced() -> None:
        for i in range(args.images):
            ig._CACHE.clear()
            ig.layer_integrated_gradients(model, layer, x[i:i + 1], 0, steps=32)

    runs = {"forward": forward, "cached": cached, "retraced": retraced}
    cached()  # warm-up (and the one split of the cached loop)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(args.rounds):
        names = list(runs)[r % 3:] + list(runs)[:r % 3]
        for name in names:
            started = time.perf_counter()
            runs[name]()
            times[name].append((time.perf_counter() - started) / args.images)
    base = statistics.median(times["forward"])
    print(f"{args.arch}, 224 px, {args.images} images x {args.rounds} rounds, {args.threads} thread(s)")
    for name, label in (("forward", "bare forward pass"), ("cached", "layer IG, split reused"),
                        ("retraced", "layer IG, split per call")):
        median = statistics.median(times[name])
        print(f"  {label:24s}: {1000 * median:8.1f} ms / image ({median / base:.2f}x the forward pass)")


if __name__ == "__main__":
    main()
