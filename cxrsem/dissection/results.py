"""Dissection outputs on disk: one folder per model and layer, read by ``report`` and ``attribute``.

``DISSECT_DIR/<model-stem>/<layer>/``: ``dissection.json``, ``units.csv`` and ``detectors.csv``
(the file contract, its writer and reader: :mod:`cxrsem.formats.dissection`),
``imagestats.npz`` (each image's terms of the IoU sums: :mod:`cxrsem.statistics.imagestats`),
``units/unit-NNNN.png`` for every detector (Fig. 3), ``summary.png`` (Fig. 2 for one model),
``config.toml`` and ``manifest.json``.

A layer's files are one set: written into a hidden sibling folder and swapped in whole
(:func:`cxrsem.outputs.staged_folder`), listed in ``dissection.json`` (``files``), and owned by one
process while it is written (:class:`cxrsem.outputs.FolderLock`, ``.<layer>.lock`` next to it).
Folder names come from :func:`cxrsem.outputs.safe_name`: they stay inside ``--out``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from cxrsem.formats.dissection import IMAGE_STATS_FILE, layer_record, write_record, write_tables
from cxrsem.outputs import (
    FolderLock,
    folder_files,
    safe_name,
    staged_folder,
    write_config,
    write_manifest,
)


def model_folder_names(paths: Sequence[Path]) -> dict[Path, str]:
    """Folder per model: its file stem, or ``<parent>-<stem>`` when stems collide (``xrv:NAME``
    from a model source becomes ``xrv-NAME``); always one safe path component
    (:func:`~cxrsem.outputs.safe_name`: ``...pt`` gives ``__``, never ``..``), distinct per model."""
    stems = Counter(p.stem for p in paths)
    names = {p: (f"{p.parent.name}-{p.stem}" if stems[p.stem] > 1 else p.stem) for p in paths}
    folders: dict[Path, str] = {}
    used: set[str] = set()
    for p, name in names.items():
        base = safe_name(name.replace(":", "-"))
        unique, n = base, 1
        while unique.lower() in used:
            n += 1
            unique = f"{base}-{n}"
        used.add(unique.lower())
        folders[p] = unique
    return folders


def layer_folder(model_dir: Path, layer: str) -> Path:
    return Path(model_dir) / safe_name(layer)


def layer_lock(model_dir: Path, layer: str) -> FolderLock:
    """The lock of one layer's result folder (hold it from before the model pass to the swap)."""
    folder = layer_folder(model_dir, layer)
    return FolderLock(folder, what=f"dissection result {folder}")


def write_layer_results(model_dir: Path, result, layer, settings, *, concepts: Sequence[str],
                        seed: int, device: str, figures: bool = True) -> Path:
    """Write one layer's result set and swap it in as a whole (hold :func:`layer_lock`)."""
    final = layer_folder(model_dir, layer.layer)
    with staged_folder(final) as staging:
        _write_set(staging, result, layer, settings, concepts=concepts, seed=seed, device=device,
                   figures=figures)
    return final


def _write_set(folder: Path, result, layer, settings, *, concepts: Sequence[str], seed: int,
               device: str, figures: bool) -> None:
    from cxrsem.dissection.figures import summary_figure, unit_figure

    record = layer_record(result, layer, settings)
    write_tables(folder, record)
    if getattr(layer, "image_stats", None) is not None:
        layer.image_stats.save(folder / IMAGE_STATS_FILE)
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
        "limit": settings.limit, "batch_size": settings.batch_size, "seed": seed,
        "bootstrap": settings.bootstrap, "group_by": settings.group_by,
        "confidence": settings.confidence, "sensitivity": settings.sensitivity,
        "precision": getattr(settings, "precision", "fp32")}})
    # Under torchrun: {"world_size", "backend", "shards"} of the run (None on one process).
    shared = getattr(result, "distributed", None)
    write_manifest(folder, seed=seed, device=device, extra={"distributed": shared} if shared else None)
    record["files"] = folder_files(folder)  # what belongs to this result, dissection.json aside
    write_record(folder, record)  # last: its presence means the folder is complete
