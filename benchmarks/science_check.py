"""The paper's central claim, reproduced on the phantom: training creates concept detectors.

    .venv/bin/python benchmarks/science_check.py [--epochs 4] [--image-size 96] [--seeds 0 1] \
        [--bootstrap 1000] [--null-permutations 100] [--random-init 5] [--verify]

Trains ``densenet-mini`` on phantom severity (``mae-scce``, the BrixIA 6-zone loss), dissects its
``epoch-000.pt`` (the initial model) and its final checkpoint at ``denseblock4`` against the
phantom's masks (quantile 0.005, IoU > 0.04), and compares the number of detectors of the concepts
that drive the severity score (Consolidation and Ground Glass Opacities: the phantom's zone scores
are computed from them) and of all lesion concepts.  Prints both detector tables and the verdict,
with a paired bootstrap over the dissection images (``--bootstrap`` resamples, the same images for
both models: :mod:`cxrsem.statistics.bootstrap`) of trained minus initial: its 95% interval and
two-sided p-value for the opacity detectors, all lesion detectors and all detectors.  With the
chance baselines (``--null-permutations``, ``--random-init``; 0 skips them) it also prints, per
model and concept, the detectors that beat the shuffled-annotation null (Benjamini-Hochberg at FDR
0.05) and the detectors untrained networks of the same architecture give.  With ``--verify`` it
also runs ``cxrsem verify`` on the trained model's validation split: AOPC per attribution method
against random units (paired), and the severity MAE change when the dissection's detectors of each
concept are zeroed against as many random units (:mod:`cxrsem.attribution.verify`).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path

from cxrsem.attribution.verify import VerifySettings, verify
from cxrsem.dissection import DissectSettings, dissect
from cxrsem.formats.dissection import DEFAULT_IOU_THRESHOLD, is_detector
from cxrsem.statistics.bootstrap import (
    estimate_and_resample,
    interval,
    p_value,
    resample_weights,
    same_images,
)
from cxrsem.training import TrainConfig, train

OPACITY = ("Consolidation", "Ground Glass Opacities")
LESIONS = OPACITY + ("Pleural Effusion", "Pneumothorax", "Nodule", "Mass", "Atelectasis")


def detectors(layer, threshold: float = DEFAULT_IOU_THRESHOLD) -> Counter:
    best, iou = layer.best
    return Counter(layer.concepts[b] for b, v in zip(best, iou, strict=True)
                   if is_detector(v, threshold))


def paired_difference(initial, trained, resamples: int, seed: int) -> None:
    """Trained minus initial, resampled over the same images for both (a paired bootstrap)."""
    a, b = initial.image_stats, trained.image_stats
    assert same_images(a, b) is None, "both models are dissected on the same phantom images"
    weights = resample_weights(a.groups, resamples, seed)
    (a0, a_b), (b0, b_b) = (estimate_and_resample(s, weights) for s in (a, b))
    for label, concepts in (("opacity", OPACITY), ("lesions", LESIONS), ("all", None)):
        columns = [a.concepts.index(c) for c in concepts] if concepts else slice(None)
        counts = {name: r.counts[:, columns].sum(axis=1)
                  for name, r in (("a", a_b), ("b", b_b), ("a0", a0), ("b0", b0))}
        d = counts["b"] - counts["a"]
        low, high = interval(d.astype(float))
        print(f"  trained - initial, {label:8s}: {int(counts['b0'][0] - counts['a0'][0]):+d} "
              f"[{low:+g}, {high:+g}], p = {p_value(d):.3f} ({resamples} paired resamples)")


def chance(name: str, layer) -> None:
    """Per concept: paper-rule detectors, significant ones, and what the nulls give."""
    nulls = layer.nulls or {}
    shuffle, random_init = nulls.get("shuffle"), nulls.get("random_init")
    found = detectors(layer)
    rows = []
    for concept in layer.concepts:
        parts = [f"{found[concept]}"]
        if shuffle:
            parts.append(f"{shuffle['significant'][concept]} significant, shuffled "
                         f"{shuffle['detectors'][concept]['mean']:.2g}")
        if random_init:
            parts.append(f"random init {random_init['detectors'][concept]['mean']:.2g}")
        if found[concept] or (random_init and random_init["detectors"][concept]["mean"]):
            rows.append(f"{concept}: " + ", ".join(parts))
    total = [f"{sum(found.values())} detectors"]
    if shuffle:
        total.append(f"{shuffle['num_significant']} significant (shuffled alone: "
                     f"{shuffle['num_detectors']['mean']:.2g})")
    if random_init:
        total.append(f"random init {random_init['num_detectors']['mean']:.2g} "
                     f"[{random_init['num_detectors']['low']:g}, {random_init['num_detectors']['high']:g}]")
    print(f"  chance, {name}: " + "; ".join(total))
    for row in rows:
        print(f"    {row}")


def run(seed: int, epochs: int, image_size: int, n_train: int, n_images: int, folder: Path,
        resamples: int = 1000, permutations: int = 0, random_init: int = 0,
        check_units: bool = False) -> dict:
    started = time.perf_counter()
    result = train(TrainConfig(out=str(folder / f"run{seed}"), dataset="phantom", loss="mae-scce",
                               arch="densenet-mini", epochs=epochs, image_size=image_size, lr=2e-3,
                               seed=seed, patience=epochs, device="cpu",
                               dataset_options={"n_train": n_train, "n_val": 200}))
    final = result.run_dir / f"epoch-{result.epochs_run:03d}.pt"
    initial, trained = dissect([result.run_dir / "epoch-000.pt", final], ["denseblock4"],
                               out=folder / f"dissect{seed}", concepts=["phantom"],
                               concept_options={"phantom": {"n_images": n_images}},
                               settings=DissectSettings(seg_size=image_size,
                                                        null_permutations=permutations,
                                                        null_random_init=random_init),
                               seed=seed, figures=False)
    counts = {"initial": detectors(initial.layers[0]), "trained": detectors(trained.layers[0])}
    mae = result.history[-1]["mae_mean"]
    print(f"seed {seed}: val zone MAE {mae:.3f} (mean predictor "
          f"{result.history[-1]['mae_mean_predictor']:.3f}), {time.perf_counter() - started:.0f} s")
    for name, count in counts.items():
        opacity = sum(count[c] for c in OPACITY)
        lesions = sum(count[c] for c in LESIONS)
        listing = ", ".join(f"{c} {n}" for c, n in count.most_common()) or "none"
        print(f"  {name:8s} total {sum(count.values()):2d}, opacity {opacity}, lesions {lesions}: {listing}")
    if resamples:
        paired_difference(initial.layers[0], trained.layers[0], resamples, seed)
    if permutations or random_init:
        for name, model in (("initial", initial), ("trained", trained)):
            chance(name, model.layers[0])
    if check_units:
        started = time.perf_counter()
        checked = verify(final, "denseblock4", "phantom", dissection=folder / f"dissect{seed}" / final.stem,
                         dataset_options={"n_train": n_train, "n_val": 200}, device="cpu",
                         settings=VerifySettings(seed=seed, resamples=1000))
        print(f"  verify ({checked.images} val images, {time.perf_counter() - started:.0f} s):")
        for sentence in checked.sentences():
            print(f"    {sentence}")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--n-train", type=int, default=1200)
    parser.add_argument("--dissect-images", type=int, default=400)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--bootstrap", type=int, default=1000, help="paired resamples (0: none)")
    parser.add_argument("--null-permutations", type=int, default=0,
                        help="shuffled-annotation null (0: none)")
    parser.add_argument("--random-init", type=int, default=0, help="untrained networks (0: none)")
    parser.add_argument("--verify", action="store_true",
                        help="unit and concept ablation of the trained model (cxrsem verify)")
    args = parser.parse_args()
    wins = 0
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            counts = run(seed, args.epochs, args.image_size, args.n_train, args.dissect_images, Path(tmp),
                         args.bootstrap, args.null_permutations, args.random_init, args.verify)
            gained = sum(counts["trained"][c] for c in OPACITY) > sum(counts["initial"][c] for c in OPACITY)
            wins += gained
    print(f"opacity detectors increased with training in {wins} of {len(args.seeds)} runs")


if __name__ == "__main__":
    main()
