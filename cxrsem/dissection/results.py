"""Dissection outputs (schema ``cxrsem-dissection/1``), read by ``report`` and ``attribute``.

``DISSECT_DIR/<model-stem>/<layer>/``:

- ``dissection.json``: settings (quantile and what it is taken on, IoU threshold, seg size,
  interpolation), model identity (path, sha256 of the state dict), the model's training info, layer
  (feature shape, whether activations are non-negative), concept sets with per-concept image counts,
  one row per unit (threshold T_k, best concept, its IoU, detector flag, the full IoU row, top
  images) and detector counts per concept;
- ``units.csv`` (one row per unit), ``detectors.csv`` (concept, count);
- ``units/unit-NNNN.png`` for every detector (Fig. 3) and ``summary.png`` (Fig. 2 for one model);
- ``config.toml`` and ``manifest.json``.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cxrsem.outputs import write_config, write_json, write_manifest, write_text

SCHEMA = "cxrsem-dissection/1"


def model_folder_names(paths: Sequence[Path]) -> dict[Path, str]:
    """Folder per model: its file stem, or ``<parent>-<stem>`` when stems collide (``xrv:NAME``
    from a model source becomes ``xrv-NAME``)."""
    stems = Counter(p.stem for p in paths)
    names = {p: (f"{p.parent.name}-{p.stem}" if stems[p.stem] > 1 else p.stem) for p in paths}
    return {p: name.replace(":", "-") for p, name in names.items()}


def layer_record(result, layer, settings) -> dict[str, Any]:
    """The JSON document of one layer's dissection."""
    best_index, best_iou = layer.best
    detector = best_iou > settings.iou_threshold
    units = []
    for k in range(len(layer.thresholds)):
        units.append({
            "unit": k,
            "threshold": float(layer.thresholds[k]),
            "concept": layer.concepts[best_index[k]] if layer.concepts else None,
            "iou": float(best_iou[k]),
            "detector": bool(detector[k]),
            "ious": [round(float(v), 8) for v in layer.iou[k]],
            "top_images": [int(i) for i in layer.top_images[k]],
        })
    counts = Counter(units[k]["concept"] for k in range(len(units)) if detector[k])
    source = result.source
    concept_sets = []
    for name, concepts in source.concepts_of().items():
        concept_sets.append({"name": name, "concepts": concepts})
    images_with = {c: int(n) for c, n in zip(layer.concepts, layer.images_with, strict=True)}
    train = result.checkpoint.get("train", {})
    return {
        "schema": SCHEMA,
        "model": {"path": str(result.model_path), "sha256": result.model_sha256,
                  "arch": result.checkpoint["arch"]["name"], "task": result.checkpoint["task"],
                  "input": result.checkpoint["input"],
                  "train": {k: train.get(k) for k in ("dataset", "loss", "init", "epoch", "metrics")},
                  "cxrsem_version": result.checkpoint.get("cxrsem_version")},
        "layer": layer.layer,
        "num_units": len(units),
        "feature_shape": list(layer.feature_shape),
        "activations": {
            "captured": "module output, cloned before any later in-place op",
            "min": layer.activation_min,
            "nonnegative": layer.activation_min >= 0,
        },
        "settings": {
            "quantile": settings.quantile,
            "quantile_on": "raw activations of the unit over all its spatial positions and images "
                           "(as in the paper), numpy.quantile(values, 1 - q, method='inverted_cdf')",
            "threshold_images": layer.threshold_images,
            "iou_threshold": settings.iou_threshold,
            "seg_size": settings.seg_size,
            "interpolation": {"mode": "bilinear", "align_corners": False},
            "mask_rule": "upsampled activation >= T_k",
            "cache_dtype": settings.cache_dtype,
            "limit": settings.limit,
            "prepared_images": source.prepared_images(),
        },
        "concept_sets": concept_sets,
        "concepts": [{"name": c, "images": images_with[c]} for c in layer.concepts],
        "num_images": len(source),
        "units": units,
        "detectors": {c: counts.get(c, 0) for c in layer.concepts},
        "num_detectors": int(detector.sum()),
        "unique_concepts": len(counts),
        "stats": {"upsampled_fraction": layer.upsampled_fraction,
                  "cache_reused": result.cache_reused, "timings_s": result.timings},
    }


def _csv(rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def write_layer_results(model_dir: Path, result, layer, settings, *, concepts: Sequence[str],
                        seed: int, device: str, figures: bool = True) -> Path:
    from cxrsem.dissection.figures import summary_figure, unit_figure

    folder = model_dir / layer.layer
    record = layer_record(result, layer, settings)
    unit_rows = [["unit", "threshold", "concept", "iou", "detector"]] + [
        [u["unit"], f"{u['threshold']:.8g}", u["concept"], f"{u['iou']:.6f}", int(u["detector"])]
        for u in record["units"]]
    detector_rows = [["concept", "count"]] + sorted(
        ([c, n] for c, n in record["detectors"].items()), key=lambda row: (-row[1], row[0]))
    write_text(folder / "units.csv", _csv(unit_rows))
    write_text(folder / "detectors.csv", _csv(detector_rows))
    if figures:
        summary_figure(folder / "summary.png", record)
        for unit in record["units"]:
            if unit["detector"]:
                unit_figure(folder / "units" / f"unit-{unit['unit']:04d}.png", result, layer, unit,
                            settings)
    write_config(folder, {"dissect": {
        "model": [str(result.model_path)], "layer": [layer.layer], "concepts": list(concepts),
        "quantile": settings.quantile, "quantile_sample": settings.quantile_sample,
        "iou_threshold": settings.iou_threshold, "seg_size": settings.seg_size,
        "limit": settings.limit, "batch_size": settings.batch_size, "seed": seed}})
    write_manifest(folder, seed=seed, device=device)
    # dissection.json last: its presence means the folder is complete.
    write_json(folder / "dissection.json", record)
    return folder
