"""Bootstrap intervals for dissection results, from per-image sufficient statistics alone.

A resample draws the dataset's *groups* (patients; each image its own group when none are known)
with replacement, as many as there are; each image then counts as often as its group was drawn
(weights ``w [B, N]``).  Every IoU sum of Eq. 5 is linear in the images, so for all ``B`` resamples
at once::

    intersection_b = w @ S_inter      unit_area_b = w @ S_unit      label_area_b = w @ L

with ``S_inter``, ``S_unit`` the sparse ``[N, K*C]`` matrices of the per-image terms
(:class:`~cxrsem.statistics.imagestats.ImageStats`) and ``L`` the ``[N, C]`` label areas: one
sparse product per quantity, no loop over resamples or images, no model pass.  Thresholds T_k are
those of the full dissection set (they are not re-estimated per resample).

From each resample's IoUs follow, exactly as for the point estimate, each unit's best concept (ties:
the first concept) and its IoU, whether the unit is a detector (:func:`~cxrsem.formats.dissection.
is_detector`), detector counts per concept, total detectors and unique concepts.  Intervals are
percentile intervals with bounds that are observed resample values (``numpy.quantile`` methods
``lower`` / ``higher``: never narrower than the interpolated ones).

Comparisons: a **paired** bootstrap uses the same weights for both models (same images), so the
difference of their counts is resampled jointly; an **unpaired** one draws independent weights for
each.  The two-sided p-value of "no difference" is ``min(1, 2 * min(P(d <= 0), P(d >= 0)))`` over
the resampled differences ``d`` (a model compared with itself gets ``p = 1``).  Several comparisons
of one quantity are Holm-corrected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cxrsem.errors import UsageError
from cxrsem.formats.dissection import DEFAULT_IOU_THRESHOLD, is_detector
from cxrsem.statistics.imagestats import ImageStats

DEFAULT_CONFIDENCE = 0.95
CHUNK = 64  # resamples per sparse product: bounds memory at CHUNK x K x C float64 values


def resample_weights(groups: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """``[resamples, N]`` int64: how often each image is drawn when ``G`` groups are drawn with
    replacement (``groups[x]``: the group of image ``x``, ``0..G-1``)."""
    if resamples < 1:
        raise UsageError(f"--bootstrap must be at least 1 resample, got {resamples}")
    groups = np.asarray(groups, dtype=np.int64)
    count = int(groups.max(initial=-1)) + 1
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, count, size=(resamples, count))
    offsets = (draws + np.arange(resamples)[:, None] * count).ravel()
    per_group = np.bincount(offsets, minlength=resamples * count).reshape(resamples, count)
    return per_group[:, groups]


def _sparse(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, shape: tuple[int, int]
            ) -> torch.Tensor:
    index = torch.from_numpy(np.stack([rows, cols]))
    return torch.sparse_coo_tensor(index, torch.from_numpy(values.astype(np.float64)), shape,
                                   check_invariants=True).coalesce()


@dataclass
class _Terms:
    """The per-image terms as sparse ``[N, K*C]`` matrices (transposed for ``S^T @ w^T``)."""

    inter_t: torch.Tensor   # [K*C, N]
    unit_t: torch.Tensor    # [K*C, N]
    label: torch.Tensor     # [N, C]
    units: int
    concepts: int

    @classmethod
    def of(cls, stats: ImageStats) -> _Terms:
        n, k, c = stats.num_images, stats.num_units, stats.num_concepts
        inter = _sparse(stats.inter_unit * c + stats.inter_concept, stats.inter_image,
                        stats.inter_value, (k * c, n))
        pair, concept = np.nonzero(stats.present[stats.mask_image])  # each pair x concepts present
        unit = _sparse(stats.mask_unit[pair] * c + concept, stats.mask_image[pair],
                       stats.mask_area[pair], (k * c, n))
        return cls(inter, unit, torch.from_numpy(stats.label_area.astype(np.float64)), k, c)

    def ious(self, weights: np.ndarray) -> np.ndarray:
        """``[B, K, C]`` IoUs for weights ``[B, N]`` (0 where the union is empty)."""
        w = torch.from_numpy(np.ascontiguousarray(weights, dtype=np.float64))
        inter = torch.sparse.mm(self.inter_t, w.T).T.reshape(-1, self.units, self.concepts)
        unit = torch.sparse.mm(self.unit_t, w.T).T.reshape(-1, self.units, self.concepts)
        label = (w @ self.label)[:, None, :]
        union = unit + label - inter
        out = torch.zeros_like(inter)
        positive = union > 0
        out[positive] = inter[positive] / union[positive]
        return out.numpy()


@dataclass
class Resampled:
    """What each resample says about one layer: ``best_iou``/``best_concept`` ``[B, K]``,
    ``detector`` ``[B, K]`` and ``counts`` ``[B, C]`` (detectors per concept)."""

    concepts: list[str]
    best_iou: np.ndarray
    best_concept: np.ndarray
    detector: np.ndarray
    counts: np.ndarray

    @property
    def total(self) -> np.ndarray:
        return self.counts.sum(axis=1)

    def rows(self, index: slice) -> Resampled:
        """The resamples ``index`` only."""
        return Resampled(self.concepts, self.best_iou[index], self.best_concept[index],
                         self.detector[index], self.counts[index])

    @property
    def unique(self) -> np.ndarray:
        return (self.counts > 0).sum(axis=1)


def resample(stats: ImageStats, weights: np.ndarray,
             threshold: float = DEFAULT_IOU_THRESHOLD) -> Resampled:
    """Every resample's best concepts, detectors and counts (``weights`` from
    :func:`resample_weights`; an all-ones row reproduces the point estimate exactly)."""
    terms = _Terms.of(stats)
    weights = np.atleast_2d(weights)
    parts: dict[str, list[np.ndarray]] = {"iou": [], "concept": [], "counts": []}
    for start in range(0, weights.shape[0], CHUNK):
        ious = terms.ious(weights[start:start + CHUNK])
        if stats.num_concepts:
            best = ious.argmax(axis=2)
            parts["iou"].append(np.take_along_axis(ious, best[..., None], axis=2)[..., 0])
        else:
            best = np.zeros(ious.shape[:2], dtype=np.int64)
            parts["iou"].append(np.zeros(ious.shape[:2]))
        parts["concept"].append(best)
    best_iou = np.concatenate(parts["iou"])
    best_concept = np.concatenate(parts["concept"])
    detector = is_detector(best_iou, threshold)
    counts = np.zeros((weights.shape[0], stats.num_concepts), dtype=np.int64)
    rows, units = np.nonzero(detector)
    np.add.at(counts, (rows, best_concept[rows, units]), 1)
    return Resampled(list(stats.concepts), best_iou, best_concept, detector, counts)


def estimate_and_resample(stats: ImageStats, weights: np.ndarray,
                          threshold: float = DEFAULT_IOU_THRESHOLD) -> tuple[Resampled, Resampled]:
    """``(point estimate, resamples)`` from one build of the sparse terms: the full set (every
    image once) is resampled as one more row, first."""
    ones = np.ones((1, stats.num_images), dtype=np.int64)
    both = resample(stats, np.vstack([ones, np.atleast_2d(weights)]), threshold)
    return both.rows(slice(0, 1)), both.rows(slice(1, None))


def interval(samples: np.ndarray, confidence: float = DEFAULT_CONFIDENCE, axis: int = 0
             ) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval ``(low, high)`` of ``samples`` along ``axis``; bounds are observed
    values (``lower`` / ``higher`` quantiles)."""
    if not 0.0 < confidence < 1.0:
        raise UsageError(f"--confidence must be in (0, 1), got {confidence}")
    tail = (1.0 - confidence) / 2
    return (np.quantile(samples, tail, axis=axis, method="lower"),
            np.quantile(samples, 1.0 - tail, axis=axis, method="higher"))


