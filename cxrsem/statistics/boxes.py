"""How well units can fit box annotations: the inside fraction and the max reachable IoU.

A box set (``ConceptSetInfo.annotation == "boxes"``, e.g. ``nih-bbox``) marks each finding by a
filled bounding box.  The box also covers background, so a unit that fires exactly on the lesion
-- a perfect detector -- still gets an IoU well below 1 against its box, and the 0.04 detector
threshold of Eq. 5 means something else for a box set than for a set of outlines.  Two figures
per unit ``k`` and concept ``c`` put box-set IoUs on the scale of mask sets.  Both sum, like
Eq. 5, over the images ``x`` that contain ``c``; ``M_k(x)`` is the unit's binary mask (activation
above ``T_k``), ``L_c(x)`` the concept's boxes, ``A_x = |M_k(x)|`` and ``L_x = |L_c(x)|``::

    inside[k, c]  = sum_x |M_k(x) & L_c(x)| / sum_x A_x
    max_iou[k, c] = sum_x min(A_x, L_x) / sum_x max(A_x, L_x)

``inside`` is the share of the unit's above-threshold area that falls inside the boxes (1 for a
unit that never fires outside them, however small its mask).  ``max_iou`` is the IoU the unit
could reach with masks of the sizes it has: a mask of area ``A_x`` overlaps at most
``min(A_x, L_x)`` pixels of the boxes and its union with them is at least ``max(A_x, L_x)``
(an image where the unit is silent adds 0 and ``L_x``).  The ratio ``IoU / max_iou`` then says
how much of the reachable overlap the unit achieves.  Either figure is 0 where its denominator is
(a unit that never fires on images with ``c``; ``c`` in no image).

Both come from the per-image sufficient statistics (:class:`~cxrsem.statistics.imagestats.
ImageStats`) alone, with no model pass; like :meth:`ImageStats.tally`, images can be counted with
integer weights (a bootstrap resample).  Nothing here depends on the masks actually being boxes:
the figures are defined for any concept, and are most telling for box sets.
"""

from __future__ import annotations

import numpy as np

from cxrsem.errors import UsageError
from cxrsem.statistics.imagestats import ImageStats

__all__ = ["box_fit", "box_fit_all"]


def _weights(stats: ImageStats, weights: np.ndarray | None) -> np.ndarray:
    if weights is None:
        return np.ones(stats.num_images, dtype=np.int64)
    weights = np.asarray(weights, dtype=np.int64)
    if weights.shape != (stats.num_images,):
        raise UsageError(f"box_fit: weights must have shape ({stats.num_images},), got {weights.shape}")
    return weights


def _concepts(stats: ImageStats, concept: np.ndarray) -> np.ndarray:
    concept = np.asarray(concept)
    if concept.shape != (stats.num_units,) or (concept.size and not np.issubdtype(concept.dtype,
                                                                                   np.integer)):
        raise UsageError(f"box_fit: expected one integer concept index per unit "
                         f"({stats.num_units}), got {concept.dtype} {concept.shape}")
    if concept.size and (concept.min() < 0 or concept.max() >= stats.num_concepts):
        raise UsageError(f"box_fit: concept indices must lie in 0..{stats.num_concepts - 1}")
    return concept.astype(np.int64)


def _per_unit(stats: ImageStats, values: np.ndarray) -> np.ndarray:
    """Sum ``values`` (one per mask entry) per unit, exactly: the terms are integers."""
    out = np.zeros(stats.num_units, dtype=np.int64)
    np.add.at(out, stats.mask_unit, values)
    return out


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    out = np.zeros(numerator.shape, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def box_fit(stats: ImageStats, concept: np.ndarray,
            weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(inside [K], max_iou [K])``: each unit's inside fraction and max reachable IoU for
    ``concept[k]`` (one concept index per unit, e.g. its best concept), summed over the images
    containing that concept, image ``x`` counted ``weights[x]`` times (see the module docstring
    for the definitions; Eq. 5's sums)."""
    concept = _concepts(stats, concept)
    w = _weights(stats, weights)
    # Every mask entry (image x, unit k, A = |M_k(x)|) meets its own unit's concept's label area.
    label = stats.label_area[stats.mask_image, concept[stats.mask_unit]]
    area, ew = stats.mask_area, w[stats.mask_image]
    present = label > 0
    unit_area = _per_unit(stats, np.where(present, area, 0) * ew)
    overlap = _per_unit(stats, np.minimum(area, label) * ew)  # label 0 (c absent) adds 0
    # sum_x max(A, L) = sum_x L + sum_x max(A - L, 0): silent images add their L through the first.
    excess = _per_unit(stats, np.where(present, np.maximum(area - label, 0), 0) * ew)
    label_total = (stats.label_area * w[:, None]).sum(axis=0)
    union = label_total[concept] + excess
    own = stats.inter_concept == concept[stats.inter_unit]
    inside = np.zeros(stats.num_units, dtype=np.int64)
    np.add.at(inside, stats.inter_unit[own], (stats.inter_value * w[stats.inter_image])[own])
    return _ratio(inside, unit_area), _ratio(overlap, union)


def box_fit_all(stats: ImageStats,
                weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(inside [K, C], max_iou [K, C])``: :func:`box_fit` for every concept at once."""
    k, c = stats.num_units, stats.num_concepts
    inside, max_iou = np.zeros((k, c)), np.zeros((k, c))
    for j in range(c):
        inside[:, j], max_iou[:, j] = box_fit(stats, np.full(k, j, dtype=np.int64), weights)
    return inside, max_iou
