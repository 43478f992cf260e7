"""How much a dissection's conclusion depends on its two magic numbers (paper Sec. 2.2): detector
counts over a grid of activation quantiles q (P(f_k > T_k) = q) and IoU thresholds.

One read of the activation cache serves the whole grid: a single exact top-m stream kept for the
largest q holds the largest values every smaller q needs
(:meth:`~cxrsem.dissection.quantile.StreamingTopQuantile.threshold_at`), and one IoU tally per q is
updated from the same batches; the IoU thresholds then only re-read each q's IoU matrix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cxrsem.formats.dissection import is_detector

QUANTILES = (0.001, 0.0025, 0.005, 0.01, 0.02)
IOU_THRESHOLDS = (0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.10)


def grid(ious: Mapping[float, np.ndarray], iou_thresholds: Sequence[float] = IOU_THRESHOLDS
         ) -> dict[str, Any]:
    """The ``sensitivity`` block of ``dissection.json`` from each quantile's IoU matrix ``[K, C]``:
    ``detectors[i][j]`` and ``unique_concepts[i][j]`` at ``quantiles[i]`` and
    ``iou_thresholds[j]`` (a unit detects its best concept; ties: the first concept)."""
    quantiles = sorted(ious)
    detectors, unique = [], []
    for q in quantiles:
        iou = ious[q]
        best = iou.max(axis=1) if iou.size else np.zeros(iou.shape[0])
        concept = iou.argmax(axis=1) if iou.size else np.zeros(iou.shape[0], dtype=int)
        detectors.append([int(is_detector(best, t).sum()) for t in iou_thresholds])
        unique.append([len(set(concept[is_detector(best, t)].tolist())) for t in iou_thresholds])
    return {"quantiles": quantiles, "iou_thresholds": list(iou_thresholds),
            "detectors": detectors, "unique_concepts": unique,
            "method": "one exact top-m stream for the largest q; one IoU tally per q, same cache read"}
