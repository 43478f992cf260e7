"""Dissection figures with matplotlib: detectors per concept (paper Fig. 2 for one model) and a
unit's top-activating images with its mask and the concept annotation (Fig. 3)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from cxrsem.dissection.tally import unit_masks as unit_masks_at  # noqa: E402
from cxrsem.outputs import write_bytes  # noqa: E402
from cxrsem.textsafe import mpl_literal  # noqa: E402


def save_figure(fig, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return write_bytes(path, buffer.getvalue())


def summary_figure(path: Path, record: dict[str, Any]) -> Path:
    items = sorted(((c, n) for c, n in record["detectors"].items()), key=lambda x: (-x[1], x[0]))
    names = [c for c, _ in items]
    counts = [n for _, n in items]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(names) + 2), 3.6))
    bars = ax.bar(range(len(names)), counts, color="#3b7dd8")
    ax.bar_label(bars, fontsize=8)
    ax.set_xticks(range(len(names)), [mpl_literal(n) for n in names], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("detector units")
    ax.set_title(f"{record['num_detectors']} detectors ({record['unique_concepts']} concepts) in "
                 f"{mpl_literal(record['layer'])} — IoU > {record['settings']['iou_threshold']}", fontsize=9)
    ax.spines[["top", "right"]].set_visible(False)
    return save_figure(fig, path)


def unit_masks(result, layer, unit: int, indices: list[int], image_size: int) -> np.ndarray:
    """The unit's binary masks M_k at image resolution for display (same rule as the tally)."""
    store = result.cache.layer_store(layer.layer, layer.feature_shape, result.cache_dtype)
    maps = torch.stack([torch.from_numpy(store.read(i)[unit].astype(np.float64)) for i in indices])
    thresholds = torch.full((len(indices),), float(layer.thresholds[unit]), dtype=torch.float64)
    return unit_masks_at(maps, thresholds, (image_size, image_size)).numpy()


def unit_figure(path: Path, result, layer, unit: dict[str, Any], settings) -> Path:
    indices = [i for i in unit["top_images"]]
    batch = result.source.batch(indices)
    images = batch["image"][:, 0].numpy()
    concept_index = layer.concepts.index(unit["concept"])
    size = images.shape[-1]
    labels = F.interpolate(batch["masks"][:, concept_index:concept_index + 1].float(),
                           size=(size, size), mode="nearest")[:, 0].numpy() > 0
    masks = unit_masks(result, layer, unit["unit"], indices, size)
    fig, axes = plt.subplots(1, len(indices), figsize=(2.3 * len(indices), 2.6))
    axes = np.atleast_1d(axes)
    for ax, image, mask, label in zip(axes, images, masks, labels, strict=True):
        ax.imshow(image, cmap="gray", vmin=0, vmax=1)
        overlay = np.zeros((*mask.shape, 4))
        overlay[mask] = (1.0, 0.25, 0.1, 0.45)
        ax.imshow(overlay)
        if label.any():
            ax.contour(label, levels=[0.5], colors=["#2fd16b"], linewidths=1.0)
        ax.set_axis_off()
    fig.suptitle(f"unit {unit['unit']} — {mpl_literal(unit['concept'])} (IoU {unit['iou']:.3f}); "
                 f"red: unit mask, green: annotation", fontsize=8)
    return save_figure(fig, path)
