"""What unit ablation costs per image, against one bare forward pass (issue 16's budget: <= 2x).

    .venv/bin/python benchmarks/bench_ablation.py [--arch densenet121] [--images 8] [--threads 1]

One process, a random-init model at 224 px, ``features.denseblock4``, CPU.  Side by side: (1) one
bare forward pass of the whole model per image; (2) the ablation ``verify`` runs per image for 4
methods: the head once, then every deletion/insertion row of k in {1, 2, 5, 10, 20} for each
method's ranking (4 x 10 rows) and 10 random draws per k (100 rows, shared by the methods), through
the tail.  The attribution itself (e.g. IG's 32 tail steps) is not part of this figure.
"""

from __future__ import annotations

import argparse
import time

import torch

from cxrsem.api import create_architecture
from cxrsem.attribution.ablation import AblationSettings, ablate_image
from cxrsem.engine.split import split_at


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="densenet121")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_architecture(args.arch, num_outputs=14, in_channels=1).eval()
    x = torch.rand(args.images, 1, 224, 224)
    split = split_at(model, "features.denseblock4", x[:1])
    values = lambda logits: logits  # noqa: E731

    def forward() -> None:
        with torch.no_grad():
            for i in range(args.images):
                model(x[i:i + 1])

    def ablation() -> None:
        for i in range(args.images):
            with torch.no_grad():
                a, extras = split.head(x[i:i + 1])
            for m in range(4):
                scores = torch.rand(a.shape[1], generator=torch.Generator().manual_seed(m))
                settings = AblationSettings(random_draws=10 if m == 0 else 0)
                ablate_image(split, a, extras, 0, 1, scores, values, 0, settings, 256, i)

    def best(fn) -> float:
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        return min(times) / args.images

    forward()  # warm-up
    bare, ablated = best(forward), best(ablation)
    print(f"{args.arch} at 224 px, {args.images} images, {args.threads} thread(s), best of "
          f"{args.repeats}")
    print(f"  bare forward pass       {1000 * bare:8.1f} ms / image")
    print(f"  ablation, 4 methods     {1000 * ablated:8.1f} ms / image  ({ablated / bare:.2f}x the "
          f"forward pass; head once + 140 tail rows)")


if __name__ == "__main__":
    main()
