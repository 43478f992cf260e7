"""The paper's Fig. 5: an X-ray and, for each of its top units, the unit's attribution map.

Each map is ``s_k`` (Eq. 6, one value per spatial position of unit ``k``) divided by its largest
magnitude -- the paper's "divided by the maximum s_k^i" when a map is non-negative, and sign
preserving when it is not -- upsampled bilinearly to the input size and overlaid on the image
(red: positive contribution, blue: negative; transparency follows the magnitude).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cxrsem.outputs import write_bytes
from cxrsem.textsafe import mpl_literal


def normalized_map(s: np.ndarray | torch.Tensor, size: int) -> np.ndarray:
    """``s_k / max |s_k|`` upsampled (bilinear) to ``size x size``; values in ``[-1, 1]``."""
    t = torch.as_tensor(np.asarray(s), dtype=torch.float64)
    peak = float(t.abs().max()) if t.numel() else 0.0
    t = t / peak if peak > 0 else torch.zeros_like(t)
    up = F.interpolate(t[None, None], size=(size, size), mode="bilinear", align_corners=False)
    return up[0, 0].clamp(-1.0, 1.0).numpy()


def render_figure(path: str | Path, image: np.ndarray, maps: Sequence[np.ndarray],
                  titles: Sequence[str], image_title: str, dpi: int = 100) -> Path:
    """Write the figure (PNG, atomically): ``image`` ``[S, S]`` in ``[0, 1]`` and one overlay per
    map of ``maps`` (each ``[h, w]`` attributions of one unit)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    size = int(image.shape[-1])
    panels = 1 + len(maps)
    fig = Figure(figsize=(2.6 * panels, 3.0), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    axes[0].imshow(image, cmap="gray", vmin=0.0, vmax=1.0)
    axes[0].set_title(mpl_literal(image_title), fontsize=8)
    for ax, s, title in zip(axes[1:], maps, titles, strict=True):
        heat = normalized_map(s, size)
        ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0)
        ax.imshow(heat, cmap="RdBu_r", vmin=-1.0, vmax=1.0,
                  alpha=np.clip(np.abs(heat) * 0.8, 0.0, 1.0))
        ax.set_title(mpl_literal(title), fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    buffer = io.BytesIO()
    # Fast zlib level: these are previews, and encoding dominated the render time.
    fig.savefig(buffer, format="png", pil_kwargs={"compress_level": 1})
    return write_bytes(path, buffer.getvalue())


def unit_title(entry: dict[str, Any]) -> str:
    """``unit 12 - consolidation`` / ``IoU 0.081 - 23.4% of total`` for one top-k entry."""
    share = f"{100 * entry['share']:.1f}% of total contribution"
    if not entry.get("dissected"):
        return f"unit {entry['unit']}\n{share}"
    if entry.get("labelled"):
        name = f"{entry['concept']} (IoU {entry['iou']:.3f})"
    elif entry.get("iou") is not None and entry.get("best_concept"):
        name = f"unlabelled (IoU {entry['iou']:.3f})"
    else:
        name = "unlabelled"
    return f"unit {entry['unit']}: {name}\n{share}"
