"""Attribution under ``torchrun``: which images a rank explains, and how the ranks' parts become
the run's tables (docs/attribution.md, "Under torchrun").

- every rank explains a contiguous run of whole batches (``distributed.batch_shard``), so each
  batch holds the images it holds on one process and every number is that process's;
- every rank writes its own images' ``<stem>.json`` / ``<stem>.png``; the stems are computed for
  all inputs on every rank first (:func:`cxrsem.attribution.inputs.stems_of`), so they are unique
  across ranks;
- the ``summary.csv`` rows and the records ``concepts.csv`` and the terminal table need are small:
  they are all-gathered (:func:`gather_parts`) and rank 0 writes the tables in input order.

On one process every function here answers as for a world of one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cxrsem.attribution.results import AttributionResult, AttributionRun
from cxrsem.engine import distributed


def rounds(count: int, batch_size: int) -> int:
    """Batches of the rank with the most (every rank takes part in as many agreement steps)."""
    blocks = -(-count // batch_size)
    return -(-blocks // distributed.world_size())


@dataclass
class ImageRecord:
    """An attributed image of any rank, as the tables need it: ``data`` is its JSON record without
    the per-unit scores (``units``) and the top units' maps (those stay in ``<stem>.json``)."""

    image: str
    stem: str
    data: dict[str, Any]
    json_name: str = ""


def light_record(result: AttributionResult) -> ImageRecord:
    data = {k: v for k, v in result.data.items() if k != "units"}
    data["top_k"] = [{k: v for k, v in top.items() if k != "map"} for top in data["top_k"]]
    return ImageRecord(result.image, result.stem, data,
                       result.json_path.name if result.json_path else "")


@dataclass
class ShardPart:
    """What one rank sends the others after its images: ``(position, row)`` of ``summary.csv``
    (skipped images included), its attributed images' records and its skipped images."""

    rows: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    records: list[tuple[int, ImageRecord]] = field(default_factory=list)
    skipped: list[tuple[int, str, str]] = field(default_factory=list)


def gather_parts(part: ShardPart) -> ShardPart:
    """Every rank's part as one, in input order (alone: ``part`` sorted)."""
    parts = distributed.all_gather(part)
    whole = ShardPart([r for p in parts for r in p.rows], [r for p in parts for r in p.records],
                      [s for p in parts for s in p.skipped])
    # Positions are unique; sorting by them alone keeps the rows of one run in input order.
    whole.rows.sort(key=lambda item: item[0])
    whole.records.sort(key=lambda item: item[0])
    whole.skipped.sort(key=lambda item: item[0])
    return whole


@dataclass
class ShardedAttributionRun(AttributionRun):
    """What :func:`cxrsem.attribution.attribute` returns on each rank under ``torchrun``:
    ``results`` and ``skipped`` are **this rank's** images (full results, maps included), in input
    order; ``all_images`` and ``all_skipped`` are every rank's, in input order (``all_images`` as
    :class:`ImageRecord`, without the maps).  ``summary_csv`` / ``concepts_csv`` name the files
    rank 0 wrote (on every rank)."""

    rank: int = 0
    world_size: int = 1
    all_images: list[ImageRecord] = field(default_factory=list)
    all_skipped: list[tuple[str, str]] = field(default_factory=list)
