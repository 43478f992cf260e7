"""Dissection under ``torchrun``: which images a rank dissects, and how the ranks' parts become one.

:func:`cxrsem.dissection.run.dissect_model` runs the same steps on one process and on many; these
are the few places where many differ (docs/dissection.md, "Running on many processes"):

- each rank forwards and caches a contiguous run of whole batches (``distributed.batch_shard``),
  so every batch holds the same images as on one process;
- T_k: every rank keeps the whole dataset's top-m values per unit of its part, and the gathered
  streams merge into exactly one pass's (:func:`merged_over_ranks`; ``quantile.py``);
- the tallies are integer sums and disjoint per-image rows, merged exactly (:func:`merge_tallies`);
- the Fig. 3 figures read detectors' top images, which lie in other ranks' caches: those maps are
  gathered (:func:`gather_top_maps`) and rank 0 reads them through :class:`GatheredMaps`.

On one process every function here answers as for a world of one (a merge of one part is that part).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrsem.engine import distributed
from cxrsem.errors import UsageError
from cxrsem.formats.dissection import is_detector


def check_every_rank_has_images(count: int, batch_size: int) -> None:
    """A rank without images would hold empty statistics and an empty cache: refuse up front."""
    world = distributed.world_size()
    if count <= (world - 1) * batch_size:
        raise UsageError(f"{count} images in batches of {batch_size} leave a process of {world} "
                         f"without images: lower --batch-size or start fewer "
                         f"(torchrun --nproc-per-node)")


def refuse_under_torchrun(settings: Any) -> None:
    """What a sharded run does not do (yet): the chance baselines, whose draws pair images across
    shards (shuffle) or need state not merged over ranks (rotation, random-init)."""
    refused = [flag for flag, on in (("--null shuffle", settings.null_permutations),
                                     ("--null rotation", settings.null_rotations),
                                     ("--null random-init", settings.null_random_init)) if on]
    if refused:
        raise UsageError(f"{', '.join(refused)}: not available under torchrun; run it as one "
                         f"process (python -m cxrsem dissect ...)")


def merged_over_ranks(statistic, device: torch.device | None = None):
    """Every rank's ``statistic`` merged in rank order (the same object on every rank): its
    state_dicts are gathered and restored (:class:`~cxrsem.statistics.StreamingStatistic`)."""
    if not distributed.active():
        return statistic
    kind = type(statistic)
    states = distributed.all_gather(statistic.state_dict())
    if device is not None:
        states = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in state.items()}
                  for state in states]
    merged = kind.from_state_dict(states[0])
    for state in states[1:]:
        merged.merge(kind.from_state_dict(state))
    return merged


def merge_tallies(tally, top, extras, activation_min: float):
    """The tally pass's statistics of every rank as one pass's: integer sums and disjoint
    per-image rows, so the merge is exact.  ``extras``' grid and paper tallies are merged in
    place; returns ``(tally, top, activation_min)``."""
    if not distributed.active():
        return tally, top, activation_min
    extras.grid = {q: (merged_over_ranks(t), t_q) for q, (t, t_q) in extras.grid.items()}
    if extras.paper is not None:
        extras.paper = (merged_over_ranks(extras.paper[0]), extras.paper[1])
    return (merged_over_ranks(tally), merged_over_ranks(top),
            min(distributed.all_gather(activation_min)))


def gather_top_maps(store, layer, shard: range, iou_threshold: float
                    ) -> dict[tuple[int, int], np.ndarray]:
    """Every rank's feature maps ``(unit, image) -> [h, w]`` of the detectors' top images: what
    the Fig. 3 figures read from the cache, which holds only a rank's shard under torchrun."""
    with distributed.step(f"top images of {layer.layer}"):
        index, best = layer.best
        wanted: dict[int, list[int]] = {}
        for unit in np.flatnonzero(is_detector(best, iou_threshold)).tolist():
            for image in layer.top_images[unit].tolist():
                if image in shard:
                    wanted.setdefault(image, []).append(unit)
        maps = {}
        for image, units in sorted(wanted.items()):
            record = store.read(image - shard.start)
            maps.update({(unit, image): record[unit].copy() for unit in units})
    return {key: value for part in distributed.all_gather(maps) for key, value in part.items()}


class GatheredMaps:
    """Stands in for the activation cache when rank 0 draws the figures under torchrun: its own
    cache holds only its shard, so the top images' maps come from every rank
    (:func:`gather_top_maps`); units not gathered read as zeros (the figures only read detectors
    at their top images)."""

    def __init__(self, cache: Any, maps: dict[str, dict[tuple[int, int], np.ndarray]]):
        self._cache, self._maps = cache, maps

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cache, name)

    def layer_store(self, layer: str, record_shape: tuple[int, ...], dtype: str,
                    folder: Path | None = None) -> _MapReader:
        return _MapReader(self._maps.get(layer, {}), tuple(record_shape), dtype)


class _MapReader:
    def __init__(self, maps: dict[tuple[int, int], np.ndarray], record_shape: tuple[int, ...],
                 dtype: str) -> None:
        self.maps, self.record_shape, self.dtype = maps, record_shape, dtype

    def read(self, index: int) -> np.ndarray:
        record = np.zeros(self.record_shape, dtype=self.dtype)
        for (unit, image), values in self.maps.items():
            if image == index:
                record[unit] = values
        return record
