"""Dissection throughput vs a bare forward pass, and peak memory vs the number of images.

    .venv/bin/python benchmarks/bench_dissect.py               # speed (densenet121, 224 px)
    .venv/bin/python benchmarks/bench_dissect.py --seg-sizes 224   # speed at one seg size
    .venv/bin/python benchmarks/bench_dissect.py --memory      # peak RSS at 500 vs 4000 images

Speed: the same images, batch size and model, in one process: (a) a bare forward pass over
pre-generated images; (b) ``cxrsem.dissect`` phases: forward + cache write, exact quantiles, and the
IoU tally.  "Tally overhead" is what dissection adds after the thresholds are known, relative to (a).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import cxrsem
from cxrsem.checkpoint import make_checkpoint, save_checkpoint
from cxrsem.dissection import DissectSettings, dissect
from cxrsem.engine.preprocess import DEFAULT_NORMALIZATION, InputSpec


def write_checkpoint(folder: Path, arch: str, image_size: int) -> Path:
    torch.manual_seed(0)
    model = cxrsem.create_architecture(arch, num_outputs=8)
    checkpoint = make_checkpoint(model, arch=arch, arch_kwargs={}, task_kind="multilabel",
                                 outputs=[f"c{i}" for i in range(8)], image_size=image_size,
                                 normalization=DEFAULT_NORMALIZATION)
    return save_checkpoint(folder / f"{arch}.pt", checkpoint)


def bare_forward_seconds(checkpoint: Path, images: torch.Tensor, batch_size: int) -> float:
    from cxrsem.checkpoint import build_model, load_checkpoint

    loaded = load_checkpoint(checkpoint)
    model, spec = build_model(loaded), InputSpec.from_checkpoint(loaded)
    with torch.no_grad():
        model(spec.prepare(images[:batch_size]))  # warm-up
        started = time.perf_counter()
        for start in range(0, len(images), batch_size):
            model(spec.prepare(images[start:start + batch_size]))
    return time.perf_counter() - started


def speed(arch: str, image_size: int, n_images: int, batch_size: int, seg_sizes: list[int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        checkpoint = write_checkpoint(folder, arch, image_size)
        concept_set = cxrsem.create_concept_set("phantom", image_size=image_size, mask_size=112,
                                                n_images=n_images)
        images = torch.stack([concept_set[i]["image"] for i in range(n_images)])
        forward = bare_forward_seconds(checkpoint, images, batch_size)
        print(f"{arch} at {image_size} px, {n_images} phantom images, batch {batch_size}, "
              f"{torch.get_num_threads()} threads")
        print(f"  bare forward pass: {forward:.2f} s ({n_images / forward:.1f} images/s)")
        for seg_size in seg_sizes:
            settings = DissectSettings(seg_size=seg_size, batch_size=batch_size)
            started = time.perf_counter()
            result = dissect([checkpoint], ["denseblock4"], out=folder / f"out{seg_size}",
                             concepts=["phantom"], concept_options={"phantom": {"n_images": n_images}},
                             settings=settings, figures=False)[0]
            total = time.perf_counter() - started
            t = result.timings
            layer = result.layers[0]
            quantile = t[f"quantile:{layer.layer}"]
            tally = t[f"tally:{layer.layer}"]
            print(f"  seg {seg_size}: forward+cache {t['forward_and_cache']:.2f} s, quantiles "
                  f"{quantile:.2f} s, tally {tally:.2f} s -> tally overhead {100 * tally / forward:.0f}% "
                  f"of the forward pass; quantile+tally {100 * (quantile + tally) / forward:.0f}%; "
                  f"whole command {total:.2f} s = {total / forward:.2f}x the forward pass; "
                  f"upsampled pairs {100 * layer.upsampled_fraction:.1f}%")


def memory_child(n_images: int, arch: str, image_size: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = write_checkpoint(Path(tmp), arch, image_size)
        dissect([checkpoint], ["denseblock4"], out=Path(tmp) / "out", concepts=["phantom"],
                concept_options={"phantom": {"n_images": n_images}},
                settings=DissectSettings(seg_size=112, batch_size=32), figures=False)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"n_images": n_images, "peak_rss_mb": round(peak_mb, 1)}))


def memory(arch: str, image_size: int, counts: list[int]) -> None:
    print(f"peak RSS of `dissect` ({arch} at {image_size} px, seg 112), one process per run:")
    for n in counts:
        out = subprocess.run([sys.executable, __file__, "--memory-child", str(n), "--arch", arch,
                              "--image-size", str(image_size)], capture_output=True, text=True,
                             check=True).stdout
        data = json.loads(out.strip().splitlines()[-1])
        print(f"  {data['n_images']:>5} images: {data['peak_rss_mb']:.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default="densenet121")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seg-sizes", type=int, nargs="+", default=[112, 224],
                        help="annotation sizes to dissect at (speed)")
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--memory-child", type=int)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.arch, args.image_size)
    elif args.memory:
        memory(args.arch, args.image_size, [500, 4000])
    else:
        speed(args.arch, args.image_size, args.images, args.batch_size, args.seg_sizes)


if __name__ == "__main__":
    main()
