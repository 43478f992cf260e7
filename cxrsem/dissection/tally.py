"""Streaming IoU tallies of unit masks against concept masks (paper Eq. 5), exact and sparse.

For unit k and concept c, over the images x that contain c::

    IoU_kc = sum_x |M_k(x) & L_c(x)| / sum_x |M_k(x) | L_c(x)|,   M_k(x) = S'_k(x) >= T_k

with S'_k the unit's map bilinearly upsampled to the annotation size.  Per batch, only the
(image, unit) pairs whose low-resolution maximum reaches T_k are upsampled: bilinear interpolation
is a convex combination of its inputs, so it never exceeds their maximum, and every other pair has
an empty mask.  At the 0.5% quantile that skips most pairs.

The comparison is made exact by interpolating ``a - T_k`` in float64 and testing ``>= 0``: T_k is
one of the unit's own values, so neighbourhoods equal to it give exactly 0 (interpolating ``a`` in
float32 and comparing with T_k would let rounding decide those pixels).  Intersections of the remaining masks
with all concepts of their image are one matrix product per image; unions follow from mask sizes:
``|M u L| = |M| + |L| - |M n L|``.  Counts are int64 (the per-image float32 products are exact:
they are integers below 2^24).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cxrsem.statistics import StatisticMismatch, check_kind, require_compatible

# What unit_masks applies, recorded verbatim in every dissection.json (settings.interpolation and
# settings.mask_rule), so the record cannot drift from the code.
INTERPOLATION = {"mode": "bilinear", "align_corners": False}
MASK_RULE = "upsampled activation >= T_k"


def unit_masks(maps: torch.Tensor, thresholds: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """M_k = S'_k >= T_k for maps ``[P, h, w]`` with thresholds ``[P]``: bool ``[P, *size]``."""
    centred = maps.double() - thresholds.double()[:, None, None]
    upsampled = F.interpolate(centred.unsqueeze(1), size=size, **INTERPOLATION)
    return upsampled[:, 0] >= 0


@dataclass
class IoUTally:
    """Running sums for one layer: ``intersection[k, c]``, ``unit_area[k, c]`` (|M_k| on images
    containing c), ``label_area[c]`` (|L_c|) and ``images_with[c]``.

    A :class:`~cxrsem.statistics.StreamingStatistic`: ``update(activations, thresholds, labels)``,
    ``merge``, ``state_dict``/``from_state_dict``."""

    intersection: torch.Tensor
    unit_area: torch.Tensor
    label_area: torch.Tensor
    images_with: torch.Tensor
    upsampled_pairs: int = 0
    total_pairs: int = 0

    @classmethod
    def zeros(cls, units: int, concepts: int, device: torch.device | str = "cpu") -> IoUTally:
        z = lambda *shape: torch.zeros(*shape, dtype=torch.int64, device=device)  # noqa: E731
        return cls(z(units, concepts), z(units, concepts), z(concepts), z(concepts))

    KIND = "iou-tally"
    _COUNTS = ("intersection", "unit_area", "label_area", "images_with")

    def update(self, activations: torch.Tensor, thresholds: torch.Tensor,
               labels: torch.Tensor) -> None:
        """Add one batch (see :func:`update_tally`)."""
        update_tally(self, activations, thresholds, labels)

    def merge(self, other: IoUTally) -> IoUTally:
        """Add another part's sums (a :class:`~cxrsem.statistics.StreamingStatistic`): every field
        is an integer sum, so any split merges to exactly one pass's tally.  Both parts must use
        the same thresholds; that is the caller's contract (they come from one merged quantile)."""
        require_compatible(self.KIND, self._identity(), other._identity())
        for name in self._COUNTS:
            getattr(self, name).add_(getattr(other, name).to(getattr(self, name).device))
        self.upsampled_pairs += other.upsampled_pairs
        self.total_pairs += other.total_pairs
        return self

    def _identity(self) -> dict:
        return {"units": self.intersection.shape[0], "concepts": self.intersection.shape[1]}

    def state_dict(self) -> dict:
        return {"kind": self.KIND, **{name: getattr(self, name) for name in self._COUNTS},
                "upsampled_pairs": self.upsampled_pairs, "total_pairs": self.total_pairs}

    @classmethod
    def from_state_dict(cls, state) -> IoUTally:
        check_kind(cls.KIND, state)
        counts = [state[name].clone() for name in cls._COUNTS]
        units, concepts = counts[0].shape
        for name, tensor, shape in zip(cls._COUNTS, counts, [(units, concepts), (units, concepts),
                                                                (concepts,), (concepts,)],
                                       strict=True):
            if tuple(tensor.shape) != shape or tensor.dtype != torch.int64:
                raise StatisticMismatch(f"{cls.KIND} state: {name} is {tensor.dtype} "
                                        f"{tuple(tensor.shape)}, expected int64 {shape}")
        return cls(*counts, upsampled_pairs=int(state["upsampled_pairs"]),
                   total_pairs=int(state["total_pairs"]))

    def iou(self) -> np.ndarray:
        """IoU_kc as float64 ``[K, C]``; 0 where the union is empty (a concept never present)."""
        inter = self.intersection.cpu().numpy().astype(np.float64)
        union = (self.unit_area + self.label_area[None, :] - self.intersection).cpu().numpy()
        out = np.zeros_like(inter)
        np.divide(inter, union, out=out, where=union > 0)
        return out


def update_tally(tally: IoUTally, activations: torch.Tensor, thresholds: torch.Tensor,
                 labels: torch.Tensor) -> None:
    """Add one batch: ``activations [B, K, h, w]``, ``thresholds [K]`` (float64 T_k), ``labels
    [B, C, M, M]`` (bool concept masks at the annotation size)."""
    batch, _units, _, _ = activations.shape
    size = labels.shape[-2:]
    flat_labels = labels.reshape(batch, labels.shape[1], -1)
    present = flat_labels.any(dim=2)                                 # [B, C]
    tally.label_area += flat_labels.sum(dim=2).sum(dim=0)
    tally.images_with += present.sum(dim=0)
    tally.total_pairs += batch * thresholds.numel()

    maxima = activations.amax(dim=(2, 3)).double()                   # [B, K]
    # Pairs on images with no concept at all cannot contribute to any sum of Eq. 5.
    candidates = (maxima >= thresholds[None, :]) & present.any(dim=1, keepdim=True)
    image_idx, unit_idx = candidates.nonzero(as_tuple=True)
    if image_idx.numel() == 0:
        return
    tally.upsampled_pairs += image_idx.numel()

    masks = unit_masks(activations[image_idx, unit_idx], thresholds[unit_idx], size).flatten(1)
    areas = masks.sum(dim=1)                                         # [P]

    present_of_pair = present[image_idx].to(torch.int64)             # [P, C]
    tally.unit_area.index_add_(0, unit_idx, areas[:, None] * present_of_pair)

    intersections = torch.zeros_like(present_of_pair)
    float_masks = masks.to(torch.float32)
    float_labels = flat_labels.to(torch.float32)
    # One small product per image (pairs are sorted by image): no loop over units or concepts.
    bounds = torch.searchsorted(image_idx, torch.arange(batch + 1, device=image_idx.device))
    for image in torch.unique_consecutive(image_idx).tolist():
        start, stop = int(bounds[image]), int(bounds[image + 1])
        product = float_masks[start:stop] @ float_labels[image].T    # [P_b, C], exact integers
        intersections[start:stop] = product.round().to(torch.int64)
    tally.intersection.index_add_(0, unit_idx, intersections)
