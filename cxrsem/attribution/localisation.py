"""Localisation of a semantic unit's attribution map against the annotation of its concept.

cheXlocalize (Saporta et al. 2022) asks whether a pixel saliency map falls on the annotated
lesion.  Here the same question is asked of a *semantic unit*: for an image that carries masks
(or boxes) of concepts, the top-ranked unit the dissection labels with a concept present in the
image, and that unit's attribution map ``s_k`` (``[h, w]`` at the layer), upsampled as the
dissection upsamples unit maps (:data:`cxrsem.dissection.tally.INTERPOLATION`: bilinear,
``align_corners=False``) to the mask's size.  If the unit is a detector of the concept, its map
should fall on that concept's mask in the images the method explains with it.

Two measures of one upsampled map ``S`` against one bool mask ``L``:

* **pointing game**: 1 if the pixel where ``S`` is largest lies inside ``L``, else 0.  Where the
  maximum is reached at several pixels (a flat map, a saturated plateau), the share of those
  pixels inside ``L`` -- the expected hit under a uniformly random tie-break -- so no raster
  order decides (a constant map scores the mask's area fraction, chance).
* **relevance mass** (Arras et al. 2022): ``sum_{i in L} max(S_i, 0) / sum_i max(S_i, 0)``, the
  share of the map's positive part that lies inside the mask; 0 when the map has no positive part.

Both are unchanged by a positive rescaling of ``S``, so the figure's normalisation ``s / max |s|``
(Fig. 5, :func:`cxrsem.attribution.render.normalized_map`) need not be applied first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cxrsem.dissection.tally import INTERPOLATION

__all__ = ["localise", "pointing_game", "relevance_mass", "upsample_map"]


def upsample_map(unit_map: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """``s_k`` (``[h, w]``, or ``[P, h, w]``) bilinearly upsampled (``INTERPOLATION``, in float64)
    to ``size`` (the annotation's resolution): ``[*size]`` (or ``[P, *size]``)."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    maps = unit_map.double()
    single = maps.dim() == 2
    if single:
        maps = maps[None]
    if maps.dim() != 3:
        raise ValueError(f"expected a map [h, w] or maps [P, h, w], got {tuple(unit_map.shape)}")
    up = F.interpolate(maps[:, None], size=size, **INTERPOLATION)[:, 0]
    return up[0] if single else up


def _check(upsampled: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if upsampled.shape != mask.shape:
        raise ValueError(f"map {tuple(upsampled.shape)} and mask {tuple(mask.shape)} differ in "
                         f"size; upsample the map to the mask first (upsample_map)")
    return mask.to(device=upsampled.device, dtype=torch.bool)


def pointing_game(upsampled: torch.Tensor, mask: torch.Tensor) -> float:
    """1.0 if the argmax pixel of ``upsampled`` lies inside the bool ``mask`` (same shape), else
    0.0; with several pixels at the maximum, the share of them inside ``mask``."""
    inside = _check(upsampled, mask)
    peak = upsampled == upsampled.max()
    return float((peak & inside).sum()) / float(peak.sum())


def relevance_mass(upsampled: torch.Tensor, mask: torch.Tensor) -> float:
    """``sum over mask of max(S, 0) / sum over the image of max(S, 0)``; 0.0 when ``S`` has no
    positive part."""
    inside = _check(upsampled, mask)
    positive = upsampled.double().clamp(min=0)
    total = float(positive.sum())
    return float(positive[inside].sum()) / total if total > 0 else 0.0


def localise(unit_map: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """``(pointing game, relevance mass)`` of the layer-resolution map ``s_k`` (``[h, w]``) against
    the bool ``mask`` (``[M, M']``), the map upsampled to the mask's size first."""
    upsampled = upsample_map(unit_map, tuple(mask.shape[-2:]))
    return pointing_game(upsampled, mask), relevance_mass(upsampled, mask)
