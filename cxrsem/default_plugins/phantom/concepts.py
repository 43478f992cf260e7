"""Concept names of the phantom, their default prevalences, and the ``prevalence`` option parser.

The 13 mask channels follow the Covid-CXR annotation set the paper dissects with (lungs,
cardiomediastinum, findings, apparatus) plus the NIH ChestX-ray8 box findings it lacks (nodule,
mass, atelectasis, cardiomegaly), so one phantom feeds both kinds of dissection.
"""

from __future__ import annotations

from collections.abc import Mapping

from cxrsem.errors import UsageError

CONCEPTS: tuple[str, ...] = (
    "Left Lung",
    "Right Lung",
    "Cardiomediastinum",
    "Consolidation",
    "Ground Glass Opacities",
    "Pleural Effusion",
    "Pneumothorax",
    "Nodule",
    "Mass",
    "Atelectasis",
    "Cardiomegaly",
    "Endotracheal Tube",
    "Central Venous Line",
)
"""Mask channel order of every phantom batch."""

PATHOLOGIES: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Ground Glass Opacities",
    "Mass",
    "Nodule",
    "Pleural Effusion",
    "Pneumothorax",
)
"""Output order of the ``multilabel`` task (and the channel order of ``phantom-bbox``)."""

DEVICES: tuple[str, ...] = ("Endotracheal Tube", "Central Venous Line")

OPACITIES: tuple[str, ...] = ("Consolidation", "Ground Glass Opacities")
"""The findings that count towards the BrixIA-style zone scores."""

DEFAULT_PREVALENCE: Mapping[str, float] = {
    "Atelectasis": 0.12,
    "Cardiomegaly": 0.12,
    "Consolidation": 0.30,
    "Ground Glass Opacities": 0.30,
    "Mass": 0.06,
    "Nodule": 0.10,
    "Pleural Effusion": 0.15,
    "Pneumothorax": 0.03,
    "Endotracheal Tube": 0.15,
    "Central Venous Line": 0.20,
}
"""Probability that an image shows each finding or device (independently of the others)."""

CONFIGURABLE: tuple[str, ...] = PATHOLOGIES + DEVICES

CHANNEL: Mapping[str, int] = {name: i for i, name in enumerate(CONCEPTS)}


def parse_prevalence(text: str | Mapping[str, float] | None) -> dict[str, float]:
    """Default prevalences updated by ``text`` (``"Pneumothorax=0.03,Consolidation=0.4"``).

    Names match case-insensitively; a mapping is accepted as well (from Python callers).  Unknown
    names and values outside [0, 1] raise :class:`UsageError` naming the offender and the choices.
    """
    resolved = dict(DEFAULT_PREVALENCE)
    if text is None:
        return resolved
    items = list(text.items()) if isinstance(text, Mapping) else _split_assignments(text)
    by_lower = {name.lower(): name for name in CONFIGURABLE}
    for raw_name, raw_value in items:
        name = by_lower.get(str(raw_name).strip().lower())
        if name is None:
            raise UsageError(
                f"phantom prevalence: unknown concept {str(raw_name).strip()!r}; "
                f"valid names: {', '.join(CONFIGURABLE)}"
            )
        try:
            value = float(raw_value)
        except (TypeError, ValueError):
            raise UsageError(
                f"phantom prevalence of {name!r} must be a number in [0, 1], got {raw_value!r}"
            ) from None
        if not 0.0 <= value <= 1.0:  # also rejects NaN
            raise UsageError(f"phantom prevalence of {name!r} must be in [0, 1], got {value:g}")
        resolved[name] = value
    return resolved


def _split_assignments(text: str) -> list[tuple[str, str]]:
    items = []
    for part in text.split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        if not sep or not name.strip():
            raise UsageError(
                f"phantom prevalence expects NAME=VALUE pairs separated by commas, got {part!r}; "
                f"valid names: {', '.join(CONFIGURABLE)}"
            )
        items.append((name, value.strip()))
    return items


def format_prevalence(prevalence: Mapping[str, float]) -> str:
    """``"Atelectasis=0.12, ..."`` in :data:`CONFIGURABLE` order, for ``describe()``."""
    return ", ".join(f"{name}={prevalence[name]:g}" for name in CONFIGURABLE)
