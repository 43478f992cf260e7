"""What ``dissect --precision bf16|fp16`` changes against fp32: thresholds, IoUs, detectors, speed.

    .venv/bin/python benchmarks/bench_precision.py --model runs/quickstart/severity/epoch-006.pt
    .venv/bin/python benchmarks/bench_precision.py                 # trains densenet-mini first
    .venv/bin/python benchmarks/bench_precision.py --random-init densenet121 --image-size 224 \\
        --images 64 --seg-size 112
    .venv/bin/python benchmarks/bench_precision.py --device cuda   # the GPU check

The same model, layer and images are dissected once per precision (no cache reuse: each run makes
its own forward pass).  Against fp32 it prints, per reduced precision: the relative error of the
thresholds T_k (max and median over units with T_k != 0; and the largest |dT_k| relative to the
layer's largest |T_k|, which is not inflated by thresholds near zero), the fraction of units whose
best concept changes, the detector counts (and how many units change detector status), the
largest |dIoU| over all unit x concept pairs, and the time per image of a bare forward pass
(``run_model`` over pre-generated images, the layer captured) and of dissect's forward + cache
phase.  With no ``--model`` or ``--random-init`` it first trains ``densenet-mini`` on phantom
severity (``--epochs``, in-process, like ``science_check.py``), so the units have concepts to find.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_dissect import write_checkpoint  # noqa: E402

import cxrsem  # noqa: E402
from cxrsem.checkpoint import build_model, load_model  # noqa: E402
from cxrsem.dissection import DissectSettings, dissect  # noqa: E402
from cxrsem.engine.device import resolve_device  # noqa: E402
from cxrsem.engine.layers import resolve_layers  # noqa: E402
from cxrsem.engine.precision import PRECISIONS, supported_precision  # noqa: E402
from cxrsem.engine.preprocess import InputSpec  # noqa: E402
from cxrsem.engine.runner import run_model  # noqa: E402
from cxrsem.errors import UsageError  # noqa: E402
from cxrsem.formats.dissection import DEFAULT_IOU_THRESHOLD, is_detector  # noqa: E402


def trained_model(folder: Path, epochs: int, image_size: int, n_train: int) -> Path:
    from cxrsem.training import TrainConfig, train

    result = train(TrainConfig(out=str(folder / "run"), dataset="phantom", loss="mae-scce",
                               arch="densenet-mini", epochs=epochs, image_size=image_size, lr=2e-3,
                               seed=0, patience=epochs, device="cpu",
                               dataset_options={"n_train": n_train, "n_val": 200}))
    return result.run_dir / f"epoch-{result.epochs_run:03d}.pt"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_seconds_per_image(model_path: Path, layer: str, images: torch.Tensor, batch_size: int,
                              device: torch.device, precision: str) -> float:
    """A bare ``run_model`` pass (the layer captured, activations to float32) over ``images``."""
    checkpoint = load_model(str(model_path))
    model = build_model(checkpoint).to(device).eval()
    spec = InputSpec.from_checkpoint(checkpoint)
    layers = resolve_layers(model, [layer], spec.size, spec.channels)

    def one_pass(images: torch.Tensor) -> None:
        batches = ({"image": images[start:start + batch_size]}
                   for start in range(0, len(images), batch_size))
        for step in run_model(model, spec, batches, device=device, layers=layers,
                              precision=precision):
            step.activations[layers[0]].sum().item()  # waits for the batch, as the cache does

    one_pass(images[:batch_size])  # warm-up (cuDNN algorithm choice, allocator)
    _sync(device)
    started = time.perf_counter()
    one_pass(images)
    _sync(device)
    return (time.perf_counter() - started) / len(images)


def compare(base, other, threshold: float) -> dict[str, float]:
    t0, t1 = base.thresholds, other.thresholds
    nonzero = t0 != 0
    rel = np.abs(t1[nonzero] - t0[nonzero]) / np.abs(t0[nonzero])
    (b0, v0), (b1, v1) = base.best, other.best
    d0, d1 = is_detector(v0, threshold), is_detector(v1, threshold)
    return {"t_rel_max": float(rel.max()) if rel.size else 0.0,
            "t_rel_median": float(np.median(rel)) if rel.size else 0.0,
            "t_scaled_max": float(np.abs(t1 - t0).max() / max(np.abs(t0).max(), 1e-30)),
            "best_changed": float(np.mean(b0 != b1)),
            "detectors": int(d1.sum()), "detector_flips": int((d0 != d1).sum()),
            "iou_max": float(np.abs(other.iou - base.iou).max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="checkpoint to dissect")
    parser.add_argument("--random-init", metavar="ARCH", help="an untrained ARCH instead")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs (no --model)")
    parser.add_argument("--n-train", type=int, default=800, help="training images (no --model)")
    parser.add_argument("--image-size", type=int, default=96,
                        help="of the trained or random-init model")
    parser.add_argument("--layer", default="denseblock4")
    parser.add_argument("--images", type=int, default=300, help="phantom dissection images")
    parser.add_argument("--seg-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precisions", nargs="+", default=["bf16", "fp16"],
                        choices=[p for p in PRECISIONS if p != "fp32"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    precisions = ["fp32"]
    for name in args.precisions:
        try:
            precisions.append(supported_precision(name, device))
        except UsageError as exc:
            print(f"skipping {name}: {exc}")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.model:
            model_path, what = args.model, str(args.model)
        elif args.random_init:
            model_path = write_checkpoint(folder, args.random_init, args.image_size)
            what = f"{args.random_init} (random init) at {args.image_size} px"
        else:
            started = time.perf_counter()
            model_path = trained_model(folder, args.epochs, args.image_size, args.n_train)
            what = (f"densenet-mini trained {args.epochs} epochs on {args.n_train} phantom images "
                    f"at {args.image_size} px ({time.perf_counter() - started:.0f} s)")
        image_size = InputSpec.from_checkpoint(load_model(str(model_path))).size
        concept_set = cxrsem.create_concept_set("phantom", image_size=image_size,
                                                mask_size=args.seg_size, n_images=args.images)
        images = torch.stack([concept_set[i]["image"] for i in range(args.images)])

        results, forward, cache_phase = {}, {}, {}
        for name in precisions:
            settings = DissectSettings(seg_size=args.seg_size, batch_size=args.batch_size,
                                       precision=name, use_cache=False)
            result = dissect(model_path, [args.layer], out=folder / f"out-{name}",
                             concepts=["phantom"],
                             concept_options={"phantom": {"n_images": args.images}},
                             settings=settings, device=str(device), figures=False)
            results[name] = result.layers[0]
            cache_phase[name] = result.timings["forward_and_cache"] / args.images
            forward[name] = forward_seconds_per_image(model_path, args.layer, images,
                                                      args.batch_size, device, name)

    base = results["fp32"]
    name0 = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"cpu, {torch.get_num_threads()} threads"
    print(f"{what}, layer {base.layer} ({len(base.thresholds)} units), {args.images} phantom "
          f"images, seg {args.seg_size}, batch {args.batch_size}; {name0}; torch {torch.__version__}")
    print()
    print("| precision | T_k rel. err. max | median | max abs(dT)/max abs(T) | best concept changed "
          "| detectors | detector flips | max abs(dIoU) | forward ms/image | forward+cache ms/image |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    base_detectors = int(is_detector(base.best[1], DEFAULT_IOU_THRESHOLD).sum())
    print(f"| fp32 | 0 | 0 | 0 | 0% | {base_detectors} | 0 | 0 | {1e3 * forward['fp32']:.2f} "
          f"| {1e3 * cache_phase['fp32']:.2f} |")
    for name in precisions[1:]:
        c = compare(base, results[name], DEFAULT_IOU_THRESHOLD)
        print(f"| {name} | {c['t_rel_max']:.2e} | {c['t_rel_median']:.2e} | {c['t_scaled_max']:.2e} "
              f"| {100 * c['best_changed']:.1f}% | {c['detectors']} | {c['detector_flips']} "
              f"| {c['iou_max']:.2e} | {1e3 * forward[name]:.2f} | {1e3 * cache_phase[name]:.2f} |")
    medians = statistics.median(np.abs(base.thresholds).tolist())
    print(f"\n(median |T_k| at fp32: {medians:.3g}; detectors: best-concept IoU > "
          f"{DEFAULT_IOU_THRESHOLD})")


if __name__ == "__main__":
    main()
