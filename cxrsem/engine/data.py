"""Batched data access shared by training and dissection.

Datasets may offer a fast ``batch(indices) -> dict`` (the phantom renders whole batches with
vectorised ops); then the loader asks for index lists instead of collating single items.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

from cxrsem.errors import DataError, UsageError


class _BatchedView(Dataset):
    """Turns ``dataset.batch(indices)`` into a map-style dataset indexed by index lists."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, indices: Sequence[int]) -> dict:
        return self.dataset.batch(list(indices))


class GlobalBatchSampler(Sampler[list[int]]):
    """This rank's part of each global batch of a per-epoch permutation drawn from ``(seed, epoch)``.

    Epoch ``e`` permutes ``0..n-1`` with ``numpy.random.default_rng([seed, e])`` -- a function of
    the seed and the epoch alone, never of the world size or of any random state -- and cuts it
    into ``n // batch_size`` global batches of ``batch_size`` images (the last ``n % batch_size``
    images of the permutation, a different set each epoch, sit this epoch out).  Rank ``r`` of
    ``world`` takes the ``r``-th contiguous ``batch_size // world`` images of every global batch,
    so the ranks' parts of one step are together exactly the global batch of one process
    (``world=1``).  Call :meth:`set_epoch` before each epoch.
    """

    def __init__(self, n: int, batch_size: int, seed: int, *, rank: int = 0, world: int = 1) -> None:
        if batch_size % world:
            raise UsageError(f"--batch-size {batch_size} is the global batch and must divide "
                             f"evenly among the {world} processes; use a multiple of {world}")
        if n < batch_size:
            raise UsageError(f"--batch-size {batch_size} is larger than the {n} training images "
                             f"(an epoch is whole global batches); lower it")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world = rank, world
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def permutation(self, epoch: int) -> list[int]:
        """The global order of ``epoch``: the same for every world size."""
        import numpy as np

        seed = [int(self.seed) % 2**64, int(epoch)]
        return np.random.default_rng(seed).permutation(self.n).tolist()

    def __len__(self) -> int:
        return self.n // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        order = self.permutation(self.epoch)
        local = self.batch_size // self.world
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            first = start + self.rank * local
            yield order[first:first + local]


def make_loader(dataset: Any, *, batch_size: int, shuffle: bool = False,
                generator: torch.Generator | None = None, workers: int = 0,
                pin_memory: bool = False, drop_last: bool = False,
                batch_sampler: Sampler[list[int]] | None = None) -> DataLoader:
    """A DataLoader over ``dataset`` that uses its ``batch`` method when it has one.
    ``batch_sampler`` (index lists) replaces the one ``batch_size``/``shuffle`` would build."""
    if len(dataset) == 0:
        raise DataError("the dataset yields zero samples")
    if batch_sampler is not None:
        sampler = batch_sampler
    else:
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
