"""Streaming statistics: the common shape of everything cxrsem computes over a dataset.

A statistic is filled by one pass over the data, batch by batch, and can be split: each part of the
data (a torchrun rank, a shard, a bootstrap resample's pieces) fills its own copy, and merging the
copies gives *exactly* what one pass over all the data gives (integers exactly, thresholds bit for
bit).  Its state is a flat dict of tensors, numbers and strings, so it can be saved with
``torch.save``, loaded with ``torch.load(weights_only=True)``, and all-reduced or gathered.

Implementations:

- :class:`cxrsem.dissection.quantile.StreamingTopQuantile` — exact per-unit top-m quantile T_k;
- :class:`cxrsem.dissection.tally.IoUTally` — Eq. 5's integer IoU sums;
- :class:`cxrsem.dissection.topimages.TopImages` — the top-activating images per unit.

This package holds the shape only (and, later, what is built on it: bootstrap intervals, chance
baselines); the statistics themselves live with the stage that defines them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, Self, runtime_checkable

from cxrsem.errors import UsageError

__all__ = ["StatisticMismatch", "StreamingStatistic", "check_kind", "require_compatible"]


class StatisticMismatch(UsageError):
    """Two statistics that cannot be merged (other kinds, unit counts, settings) or a state dict
    that is not of the statistic it is loaded into."""


@runtime_checkable
class StreamingStatistic(Protocol):
    """``update`` adds one batch; ``merge`` folds another part's statistic into this one.

    ``merge(other)`` changes ``self`` in place and returns it (so ``functools.reduce`` over parts
    works); ``other`` is left unchanged.  Merging is exact, associative and commutative: any split
    of the data into parts, merged in any order, equals one pass.  It raises
    :class:`StatisticMismatch` when the two were not made for the same problem.

    ``state_dict()`` holds only tensors, numbers and strings, with a ``"kind"`` string naming the
    statistic; ``from_state_dict(state)`` rebuilds an equal statistic (on the tensors' device).
    """

    def update(self, *batch: Any) -> None: ...

    def merge(self, other: Self) -> Self: ...

    def state_dict(self) -> dict[str, Any]: ...

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> Self: ...


def require_compatible(kind: str, mine: Mapping[str, Any], theirs: Mapping[str, Any]) -> None:
    """Raise :class:`StatisticMismatch` naming every field in which two ``kind`` statistics differ."""
    differ = [f"{key} {mine[key]!r} vs {theirs.get(key)!r}" for key in mine
              if theirs.get(key) != mine[key]]
    if differ:
        raise StatisticMismatch(f"cannot merge {kind} statistics: {'; '.join(differ)}")


def check_kind(kind: str, state: Mapping[str, Any]) -> None:
    """A state dict loaded into the wrong statistic fails naming both."""
    if state.get("kind") != kind:
        raise StatisticMismatch(f"state dict of kind {state.get('kind')!r} cannot be loaded as "
                                f"{kind!r}")
