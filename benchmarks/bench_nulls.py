"""What the chance baselines of ``cxrsem dissect --null ...`` cost, against the plain dissection.

    .venv/bin/python benchmarks/bench_nulls.py --images 500                      # shuffle + rotation
    .venv/bin/python benchmarks/bench_nulls.py --images 200 --random-init 5      # + random networks
    .venv/bin/python benchmarks/bench_nulls.py --device cuda                     # the same code on a GPU

One process, one randomly initialised model (densenet121 ``denseblock4``, phantom images, seg 112):
(1) the plain dissection, with a fresh activation cache, then again from the cache; (2) the same
with ``--null shuffle:P`` and (3) with ``--null rotation:R``, both reusing that cache (so their
difference to the plain run's threshold + tally time from the cache is what the null adds: neither
runs the model); (4) optionally ``--null random-init:N`` (N more dissections, each with its own
forward pass).  Prints wall times from the dissections' own timings and the ratios the issue asks
about.
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


def _run(checkpoint: Path, out: Path, images: int, device: str, **nulls) -> tuple[float, dict]:
    started = time.perf_counter()
    (result,) = dissect([checkpoint], ["denseblock4"], out=out, figures=False,
                        concept_options={"phantom": {"n_images": images}},
                        settings=DissectSettings(seg_size=112, **nulls), device=device)
    return time.perf_counter() - started, result.timings


def _passes(timings: dict) -> float:
    """Threshold + tally time (the cache reads; the part a null can add to)."""
    return sum(v for k, v in timings.items() if k.startswith(("quantile:", "tally:")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="densenet121")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--permutations", type=int, default=100)
    parser.add_argument("--rotations", type=int, default=1)
    parser.add_argument("--random-init", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoint = write_checkpoint(tmp, args.arch, 224)
        out = tmp / "out"
        plain_s, _ = _run(checkpoint, out, args.images, args.device)
        _, plain = _run(checkpoint, out, args.images, args.device)  # the baseline of the passes
        tally = next(v for k, v in plain.items() if k.startswith("tally:"))
        print(f"{args.arch} denseblock4, {args.images} phantom images, seg 112, {args.device}")
        print(f"  plain dissection (fresh cache)   {plain_s:8.1f} s  (from the cache: threshold + "
              f"tally {_passes(plain):.1f} s, of which tally {tally:.1f} s)")
        shuffle_s, shuffle = _run(checkpoint, out, args.images, args.device,
                                  null_permutations=args.permutations)
        added = _passes(shuffle) - _passes(plain)
        print(f"  --null shuffle:{args.permutations:<4d}             {shuffle_s:8.1f} s  (adds "
              f"{added:.1f} s to the passes: the dissection with it takes "
              f"{(plain_s + added) / plain_s:.2f}x the plain one)")
        rotation_s, rotation = _run(checkpoint, out, args.images, args.device,
                                    null_rotations=args.rotations)
        added = _passes(rotation) - _passes(plain)
        print(f"  --null rotation:{args.rotations:<3d}              {rotation_s:8.1f} s  (adds "
              f"{added:.1f} s = {added / tally:.2f}x the tally time)")
        if args.random_init:
            init_s, _ = _run(checkpoint, tmp / "init", args.images, args.device,
                             null_random_init=args.random_init)
            print(f"  --null random-init:{args.random_init:<3d}           {init_s:8.1f} s  "
                  f"({init_s / plain_s:.2f}x the plain dissection, fresh caches)")


if __name__ == "__main__":
    main()