def p_value(differences: np.ndarray) -> float:
    """Two-sided bootstrap p-value of "no difference": ``min(1, 2 min(P(d<=0), P(d>=0)))``."""
    d = np.asarray(differences)
    return float(min(1.0, 2.0 * min(np.mean(d <= 0), np.mean(d >= 0))))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment (family-wise error control) of ``p_values``, in input order."""
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    m = len(p)
    adjusted = np.empty(m)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted.tolist()


def same_images(a: ImageStats, b: ImageStats) -> str | None:
    """Why two layers' statistics are not of the same images (``None`` when they are): a paired
    comparison needs the same images in the same order, with the same concepts and groups."""
    if a.num_images != b.num_images:
        return f"{a.num_images} vs {b.num_images} images"
    if a.concepts != b.concepts:
        return "other concepts"
    if not np.array_equal(a.label_area, b.label_area):
        return "other annotations (images or their order differ)"
    if not np.array_equal(a.groups, b.groups):
        return "other patient groups"
    return None


def summarize(stats: ImageStats, *, resamples: int, seed: int = 0, group_by: str = "patient",
              confidence: float = DEFAULT_CONFIDENCE,
              threshold: float = DEFAULT_IOU_THRESHOLD) -> tuple[dict, list[dict]]:
    """The ``bootstrap`` block of ``dissection.json`` and one ``{"iou_interval", "p_detector"}``
    per unit: percentile intervals of every count and of each unit's best-concept IoU (the
    resample's own best concept), and how often each unit is a detector over the resamples."""
    if group_by not in ("patient", "image"):
        raise UsageError(f"--group-by must be patient or image, got {group_by!r}")
    groups = stats.groups if group_by == "patient" else np.arange(stats.num_images)
    point, samples = estimate_and_resample(stats, resample_weights(groups, resamples, seed),
                                           threshold)

    def estimate(value: float, values: np.ndarray) -> dict[str, float]:
        low, high = interval(values.astype(np.float64), confidence)
        return {"count": float(value), "low": float(low), "high": float(high)}

    low, high = interval(samples.best_iou, confidence)
    units = [{"iou_interval": [float(lo), float(hi)], "p_detector": float(p)}
             for lo, hi, p in zip(low, high, samples.detector.mean(axis=0), strict=True)]
    block = {
        "resamples": int(resamples), "seed": int(seed), "group_by": group_by,
        "groups": int(len(np.unique(groups))), "images": stats.num_images,
        "confidence": confidence,
        "method": "percentile bootstrap over groups drawn with replacement; thresholds T_k fixed "
                  "at the full set's; bounds are observed resample values",
        "detectors": {c: estimate(point.counts[0, j], samples.counts[:, j])
                      for j, c in enumerate(stats.concepts)},
        "num_detectors": estimate(point.total[0], samples.total),
        "unique_concepts": estimate(point.unique[0], samples.unique),
    }
    return block, units
