"""The top-activating images of every unit (the Fig. 3 gallery), streamed and mergeable.

Each image is scored per unit by its feature map's maximum; a unit keeps its ``keep`` best images.
The order is total, so the kept images are unique: **larger score first, then lower image index**
(ties are common: a dead ReLU unit scores 0 on every image).  The single pass and
:meth:`TopImages.merge` apply the same rule, so any split of the images, merged in any order, keeps
exactly the images (and order) of one pass, as long as every part numbers images by their index
in the whole dataset.  Scores are compared as floats; NaN scores are not supported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from cxrsem.statistics import StatisticMismatch, check_kind, require_compatible

TOP_IMAGES = 4  # top-activating images kept per unit for the Fig. 3 gallery


class TopImages:
    """Per unit, the ``keep`` images with the largest scores: ``images [K, k]`` (dataset indices)
    and ``values [K, k]``, best first, ``k = min(keep, images seen)``.

    A :class:`~cxrsem.statistics.StreamingStatistic`: ``update(scores [B, K], ids [B])``.
    """

    KIND = "top-images"

    def __init__(self, units: int, keep: int = TOP_IMAGES, device: torch.device | str = "cpu") -> None:
        if keep < 1:
            raise ValueError(f"keep must be positive, got {keep}")
        self.keep = int(keep)
        self.values = torch.full((units, 0), -float("inf"), device=device)
        self.images = torch.zeros((units, 0), dtype=torch.int64, device=device)

    def update(self, scores: torch.Tensor, ids: torch.Tensor) -> None:
        """Add images ``ids [B]`` (dataset indices) with per-unit ``scores [B, K]``."""
        units = self.values.shape[0]
        if scores.dim() != 2 or scores.shape[1] != units or ids.shape != scores.shape[:1]:
            raise ValueError(f"expected scores [B, {units}] and ids [B], got "
                             f"{tuple(scores.shape)} and {tuple(ids.shape)}")
        self._add(scores.T.to(self.values.dtype),
                  ids.to(device=self.images.device, dtype=torch.int64).expand(units, -1))

    def _add(self, values: torch.Tensor, images: torch.Tensor) -> None:
        values = torch.cat([self.values, values.to(self.values.device)], dim=1)
        images = torch.cat([self.images, images.to(self.images.device)], dim=1)
        # Lexicographic (value desc, index asc): order by index, then a *stable* sort by value.
        by_index = torch.argsort(images, dim=1, stable=True)
        values, images = torch.gather(values, 1, by_index), torch.gather(images, 1, by_index)
        order = torch.sort(values, dim=1, descending=True, stable=True).indices[:, :self.keep]
        self.values, self.images = torch.gather(values, 1, order), torch.gather(images, 1, order)

    def merge(self, other: TopImages) -> TopImages:
        require_compatible(self.KIND, self._identity(), other._identity())
        self._add(other.values, other.images)
        return self

    def _identity(self) -> dict[str, Any]:
        return {"units": self.values.shape[0], "keep": self.keep}

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.KIND, "keep": self.keep, "values": self.values, "images": self.images}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> TopImages:
        check_kind(cls.KIND, state)
        values, images = state["values"], state["images"]
        if values.shape != images.shape or values.dim() != 2 or values.shape[1] > int(state["keep"]):
            raise StatisticMismatch(f"{cls.KIND} state: values {tuple(values.shape)} and images "
                                    f"{tuple(images.shape)} do not fit keep = {state['keep']}")
        top = cls(values.shape[0], int(state["keep"]), device=values.device)
        top.values, top.images = values.clone(), images.clone().to(torch.int64)
        return top
