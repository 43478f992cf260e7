"""The phantom as a training dataset and as two concept sets (masks, boxes).

Both generate on the fly.  Item access goes through a small cache of 64-sample blocks: asking for
item ``i`` renders the aligned block that holds it, so sequential or shuffled ``DataLoader``
access costs about one batched render per 64 images (as long as the cache holds the dataset,
which it does up to ``cache_mb``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from cxrsem.default_plugins.phantom.concepts import (
    CONCEPTS,
    PATHOLOGIES,
    format_prevalence,
    parse_prevalence,
)
from cxrsem.default_plugins.phantom.generator import (
    MIN_MASK_SIZE,
    PhantomBatch,
    check_size,
    generate,
)
from cxrsem.default_plugins.phantom.labels import OUTPUTS
from cxrsem.errors import UsageError
from cxrsem.tasks import check_kind

SPLITS = ("train", "val", "test")
BLOCK = 64


def sample_id(split: str, index: int) -> str:
    return f"phantom-{split}-{index:06d}"


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise UsageError(f"phantom split must be one of {', '.join(SPLITS)}, got {split!r}")
    return split


def _check_count(n: int, name: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UsageError(f"phantom {name} must be a positive integer, got {n!r}")
    return n


class _BlockCache:
    """Least-recently-used cache of rendered 64-sample blocks."""

    def __init__(self, n: int, make: Callable[[range], Any], block_bytes: int, cache_mb: float):
        self._n, self._make = n, make
        self._capacity = max(2, int(cache_mb * 2**20 // max(1, block_bytes)))
        self._blocks: OrderedDict[int, Any] = OrderedDict()

    def holds_all(self) -> bool:
        return -(-self._n // BLOCK) <= self._capacity

    def get(self, index: int) -> tuple[Any, int]:
        """The block holding ``index`` and the index's position in it."""
        key = index // BLOCK
        if key in self._blocks:
            self._blocks.move_to_end(key)
        else:
            start = key * BLOCK
            self._blocks[key] = self._make(range(start, min(self._n, start + BLOCK)))
            while len(self._blocks) > self._capacity:
                self._blocks.popitem(last=False)
        return self._blocks[key], index - key * BLOCK

    def __getstate__(self) -> dict:
        # DataLoader workers get a copy of the dataset: send it without rendered pixels.
        return {**self.__dict__, "_blocks": OrderedDict()}


def _normalise_index(index: int, n: int) -> int:
    index = int(index)
    if index < 0:
        index += n
    if not 0 <= index < n:
        raise IndexError(f"phantom index {index} out of range for {n} samples")
    return index


