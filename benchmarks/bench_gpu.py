"""The GPU figures of issue #18 in one table (run by ``benchmarks/gpu_check.sh``; works on CPU too).

    .venv/bin/python benchmarks/bench_gpu.py --device cuda               # 2,000 images at 224 px
    .venv/bin/python benchmarks/bench_gpu.py --device cpu --images 64 --attr-images 8 --train-images 64

Rows, all densenet121 at ``--image-size`` on the phantom, in one process:

- dissection of ``denseblock4``: a bare forward pass over the pre-generated images (the floor), and
  the whole ``cxrsem.dissect`` call (image generation, forward + cache, exact T_k, IoU tally at
  ``--seg-size``), with the whole call scaled linearly to 10,000 images -- the goal is <= 60 s on
  one H100-class GPU (13 phantom concepts);
- semantic attribution (Integrated Gradients at ``denseblock4``, the default steps), images/s;
- one training epoch (``cxrsem.train``, mixed precision on CUDA), images/s.  One process: under
  torchrun a world of one runs the same loop (DDP needs a second GPU to differ).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_dissect import write_checkpoint  # noqa: E402

import cxrsem  # noqa: E402
from cxrsem.checkpoint import build_model, load_checkpoint  # noqa: E402
from cxrsem.dissection import DissectSettings, dissect  # noqa: E402
from cxrsem.engine.preprocess import InputSpec  # noqa: E402
from cxrsem.training import TrainConfig, train  # noqa: E402

GOAL_IMAGES, GOAL_S = 10_000, 60.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_forward(checkpoint: Path, images: torch.Tensor, batch_size: int,
                 device: torch.device) -> float:
    loaded = load_checkpoint(checkpoint)
    model, spec = build_model(loaded).to(device).eval(), InputSpec.from_checkpoint(loaded)
    with torch.no_grad():
        model(spec.prepare(images[:batch_size], device=device))  # warm-up (cuDNN autotune)
        _sync(device)
        started = time.perf_counter()
        for start in range(0, len(images), batch_size):
            model(spec.prepare(images[start:start + batch_size], device=device))
        _sync(device)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--seg-size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--attr-images", type=int, default=128)
    parser.add_argument("--train-images", type=int, default=2000)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"cpu, {torch.get_num_threads()} threads"
    rows: list[tuple[str, str]] = []
    figures: dict[str, float] = {}

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        checkpoint = write_checkpoint(folder, "densenet121", args.image_size)
        concept_set = cxrsem.create_concept_set("phantom", image_size=args.image_size,
                                                mask_size=args.seg_size, n_images=args.images)
        started = time.perf_counter()
        images = torch.stack([concept_set[i]["image"] for i in range(args.images)])
        generate = time.perf_counter() - started
        forward = bare_forward(checkpoint, images, args.batch_size, device)
        figures.update(generate_s=generate, forward_s=forward)
        rows.append(("phantom images generated (CPU)", f"{generate:.1f} s"))
        rows.append((f"bare forward, {args.images} images", f"{forward:.1f} s "
                     f"({args.images / forward:.0f} images/s)"))

        settings = DissectSettings(seg_size=args.seg_size, batch_size=args.batch_size)
        started = time.perf_counter()
        result = dissect([checkpoint], ["denseblock4"], out=folder / "dissect",
                         concepts=["phantom"], concept_options={"phantom": {"n_images": args.images}},
                         settings=settings, device=str(device), figures=False)[0]
        _sync(device)
        whole = time.perf_counter() - started
        t, layer = result.timings, result.layers[0].layer
        scaled = whole * GOAL_IMAGES / args.images
        figures.update(dissect_s=whole, dissect_10k_s=scaled)
        rows.append((f"dissect, {args.images} images, seg {args.seg_size}",
                     f"{whole:.1f} s = {whole / forward:.1f}x the forward (forward+cache "
                     f"{t['forward_and_cache']:.1f} s, T_k {t[f'quantile:{layer}']:.1f} s, tally "
                     f"{t[f'tally:{layer}']:.1f} s)"))
        rows.append((f"dissect scaled to {GOAL_IMAGES:,} images",
                     f"{scaled:.0f} s (goal <= {GOAL_S:.0f} s on an H100-class GPU: "
                     f"{'met' if scaled <= GOAL_S else 'not met'})"))

        n = min(args.attr_images, args.images)
        cxrsem.attribute(images[:8], checkpoint, "denseblock4", device=str(device),
                         render=False)  # warm-up
        _sync(device)
        started = time.perf_counter()
        cxrsem.attribute(images[:n], checkpoint, "denseblock4", device=str(device),
                         batch_size=min(32, n), render=False)
        _sync(device)
        attr = time.perf_counter() - started
        figures["attribute_images_per_s"] = n / attr
        rows.append((f"attribute (IG), {n} images", f"{n / attr:.1f} images/s"))

        started = time.perf_counter()
        train(TrainConfig(out=str(folder / "train"), dataset="phantom", loss="bce",
                          arch="densenet121", image_size=args.image_size, epochs=1,
                          batch_size=args.batch_size, device=str(device),
                          dataset_options={"n_train": args.train_images, "n_val": 64}))
        _sync(device)
        epoch = time.perf_counter() - started
        figures["train_images_per_s"] = args.train_images / epoch
        rows.append((f"train 1 epoch, {args.train_images} images",
                     f"{epoch:.1f} s ({args.train_images / epoch:.0f} images/s incl. "
                     f"validation and checkpoints)"))

    print(f"densenet121 at {args.image_size} px on {name}, batch {args.batch_size}, "
          f"torch {torch.__version__}")
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")
    if args.json:
        args.json.write_text(json.dumps({"device": name, **figures}, indent=2))


if __name__ == "__main__":
    main()
