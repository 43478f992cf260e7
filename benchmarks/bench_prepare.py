"""Images per second from the raw files vs the prepared image cache, on the real covid-seg images.

    CXRSEM_DATA_DIR=../shared/data .venv/bin/python benchmarks/bench_prepare.py
    .venv/bin/python benchmarks/bench_prepare.py --root PATH/covid-19-chest-xray-segmentations-dataset \
        --sizes 224 256 --repeats 3 --workers 2

For each size: ``cxrsem prepare``'s own time (decode + resize + store, with ``--workers``), then
three ways of reading every image of the concept set, in the same process, one after the other:

- ``images, raw``: the dataset's decoder (read the JPEG/PNG, grey, antialiased resize);
- ``images, prepared``: the same images served from the memory-mapped cache;
- ``items, raw`` / ``items, prepared``: whole concept-set items (image + its 13 masks, which are
  still rasterised from the mask files), i.e. what ``cxrsem dissect`` reads.

The median of ``--repeats`` passes is shown (the first prepared pass also pays the page cache).
One thread, no workers: the figures are per core.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

import cxrsem
from cxrsem.prepare import prepare_images


def passes(fn, n: int, repeats: int) -> float:
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(n):
            fn(i)
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_root = Path(os.environ.get("CXRSEM_DATA_DIR", "../shared/data")) / \
        "covid-19-chest-xray-segmentations-dataset"
    parser.add_argument("--root", type=Path, default=default_root)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 256])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="workers of the prepare step")
    args = parser.parse_args()
    if not (args.root / "structure.csv").is_file():
        raise SystemExit(f"no covid-seg dataset at {args.root} (set CXRSEM_DATA_DIR or --root)")
    torch.set_num_threads(1)
    roots = {"covid-seg": args.root}
    warnings.simplefilter("ignore")
    print(f"covid-seg at {args.root}; 1 thread; median of {args.repeats} passes")
    print(f"{'size':>5} {'prepare img/s':>14} {'images raw':>11} {'images prep':>12} {'speed-up':>9} "
          f"{'items raw':>10} {'items prep':>11} {'speed-up':>9}")
    with tempfile.TemporaryDirectory() as cache:
        for size in args.sizes:
            (prepared,) = prepare_images("covid-seg", sizes=(size,), data_roots=roots, cache_dir=cache,
                                         workers=args.workers)
            raw = cxrsem.create_concept_set("covid-seg", image_size=size, mask_size=112,
                                            data_roots=roots, cache_dir="off")
            cached = cxrsem.create_concept_set("covid-seg", image_size=size, mask_size=112,
                                               data_roots=roots, cache_dir=cache)
            assert cached.image_cache_state["images"] == len(cached)
            n = len(raw)
            images_raw = passes(raw._load, n, args.repeats)
            images_prep = passes(cached._load, n, args.repeats)
            items_raw = passes(raw.__getitem__, n, args.repeats)
            items_prep = passes(cached.__getitem__, n, args.repeats)
            print(f"{size:>5} {prepared.images_per_second:>14.1f} {images_raw:>11.1f} {images_prep:>12.1f} "
                  f"{images_prep / images_raw:>8.0f}x {items_raw:>10.1f} {items_prep:>11.1f} "
                  f"{items_prep / items_raw:>8.1f}x")


if __name__ == "__main__":
    main()