class PhantomDataset(Dataset):
    """Training dataset: images with the targets of all four task kinds (see the contract in
    :mod:`cxrsem.components`)."""

    def __init__(self, *, split: str, image_size: int, seed: int = 0, n: int = 1000,
                 prevalence: str | dict[str, float] | None = None, cache_mb: float = 512) -> None:
        self.split = _check_split(split)
        self.image_size = check_size(image_size)
        self.seed, self.n = int(seed), _check_count(n, f"n_{split}")
        self.prevalence = parse_prevalence(prevalence)
        self.outputs: dict[str, list[str]] = {task: list(names) for task, names in OUTPUTS.items()}
        block_bytes = BLOCK * image_size * image_size * 4
        self._cache = _BlockCache(self.n, self._render_block, block_bytes, cache_mb)
        self._targets: dict[str, Tensor] | None = None

    def _render_block(self, indices: Sequence[int]) -> PhantomBatch:
        return generate(indices, seed=self.seed, split=self.split, image_size=self.image_size,
                        prevalence=self.prevalence, masks=False)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = _normalise_index(index, self.n)
        block, pos = self._cache.get(index)
        assert block.images is not None
        return {
            "image": block.images[pos].clone(),  # a copy: callers may modify it in place
            "targets": {task: t[pos].clone() for task, t in block.labels.items()},
            "id": sample_id(self.split, index),
        }

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        """Items ``indices`` collated (``image [B, 1, S, S]``, ``targets {task: [B, ...]}``,
        ``id`` list), as a ``DataLoader`` would; the training loader prefers this to items.
        Served from the block cache when the whole dataset fits in it, else rendered at once."""
        indices = [_normalise_index(i, self.n) for i in indices]
        if self._cache.holds_all():
            found = [self._cache.get(i) for i in indices]
            images = torch.stack([block.images[pos] for block, pos in found])
            targets = {task: torch.stack([block.labels[task][pos] for block, pos in found])
                       for task in self.outputs}
        else:
            batch = self._render_block(indices)
            assert batch.images is not None
            images, targets = batch.images, batch.labels
        return {"image": images, "targets": targets,
                "id": [sample_id(self.split, i) for i in indices]}

    def targets(self, task: str) -> Tensor:
        """Every sample's target for ``task`` ``[N, ...]``, from the masks alone (no pixels)."""
        check_kind(task)
        if self._targets is None:
            parts = [generate(range(start, min(self.n, start + 256)), seed=self.seed,
                              split=self.split, image_size=self.image_size,
                              prevalence=self.prevalence, images=False, masks=False).labels
                     for start in range(0, self.n, 256)]
            self._targets = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        return self._targets[task].clone()

    def describe(self) -> str:
        return (f"phantom {self.split}: {self.n} images at {self.image_size} px "
                f"(seed {self.seed}), prevalence {format_prevalence(self.prevalence)}")


class PhantomConceptSet(Dataset):
    """Concept set for dissection: the 13 exact masks, or (``boxes=True``) one filled box per
    lesion instance for the 8 pathologies, like NIH ChestX-ray8's annotations."""

    def __init__(self, *, image_size: int, mask_size: int, seed: int = 0, n_images: int = 400,
                 split: str = "test", prevalence: str | dict[str, float] | None = None,
                 boxes: bool = False, cache_mb: float = 256) -> None:
        self.image_size = check_size(image_size)
        self.mask_size = check_size(mask_size, "mask_size", MIN_MASK_SIZE)
        self.split, self.seed = _check_split(split), int(seed)
        self.n = _check_count(n_images, "n_images")
        self.prevalence = parse_prevalence(prevalence)
        self.boxes = boxes
        self.concepts: list[str] = list(PATHOLOGIES if boxes else CONCEPTS)
        block_bytes = BLOCK * (image_size**2 * 4 + len(self.concepts) * mask_size**2)
        self._cache = _BlockCache(self.n, self._render, block_bytes, cache_mb)

    def _render(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        batch = generate(indices, seed=self.seed, split=self.split, image_size=self.image_size,
                         mask_size=self.mask_size, prevalence=self.prevalence,
                         masks=not self.boxes, boxes=self.boxes)
        masks = batch.box_masks(PATHOLOGIES) if self.boxes else batch.masks
        assert batch.images is not None and masks is not None
        return batch.images, masks

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = _normalise_index(index, self.n)
        (images, masks), pos = self._cache.get(index)
        return {"image": images[pos].clone(), "masks": masks[pos].clone(),
                "id": sample_id(self.split, index)}

    def batch(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        """``(images [B, 1, S, S], masks [B, C, M, M])`` for ``indices`` in one batched render."""
        indices = [_normalise_index(i, self.n) for i in indices]
        return self._render(indices)

    def ids(self, indices: Sequence[int]) -> list[str]:
        return [sample_id(self.split, _normalise_index(i, self.n)) for i in indices]

    def describe(self) -> str:
        kind = "boxes" if self.boxes else "masks"
        return (f"phantom{'-bbox' if self.boxes else ''} ({self.split}): {self.n} images at "
                f"{self.image_size} px, {kind} at {self.mask_size} px for {len(self.concepts)} "
                f"concepts (seed {self.seed})")
