"""Labels of the paper's four tasks, computed exactly from a batch's concept masks.

Zone scores follow BrixIA (section 2.1 of the paper): each lung is split into thirds of *its own*
vertical extent -- upper, middle, lower -- giving zones A/B/C (patient's right lung, image left) and
D/E/F (left lung).  A zone's score is 0 without opacity, otherwise 1-3 by the fraction ``f`` of
the zone's lung pixels covered by opacity (Consolidation or Ground Glass Opacities):

    score = 0 if no opacity pixel;  1 if f < ZONE_THRESHOLDS[0];  2 if f < ZONE_THRESHOLDS[1];  3

so a zone scores above 0 exactly when an opacity pixel falls in it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cxrsem.default_plugins.phantom.concepts import CHANNEL, OPACITIES, PATHOLOGIES
from cxrsem.tasks import ZONE_NAMES

ZONE_THRESHOLDS = (0.25, 0.5)
"""Opacity fractions separating zone scores 1|2 and 2|3.  They are about the tertiles of ``f``
over opaque zones at the default prevalences, so scores 1, 2 and 3 are about equally common."""

OUTPUTS: dict[str, list[str]] = {
    "multilabel": list(PATHOLOGIES),
    "global-score": ["Global score"],
    "zones": list(ZONE_NAMES),
    "binary": ["Unhealthy"],
}


def any_pixel(masks: Tensor) -> Tensor:
    """``masks[..., H, W].any((-2, -1))`` -- fast: bool reductions are slow in torch, so the
    bytes are read as int64 words where the size allows (8 pixels per word)."""
    flat = masks.reshape(*masks.shape[:-2], -1)
    flat = flat.view(torch.int64 if flat.shape[-1] % 8 == 0 else torch.uint8)
    return flat.ne(0).any(dim=-1)


def row_counts(mask: Tensor) -> Tensor:
    """Pixels set in each row of ``mask [B, H, W]`` -> int64 ``[B, H]``."""
    return mask.view(torch.uint8).sum(dim=-1)


def lung_row_zones(row_count: Tensor) -> Tensor:
    """Zone (0 upper, 1 middle, 2 lower) of each image row ``[B, H]`` of a lung with
    ``row_count`` pixels per row; -1 for rows without lung.  The rows split into thirds of the
    lung's own top-to-bottom extent: zone = floor(3 * (row - top) / (bottom - top + 1))."""
    has = row_count > 0
    rows = torch.arange(row_count.shape[1]).expand_as(has)
    top = torch.where(has, rows, row_count.shape[1] + 1).amin(dim=1, keepdim=True)
    bottom = torch.where(has, rows, -1).amax(dim=1, keepdim=True)
    height = (bottom - top + 1).clamp(min=1)
    zone = ((rows - top) * 3).div(height, rounding_mode="floor").clamp(0, 2)
    return torch.where(has, zone, -1)


def zones_from_rows(lung_rows: Tensor, opaque_rows: Tensor,
                    thresholds: tuple[float, float] = ZONE_THRESHOLDS) -> Tensor:
    """Scores ``[B, 3]`` of one lung's upper, middle and lower zones from its pixels per row
    ``[B, H]`` and its opaque pixels per row (counts, of any numeric dtype)."""
    lung_rows, opaque_rows = lung_rows.long(), opaque_rows.long()
    zones = lung_row_zones(lung_rows)
    scores = []
    for z in range(3):
        in_zone = zones == z
        n = (lung_rows * in_zone).sum(dim=1)
        o = (opaque_rows * in_zone).sum(dim=1)
        # Compare o / n with the thresholds in integers, so the score is exact.
        score = (o > 0).long()
        score += (o * 1000 >= n * round(thresholds[0] * 1000)) & (o > 0)
        score += (o * 1000 >= n * round(thresholds[1] * 1000)) & (o > 0)
        scores.append(score)
    return torch.stack(scores, dim=1)


def zone_scores(masks: Tensor, thresholds: tuple[float, float] = ZONE_THRESHOLDS) -> Tensor:
    """BrixIA-style scores ``[B, 6]`` (long, 0..3) from concept masks ``[B, C, H, W]``."""
    opacity = masks[:, CHANNEL[OPACITIES[0]]] | masks[:, CHANNEL[OPACITIES[1]]]
    lungs = (masks[:, CHANNEL["Right Lung"]], masks[:, CHANNEL["Left Lung"]])  # zones A-C, D-F
    return torch.cat([zones_from_rows(row_counts(lung), row_counts(lung & opacity), thresholds)
                      for lung in lungs], dim=1)


def assemble(present: Tensor, zones: Tensor) -> dict[str, Tensor]:
    """The four tasks' targets from the presence of the 8 pathologies ``[B, 8]`` (in
    :data:`PATHOLOGIES` order) and the six zone scores ``[B, 6]``."""
    multilabel = present.float()
    return {
        "multilabel": multilabel,
        "global-score": zones.sum(dim=1, keepdim=True).float(),
        "zones": zones,
        "binary": multilabel.amax(dim=1, keepdim=True),
    }


def labels_from_masks(masks: Tensor) -> dict[str, Tensor]:
    """Targets of all four tasks from concept masks ``[B, C, H, W]`` (see :data:`OUTPUTS`)."""
    present = any_pixel(masks)[:, [CHANNEL[name] for name in PATHOLOGIES]]
    return assemble(present, zone_scores(masks))
