"""What ``--bootstrap B`` adds to a dissection, and the size of ``imagestats.npz``.

    .venv/bin/python benchmarks/bench_bootstrap.py                       # densenet121, 200 images
    .venv/bin/python benchmarks/bench_bootstrap.py --images 500 --resamples 1000

One process: ``cxrsem.dissect`` of a randomly initialised model on phantom images (seg size 112,
``denseblock4``), its wall time from the dissection's own timings, then the bootstrap summary of
the layer's per-image statistics (:func:`cxrsem.statistics.bootstrap.summarize`) timed on its own,
as ``dissect --bootstrap`` runs it.  Prints both, their ratio, and the ``.npz`` size per 1,000
images.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_dissect import write_checkpoint  # noqa: E402

from cxrsem.dissection import DissectSettings, dissect  # noqa: E402
from cxrsem.statistics.bootstrap import summarize  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="densenet121")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seg-size", type=int, default=112)
    parser.add_argument("--concepts", default="phantom", choices=("phantom", "phantom-bbox"),
                        help="phantom-bbox: box annotations, the shape of NIH's boxes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoint = write_checkpoint(tmp, args.arch, args.image_size)
        started = time.perf_counter()
        (result,) = dissect([checkpoint], ["denseblock4"], out=tmp / "out", figures=False,
                            concepts=[args.concepts],
                            concept_options={args.concepts: {"n_images": args.images}},
                            settings=DissectSettings(seg_size=args.seg_size), device="cpu")
        dissect_s = time.perf_counter() - started
        layer = result.layers[0]
        stats = layer.image_stats
        started = time.perf_counter()
        summarize(stats, resamples=args.resamples, seed=0)
        boot_s = time.perf_counter() - started
        npz = next((tmp / "out").rglob("imagestats.npz")).stat().st_size
    print(f"{args.arch} {layer.layer}, {stats.num_images} {args.concepts} images at {args.image_size} px, "
          f"seg {args.seg_size}: {stats.num_units} units x {stats.num_concepts} concepts, "
          f"P = {len(stats.mask_area):,} mask pairs, Q = {len(stats.inter_value):,} intersections")
    print(f"  dissect (no figures)          {dissect_s:8.1f} s")
    print(f"  bootstrap, {args.resamples} resamples   {boot_s:8.2f} s  "
          f"(+{100 * boot_s / dissect_s:.1f}% of the dissection)")
    print(f"  imagestats.npz                {npz / 1024:8.1f} KiB  "
          f"({npz / stats.num_images * 1000 / 1024 ** 2:.2f} MiB per 1,000 images)")


if __name__ == "__main__":
    main()
