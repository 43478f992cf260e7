"""The paper's central claim, reproduced on the phantom: training creates concept detectors.

    .venv/bin/python benchmarks/science_check.py [--epochs 4] [--image-size 96] [--seeds 0 1]

Trains ``densenet-mini`` on phantom severity (``mae-scce``, the BrixIA 6-zone loss), dissects its
``epoch-000.pt`` (the initial model) and its final checkpoint at ``denseblock4`` against the
phantom's masks (quantile 0.005, IoU > 0.04), and compares the number of detectors of the concepts
that drive the severity score (Consolidation and Ground Glass Opacities: the phantom's zone scores
are computed from them) and of all lesion concepts.  Prints both detector tables and the verdict.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path

from cxrsem.dissection import DissectSettings, dissect
from cxrsem.training import TrainConfig, train

OPACITY = ("Consolidation", "Ground Glass Opacities")
LESIONS = OPACITY + ("Pleural Effusion", "Pneumothorax", "Nodule", "Mass", "Atelectasis")


def detectors(layer, threshold: float = 0.04) -> Counter:
    best, iou = layer.best
    return Counter(layer.concepts[b] for b, v in zip(best, iou, strict=True) if v > threshold)


def run(seed: int, epochs: int, image_size: int, n_train: int, n_images: int, folder: Path) -> dict:
    started = time.perf_counter()
    result = train(TrainConfig(out=str(folder / f"run{seed}"), dataset="phantom", loss="mae-scce",
                               arch="densenet-mini", epochs=epochs, image_size=image_size, lr=2e-3,
                               seed=seed, patience=epochs, device="cpu",
                               dataset_options={"n_train": n_train, "n_val": 200}))
    final = result.run_dir / f"epoch-{result.epochs_run:03d}.pt"
    initial, trained = dissect([result.run_dir / "epoch-000.pt", final], ["denseblock4"],
                               out=folder / f"dissect{seed}", concepts=["phantom"],
                               concept_options={"phantom": {"n_images": n_images}},
                               settings=DissectSettings(seg_size=image_size), seed=seed, figures=False)
    counts = {"initial": detectors(initial.layers[0]), "trained": detectors(trained.layers[0])}
    mae = result.history[-1]["mae_mean"]
    print(f"seed {seed}: val zone MAE {mae:.3f} (mean predictor "
          f"{result.history[-1]['mae_mean_predictor']:.3f}), {time.perf_counter() - started:.0f} s")
    for name, count in counts.items():
        opacity = sum(count[c] for c in OPACITY)
        lesions = sum(count[c] for c in LESIONS)
        listing = ", ".join(f"{c} {n}" for c, n in count.most_common()) or "none"
        print(f"  {name:8s} total {sum(count.values()):2d}, opacity {opacity}, lesions {lesions}: {listing}")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--n-train", type=int, default=1200)
    parser.add_argument("--dissect-images", type=int, default=400)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    wins = 0
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            counts = run(seed, args.epochs, args.image_size, args.n_train, args.dissect_images, Path(tmp))
            gained = sum(counts["trained"][c] for c in OPACITY) > sum(counts["initial"][c] for c in OPACITY)
            wins += gained
    print(f"opacity detectors increased with training in {wins} of {len(args.seeds)} runs")


if __name__ == "__main__":
    main()
