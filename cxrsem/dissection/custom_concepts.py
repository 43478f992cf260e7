"""Your own annotations as a concept set: any ``torch.utils.data.Dataset`` of (image, masks).

:func:`cxrsem.dissect` takes registered concept-set names, concept-set objects (anything with
``concepts`` and ``__getitem__`` returning ``{"image", "masks"}``, as
:class:`cxrsem.components.ConceptSetInfo` describes), or a plain dataset whose items are
``(image, masks)`` tuples (or dicts with those keys) together with ``concept_names``.
:class:`ConceptDataset` brings such items to what dissection reads: the image grey ``[1, S, S]``
in ``[0, 1]`` at the model's input size (bilinear, antialiased; several channels are averaged,
an ``H x W`` image gets its channel), the masks boolean ``[C, M, M]`` at the seg size (nearest
neighbour, so a mask stays a set of annotated pixels).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from cxrsem.errors import DataError, UsageError


class ConceptDataset(torch.utils.data.Dataset):
    """``dataset`` as a concept set with concepts ``concepts`` (one mask channel each)."""

    def __init__(self, dataset: Any, concepts: Sequence[str], *, image_size: int, mask_size: int,
                 name: str = "custom", annotation: str = "masks") -> None:
        concepts = [str(c) for c in concepts]
        if not concepts or len(set(concepts)) != len(concepts):
            raise UsageError(f"concept_names must be distinct and non-empty, got {concepts}")
        self.dataset, self.concepts = dataset, concepts
        self.image_size, self.mask_size = int(image_size), int(mask_size)
        self.name, self.annotation = name, annotation
        # Part of the activation cache's key: data in memory cannot be recognised by a name, so
        # a dissection of it never reuses an earlier call's cache.
        self.token = uuid.uuid4().hex

    def __len__(self) -> int:
        return len(self.dataset)

    def groups(self):
        method = getattr(self.dataset, "groups", None)
        return method() if callable(method) else None

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        item = self.dataset[index]
        if isinstance(item, Mapping):
            image, masks = item.get("image"), item.get("masks")
        elif isinstance(item, (tuple, list)) and len(item) >= 2:
            image, masks = item[0], item[1]
        else:
            raise DataError(f"concept data item {index}: expected (image, masks) or a dict with "
                            f"'image' and 'masks', got {type(item).__name__}")
        return {"image": self._image(torch.as_tensor(image), index),
                "masks": self._masks(torch.as_tensor(masks), index)}

    def _image(self, image: torch.Tensor, index: int) -> torch.Tensor:
        if image.dim() == 2:
            image = image[None]
        if image.dim() != 3:
            raise DataError(f"concept data item {index}: the image must be [H, W] or [C, H, W], "
                            f"got {tuple(image.shape)}")
        image = image.float().mean(dim=0, keepdim=True)
        if not torch.isfinite(image).all() or image.min() < 0 or image.max() > 1:
            raise DataError(f"concept data item {index}: image values must be finite and in [0, 1]")
        if tuple(image.shape[-2:]) != (self.image_size, self.image_size):
            image = F.interpolate(image[None], size=(self.image_size, self.image_size),
                                  mode="bilinear", align_corners=False, antialias=True)[0]
        return image.clamp(0.0, 1.0)

    def _masks(self, masks: torch.Tensor, index: int) -> torch.Tensor:
        if masks.dim() == 2 and len(self.concepts) == 1:
            masks = masks[None]
        if masks.dim() != 3 or masks.shape[0] != len(self.concepts):
            raise DataError(f"concept data item {index}: masks must be [{len(self.concepts)}, H, W] "
                            f"(one channel per concept), got {tuple(masks.shape)}")
        masks = masks.bool()
        if tuple(masks.shape[-2:]) != (self.mask_size, self.mask_size):
            masks = F.interpolate(masks[None].float(), size=(self.mask_size, self.mask_size),
                                  mode="nearest")[0].bool()
        return masks


def as_concept_set(entry: Any, index: int, *, image_size: int, mask_size: int,
                   concept_names: Sequence[str] | None) -> ConceptDataset:
    """A user's concept data (see the module docstring) as a :class:`ConceptDataset`."""
    names = getattr(entry, "concepts", None) or concept_names
    if not names:
        raise UsageError(f"concept data #{index + 1} ({type(entry).__name__}) names no concepts: "
                         f"give concept_names=[...] or an object with a 'concepts' list")
    if not hasattr(entry, "__getitem__") or not hasattr(entry, "__len__"):
        raise UsageError(f"concept data #{index + 1}: expected a dataset (__len__, __getitem__), "
                         f"got {type(entry).__name__}")
    name = str(getattr(entry, "name", None) or ("custom" if index == 0 else f"custom{index + 1}"))
    return ConceptDataset(entry, list(names), image_size=image_size, mask_size=mask_size, name=name,
                          annotation=getattr(entry, "annotation", "masks"))


__all__ = ["ConceptDataset", "as_concept_set"]
