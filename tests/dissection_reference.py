"""A naive, in-memory NumPy implementation of Network Dissection (paper Eq. 5), as a test oracle.

Everything in RAM, ``np.quantile``, explicit loops over images, units and concepts, and a
hand-written bilinear upsampling (PyTorch's ``align_corners=False`` convention), in float64.
"""

from __future__ import annotations

import numpy as np


def bilinear_upsample(maps: np.ndarray, size: int) -> np.ndarray:
    """``maps [K, h, w]`` -> ``[K, size, size]``; source coordinate (dst + 0.5) * in/out - 0.5."""
    def axis_weights(n_in: int, n_out: int):
        src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        src = np.maximum(src, 0.0)
        i0 = np.floor(src).astype(int)
        i0 = np.minimum(i0, n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        frac = src - i0
        return i0, i1, frac

    _, h, w = maps.shape
    y0, y1, fy = axis_weights(h, size)
    x0, x1, fx = axis_weights(w, size)
    top = maps[:, y0][:, :, x0] * (1 - fx) + maps[:, y0][:, :, x1] * fx
    bottom = maps[:, y1][:, :, x0] * (1 - fx) + maps[:, y1][:, :, x1] * fx
    return top * (1 - fy)[None, :, None] + bottom * fy[None, :, None]


def naive_dissection(activations: np.ndarray, masks: np.ndarray, quantile: float,
                     quantile_sample: int = 0):
    """``activations [N, K, h, w]``, ``masks [N, C, M, M]`` -> (thresholds [K], iou [K, C])."""
    n_images, units = activations.shape[:2]
    sample = activations[: quantile_sample or n_images]
    values = sample.transpose(1, 0, 2, 3).reshape(units, -1).astype(np.float64)
    thresholds = np.quantile(values, 1 - quantile, axis=1, method="inverted_cdf")
    concepts, size = masks.shape[1], masks.shape[2]
    inter = np.zeros((units, concepts))
    union = np.zeros((units, concepts))
    for n in range(n_images):
        # Interpolating (a - T) and testing >= 0 is the same rule as up(a) >= T, without letting
        # rounding decide pixels whose neighbourhood equals T (T is one of the unit's values).
        centred = activations[n].astype(np.float64) - thresholds[:, None, None]
        up = bilinear_upsample(centred, size)
        for c in range(concepts):
            label = masks[n, c]
            if not label.any():
                continue  # Eq. 5 sums over the images that contain concept c
            for k in range(units):
                unit_mask = up[k] >= 0
                inter[k, c] += np.logical_and(unit_mask, label).sum()
                union[k, c] += np.logical_or(unit_mask, label).sum()
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return thresholds, iou
