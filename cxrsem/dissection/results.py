"""Dissection outputs on disk: one folder per model and layer, read by ``report`` and ``attribute``.

``DISSECT_DIR/<model-stem>/<layer>/``: ``dissection.json``, ``units.csv`` and ``detectors.csv``
(the file contract, its writer and reader: :mod:`cxrsem.formats.dissection`),
``units/unit-NNNN.png`` for every detector (Fig. 3), ``summary.png`` (Fig. 2 for one model),
``config.toml`` and ``manifest.json``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from cxrsem.formats.dissection import layer_record, write_record, write_tables
from cxrsem.outputs import write_config, write_manifest


def model_folder_names(paths: Sequence[Path]) -> dict[Path, str]:
    """Folder per model: its file stem, or ``<parent>-<stem>`` when stems collide (``xrv:NAME``
    from a model source becomes ``xrv-NAME``)."""
    stems = Counter(p.stem for p in paths)
    names = {p: (f"{p.parent.name}-{p.stem}" if stems[p.stem] > 1 else p.stem) for p in paths}
    return {p: name.replace(":", "-") for p, name in names.items()}


def write_layer_results(model_dir: Path, result, layer, settings, *, concepts: Sequence[str],
                        seed: int, device: str, figures: bool = True) -> Path:
    from cxrsem.dissection.figures import summary_figure, unit_figure

    folder = model_dir / layer.layer
    record = layer_record(result, layer, settings)
    write_tables(folder, record)
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
    write_record(folder, record)  # last: its presence means the folder is complete
    return folder
