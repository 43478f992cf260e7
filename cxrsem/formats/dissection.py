"""The dissection result (``dissection.json``, schema ``cxrsem-dissection/1``).

The one home of the detector rule and of the defaults every CLI option and library call refers to.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SCHEMA = "cxrsem-dissection/1"
SCHEMA_PREFIX = "cxrsem-dissection/"
SCHEMAS_READ = (SCHEMA,)

UNLABELLED = "unlabelled"
DEFAULT_QUANTILE = 0.005       # P(f_k > T_k), paper Sec. 2.2
DEFAULT_IOU_THRESHOLD = 0.04   # a unit is a detector of its best concept above this IoU


def is_detector(iou: Any, threshold: float = DEFAULT_IOU_THRESHOLD) -> Any:
    """A unit detects its best concept when that concept's IoU exceeds ``threshold`` (Sec. 2.2).

    Works on one IoU (returns a bool) and on arrays (returns a bool array)."""
    if isinstance(iou, np.ndarray):
        return iou > threshold
    return iou is not None and float(iou) > threshold
