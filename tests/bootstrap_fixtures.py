"""Random unit and concept masks, their per-image statistics built naively, and Eq. 5 by hand:
the oracle of the bootstrap and compare tests."""

from __future__ import annotations

import numpy as np

from cxrsem.statistics.imagestats import ImageStats


def masks(seed: int, n: int = 30, k: int = 5, c: int = 3, size: int = 8, p_concept: float = 0.5):
    """Random unit masks ``[N, K, s, s]`` and concept masks ``[N, C, s, s]`` (a concept absent from
    an image has an empty mask; some images hold no concept at all)."""
    rng = np.random.default_rng(seed)
    units = rng.random((n, k, size, size)) < rng.uniform(0.02, 0.3, size=(1, k, 1, 1))
    labels = rng.random((n, c, size, size)) < 0.2
    labels &= (rng.random((n, c)) < p_concept)[:, :, None, None]
    return units, labels


def stats_of(units: np.ndarray, labels: np.ndarray, groups=None) -> ImageStats:
    """The sparse per-image terms, built naively (every pair, every concept)."""
    n, k = units.shape[:2]
    c = labels.shape[1]
    present = labels.reshape(n, c, -1).any(axis=2)
    mask = {"image": [], "unit": [], "area": []}
    inter = {"image": [], "unit": [], "concept": [], "value": []}
    for x in range(n):
        if not present[x].any():
            continue
        for u in range(k):
            area = int(units[x, u].sum())
            if area:
                mask["image"].append(x), mask["unit"].append(u), mask["area"].append(area)
            for j in range(c):
                value = int((units[x, u] & labels[x, j]).sum())
                if value:
                    for key, v in zip(("image", "unit", "concept", "value"), (x, u, j, value),
                                      strict=True):
                        inter[key].append(v)
    return ImageStats(num_units=k, concepts=[f"c{j}" for j in range(c)],
                      label_area=labels.reshape(n, c, -1).sum(axis=2),
                      mask_image=mask["image"], mask_unit=mask["unit"], mask_area=mask["area"],
                      inter_image=inter["image"], inter_unit=inter["unit"],
                      inter_concept=inter["concept"], inter_value=inter["value"], groups=groups)


def naive_iou(units: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Eq. 5 with image x counted weights[x] times: sums over the images containing c."""
    n, k = units.shape[:2]
    c = labels.shape[1]
    out = np.zeros((k, c))
    for u in range(k):
        for j in range(c):
            inter = union = 0
            for x in range(n):
                if labels[x, j].any():
                    inter += weights[x] * (units[x, u] & labels[x, j]).sum()
                    union += weights[x] * (units[x, u] | labels[x, j]).sum()
            out[u, j] = inter / union if union else 0.0
    return out
