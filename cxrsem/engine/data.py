"""Batched data access shared by training and dissection.

Datasets may offer a fast ``batch(indices) -> dict`` (the phantom renders whole batches with
vectorised ops); then the loader asks for index lists instead of collating single items.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from cxrsem.errors import DataError


class _BatchedView(Dataset):
    """Turns ``dataset.batch(indices)`` into a map-style dataset indexed by index lists."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, indices: Sequence[int]) -> dict:
        return self.dataset.batch(list(indices))


def make_loader(dataset: Any, *, batch_size: int, shuffle: bool = False,
                generator: torch.Generator | None = None, workers: int = 0,
                pin_memory: bool = False, drop_last: bool = False) -> DataLoader:
    """A DataLoader over ``dataset`` that uses its ``batch`` method when it has one."""
    if len(dataset) == 0:
        raise DataError("the dataset yields zero samples")
    base = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    sampler = BatchSampler(base, batch_size=batch_size, drop_last=drop_last)
    common = {"num_workers": workers, "pin_memory": pin_memory,
              "persistent_workers": workers > 0}
    if hasattr(dataset, "batch"):
        return DataLoader(_BatchedView(dataset), sampler=sampler, batch_size=None, **common)
    return DataLoader(dataset, batch_sampler=sampler, **common)


def to_device(batch: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Move every tensor inside nested dicts/lists of a batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, dict):
        return {k: to_device(v, device, non_blocking) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device, non_blocking) for v in batch)
    return batch
