"""Reading a Network Dissection result (``dissection.json``, schema ``cxrsem-dissection/1``) to name
the units of an attribution.

Only these fields are read::

    {"schema": "cxrsem-dissection/1",
     "model": {"path": str, "sha256": str},      # sha256 = checkpoint.state_dict_sha256(...)
     "layer": "features.denseblock4", "num_units": int,
     "settings": {"iou_threshold": float, ...},
     "units": [{"unit": int, "concept": str, "iou": float, "detector": bool, ...}, ...]}

A unit is *labelled* with its best concept when the dissection calls it a detector (``detector``;
when absent: IoU above the threshold, paper Sec. 2.2).  Other units stay in every table as
``unlabelled`` -- never silently dropped.  A result for another model (checksum) or layer, or with
another unit count, is an error: its labels would name the wrong units.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from cxrsem.errors import UsageError

SCHEMA_PREFIX = "cxrsem-dissection/"
UNLABELLED = "unlabelled"


@dataclass(frozen=True)
class UnitLabel:
    unit: int
    concept: str | None  # the best concept, labelled or not
    iou: float | None
    labelled: bool


@dataclass
class Dissection:
    path: Path
    layer: str
    sha256: str
    num_units: int
    iou_threshold: float
    units: dict[int, UnitLabel] = field(default_factory=dict)

    def label(self, unit: int) -> UnitLabel:
        return self.units.get(unit, UnitLabel(unit, None, None, False))


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read dissection result {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"dissection result {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not str(data.get("schema", "")).startswith(SCHEMA_PREFIX):
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise UsageError(f"{path} is not a cxrsem dissection result (schema {found!r}, expected "
                         f"{SCHEMA_PREFIX}1)")
    return data


def _parse(path: Path, data: dict) -> Dissection:
    try:
        settings = data.get("settings") or {}
        threshold = float(settings.get("iou_threshold", 0.04))
        units: dict[int, UnitLabel] = {}
        for row in data.get("units", []):
            unit = int(row["unit"])
            iou = row.get("iou")
            iou = None if iou is None else float(iou)
            detector = row.get("detector")
            labelled = bool(detector) if detector is not None else (
                iou is not None and iou > threshold)
            concept = row.get("concept")
            units[unit] = UnitLabel(unit, None if concept is None else str(concept), iou,
                                    labelled and concept is not None)
        return Dissection(path=path, layer=str(data["layer"]), sha256=str(data["model"]["sha256"]),
                          num_units=int(data["num_units"]), iou_threshold=threshold, units=units)
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"malformed dissection result {path}: missing or invalid {exc}") from None


def load_dissection(path: str | Path, *, layer: str, sha256: str, num_units: int,
                    model_name: str = "the checkpoint") -> Dissection:
    """The dissection of ``layer`` of the model with weights checksum ``sha256``.

    ``path`` is a ``dissection.json`` or a folder searched for ``**/dissection.json`` (the layout
    ``DISSECT_DIR/<model-stem>/<layer>/dissection.json`` of ``cxrsem dissect``); the file whose
    layer and checksum match is used.
    """
    path = Path(path)
    if path.is_dir():
        found = sorted(path.rglob("dissection.json"))
        if not found:
            raise UsageError(f"no dissection.json under {path}")
        seen = []
        for candidate in found:
            try:
                data = _read(candidate)
                result = _parse(candidate, data)
            except UsageError:
                continue
            if result.layer == layer and result.sha256 == sha256:
                return _check(result, layer, sha256, num_units, model_name)
            seen.append(f"{candidate.relative_to(path)} ({result.layer}, sha256 "
                        f"{result.sha256[:12]})")
        listed = "; ".join(seen[:6]) + (f"; ... ({len(seen) - 6} more)" if len(seen) > 6 else "")
        raise UsageError(f"no dissection of layer {layer!r} of {model_name} (sha256 {sha256[:12]}) "
                         f"under {path}; found: {listed or 'only unreadable files'}")
    if not path.is_file():
        raise UsageError(f"dissection result not found: {path}")
    return _check(_parse(path, _read(path)), layer, sha256, num_units, model_name)


def _check(result: Dissection, layer: str, sha256: str, num_units: int,
           model_name: str) -> Dissection:
    if result.sha256 != sha256:
        raise UsageError(f"dissection {result.path} was computed for another model (weights sha256 "
                         f"{result.sha256[:12]}, {model_name} has {sha256[:12]}); dissect this "
                         f"checkpoint first")
    if result.layer != layer:
        raise UsageError(f"dissection {result.path} is of layer {result.layer!r}, not {layer!r}")
    if result.num_units != num_units:
        raise UsageError(f"dissection {result.path} has {result.num_units} units, but layer "
                         f"{layer!r} of {model_name} has {num_units}")
    bad = [u for u in result.units if not 0 <= u < num_units]
    if bad:
        raise UsageError(f"dissection {result.path} names unit {bad[0]}, outside 0..{num_units - 1}")
    return result
