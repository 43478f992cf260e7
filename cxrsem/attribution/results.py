"""What :func:`cxrsem.attribution.attribute` returns: one result per image and the run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class AttributionResult:
    """The attribution of one image.  ``attributions`` is ``s`` (``[K, h, w]``), ``contributions``
    the unit contributions ``sum_i |s_k^i|`` (``[K]``); ``data`` is the JSON record."""

    image: str
    stem: str
    data: dict[str, Any]
    attributions: np.ndarray = field(repr=False)
    contributions: np.ndarray = field(repr=False)
    input_image: np.ndarray = field(repr=False)
    json_path: Path | None = None
    png_path: Path | None = None

    @property
    def top_k(self) -> list[dict[str, Any]]:
        return self.data["top_k"]

    @property
    def completeness(self) -> dict[str, Any]:
        return self.data["completeness"]

    @property
    def target(self) -> dict[str, Any]:
        return self.data["target"]

    @property
    def path(self) -> str:
        return self.data["path"]

    def to_json(self) -> dict[str, Any]:
        return self.data


@dataclass
class AttributionRun:
    """Everything :func:`attribute` did; iterating it yields the :class:`AttributionResult` list."""

    results: list[AttributionResult]
    skipped: list[tuple[str, str]]
    layer: str
    path: str
    split_reason: str | None
    model_sha256: str
    out: Path | None = None
    summary_csv: Path | None = None
    concepts_csv: Path | None = None

    def __iter__(self):
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, index: int) -> AttributionResult:
        return self.results[index]
