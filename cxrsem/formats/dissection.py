"""The dissection result: ``dissection.json`` (schema ``cxrsem-dissection/1``) and its CSV tables.

The one home of this file contract: schema versions, the detector rule, the defaults every CLI
option and library call refers to, the writer and the one reader (used by ``attribute`` to name
units and by ``report``).

``DISSECT_DIR/<model-stem>/<layer>/`` (layout: :mod:`cxrsem.dissection.results`) holds:

- ``dissection.json``: settings (quantile and what it is taken on, IoU threshold, seg size,
  interpolation, mask rule), model identity (path, sha256 of the state dict), the model's training
  info, layer (feature shape, whether activations are non-negative), concept sets with per-concept
  image counts, one row per unit (threshold T_k, best concept, its IoU, detector flag, the full IoU
  row, top images) and detector counts per concept, and ``files``: every other file of the
  result set (POSIX paths relative to the folder, sorted; readers use only listed files when the
  list is there, and every file when it is absent, as in older results);
- ``units.csv`` (one row per unit), ``detectors.csv`` (concept, count);
- ``imagestats.npz`` (:data:`IMAGE_STATS_FILE`): every image's own terms of the IoU sums, sparse
  (:mod:`cxrsem.statistics.imagestats`), described by the record's ``image_stats`` block (file,
  format, images, groups, pairs P, entries Q).

A unit is *labelled* with its best concept when the dissection calls it a detector (``detector``;
when absent: :func:`is_detector` at the file's threshold).  The reader accepts every schema version
written so far (:data:`SCHEMAS_READ`); optional fields may be missing.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from cxrsem.errors import UsageError
from cxrsem.outputs import write_json, write_text

SCHEMA = "cxrsem-dissection/1"
SCHEMA_PREFIX = "cxrsem-dissection/"
SCHEMAS_READ = (SCHEMA,)

UNLABELLED = "unlabelled"
DEFAULT_QUANTILE = 0.005       # P(f_k > T_k), paper Sec. 2.2
DEFAULT_IOU_THRESHOLD = 0.04   # a unit is a detector of its best concept above this IoU
IMAGE_STATS_FILE = "imagestats.npz"  # per-image sufficient statistics, next to dissection.json


def is_detector(iou: Any, threshold: float = DEFAULT_IOU_THRESHOLD) -> Any:
    """A unit detects its best concept when that concept's IoU exceeds ``threshold`` (Sec. 2.2).

    Works on one IoU (returns a bool; ``None`` is no detector) and on arrays (returns a bool array)."""
    if isinstance(iou, np.ndarray):
        return iou > threshold
    return iou is not None and float(iou) > threshold


# --- writer ----------------------------------------------------------------------------------------


def layer_record(result, layer, settings) -> dict[str, Any]:
    """The ``dissection.json`` document of one layer's dissection (``result``: a
    :class:`~cxrsem.dissection.run.ModelDissection`, ``layer`` one of its layers)."""
    # Imported here: cxrsem.dissection imports this module for its defaults.
    from cxrsem.dissection.quantile import QUANTILE_RULE
    from cxrsem.dissection.tally import INTERPOLATION, MASK_RULE

    best_index, best_iou = layer.best
    detector = is_detector(best_iou, settings.iou_threshold)
    units = []
    for k in range(len(layer.thresholds)):
        units.append({
            "unit": k,
            "threshold": float(layer.thresholds[k]),
            "concept": layer.concepts[best_index[k]] if layer.concepts else None,
            "iou": float(best_iou[k]),
            "detector": bool(detector[k]),
            "ious": [round(float(v), 8) for v in layer.iou[k]],
            "top_images": [int(i) for i in layer.top_images[k]],
            **(layer.unit_bootstrap[k] if getattr(layer, "unit_bootstrap", None) else {}),
            **(layer.unit_nulls[k] if getattr(layer, "unit_nulls", None) else {}),
            **(layer.unit_boxes[k] if getattr(layer, "unit_boxes", None) else {}),
        })
    counts = Counter(units[k]["concept"] for k in range(len(units)) if detector[k])
    source = result.source
    concept_sets = []
    for name, concepts in source.concepts_of().items():
        concept_sets.append({"name": name, "concepts": concepts})
    images_with = {c: int(n) for c, n in zip(layer.concepts, layer.images_with, strict=True)}
    stats = getattr(layer, "image_stats", None)
    train = result.checkpoint.get("train", {})
    return {
        "schema": SCHEMA,
        "model": {"path": str(result.model_path), "sha256": result.model_sha256,
                  "arch": result.checkpoint["arch"]["name"], "task": result.checkpoint["task"],
                  "input": result.checkpoint["input"],
                  "train": {k: train.get(k) for k in ("dataset", "loss", "init", "epoch", "metrics")},
                  "cxrsem_version": result.checkpoint.get("cxrsem_version")},
        "layer": layer.layer,
        "num_units": len(units),
        "feature_shape": list(layer.feature_shape),
        "activations": {
            "captured": "module output, cloned before any later in-place op",
            "min": layer.activation_min,
            "nonnegative": layer.activation_min >= 0,
        },
        "settings": {
            "quantile": settings.quantile,
            "quantile_on": QUANTILE_RULE,
            "threshold_images": layer.threshold_images,
            "iou_threshold": settings.iou_threshold,
            "seg_size": settings.seg_size,
            "interpolation": dict(INTERPOLATION),
            "mask_rule": MASK_RULE,
            "cache_dtype": settings.cache_dtype,
            # The forward pass's: fp32, or bf16/fp16 under torch.autocast (docs/dissection.md).
            "precision": getattr(settings, "precision", "fp32"),
            "limit": settings.limit,
            "prepared_images": source.prepared_images(),
            # The paper's definitions unless the released code's were asked for (--iou-over all,
            # --merge-concepts).
            "iou_over": getattr(settings, "iou_over", "containing"),
            "merge_concepts": bool(getattr(settings, "merge_concepts", False)),
        },
        "concept_sets": concept_sets,
        "concepts": [{"name": c, "images": images_with[c]} for c in layer.concepts],
        "num_images": len(source),
        "units": units,
        "detectors": {c: counts.get(c, 0) for c in layer.concepts},
        "num_detectors": int(detector.sum()),
        "unique_concepts": len(counts),
        "stats": {"upsampled_fraction": layer.upsampled_fraction,
                  "cache_reused": result.cache_reused, "timings_s": result.timings,
                  # How the run was split (torchrun); the results do not depend on it.
                  "distributed": getattr(result, "distributed", None)
                  or {"world_size": 1, "backend": None}},
        **({"image_stats": image_stats_block(stats)} if stats is not None else {}),
        **({"bootstrap": layer.bootstrap} if getattr(layer, "bootstrap", None) else {}),
        **({"sensitivity": layer.sensitivity} if getattr(layer, "sensitivity", None) else {}),
        **({"nulls": layer.nulls} if getattr(layer, "nulls", None) else {}),
        **({"definitions": layer.definitions} if getattr(layer, "definitions", None) else {}),
    }


def image_stats_block(stats) -> dict[str, Any]:
    """The ``image_stats`` block of ``dissection.json`` describing :data:`IMAGE_STATS_FILE`
    (``stats``: a :class:`~cxrsem.statistics.imagestats.ImageStats`)."""
    from cxrsem.statistics.imagestats import FORMAT

    return {"file": IMAGE_STATS_FILE, "format": FORMAT, "num_images": stats.num_images,
            "num_groups": stats.num_groups, "pairs": int(stats.mask_image.size),
            "entries": int(stats.inter_image.size)}


def unit_rows(record: Mapping[str, Any]) -> list[list[Any]]:
    """``units.csv``: header, then one row per unit; with the shuffled null (``--null shuffle``)
    also each unit's p-value, Benjamini-Hochberg adjusted p-value and significance."""
    units = record["units"]
    tested = bool(units) and all("p_value" in u for u in units)
    header = ["unit", "threshold", "concept", "iou", "detector"]
    rows = [[u["unit"], f"{u['threshold']:.8g}", u["concept"], f"{u['iou']:.6f}", int(u["detector"])]
            for u in units]
    if tested:
        header += ["p_value", "p_adjusted", "significant", "expected_iou"]
        for row, u in zip(rows, units, strict=True):
            adjusted = "" if u["p_adjusted"] is None else f"{u['p_adjusted']:.6g}"
            row += [f"{u['p_value']:.6g}", adjusted, int(u["significant"]),
                    f"{u['expected_iou']:.6f}"]
    return [header] + rows


def detector_rows(record: Mapping[str, Any]) -> list[list[Any]]:
    """``detectors.csv``: header, then (concept, count), most detectors first."""
    return [["concept", "count"]] + sorted(
        ([c, n] for c, n in record["detectors"].items()), key=lambda row: (-row[1], row[0]))


def csv_text(rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def write_tables(folder: Path, record: Mapping[str, Any]) -> None:
    """``units.csv`` and ``detectors.csv`` of ``record`` into ``folder``."""
    write_text(folder / "units.csv", csv_text(unit_rows(record)))
    write_text(folder / "detectors.csv", csv_text(detector_rows(record)))


def write_record(folder: Path, record: Mapping[str, Any]) -> Path:
    """``dissection.json``; write it last: its presence means the folder is complete."""
    return write_json(folder / "dissection.json", record)


# --- reader ----------------------------------------------------------------------------------------


class SchemaError(ValueError):
    """Not a dissection result, or one of a schema version this cxrsem does not read."""


@dataclass(frozen=True)
class UnitLabel:
    """One unit of a dissected layer: its best concept and that concept's dataset-wide IoU (Eq. 5)."""

    unit: int
    concept: str | None  # the best concept, labelled or not
    iou: float | None
    labelled: bool = False  # a detector of ``concept`` by the dissection's own verdict


@dataclass
class Dissection:
    """One read ``dissection.json`` (one model, one layer).

    ``layer``, ``sha256`` and ``num_units`` are ``None`` when the file lacks them (the report
    tolerates that; :func:`load_dissection` does not)."""

    path: Path
    schema: str
    layer: str | None
    sha256: str | None
    num_units: int | None
    iou_threshold: float
    units: list[UnitLabel] = field(repr=False)
    model_path: str = ""
    train: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    concept_images: dict[str, int] = field(default_factory=dict)  # concept -> images containing it
    concepts: list[str] = field(default_factory=list)  # listed ones, then any only units name
    data: dict[str, Any] = field(default_factory=dict, repr=False)  # the whole document

    @cached_property
    def _by_unit(self) -> dict[int, UnitLabel]:
        return {u.unit: u for u in self.units}

    def label(self, unit: int) -> UnitLabel:
        """The label of ``unit``; an unlabelled one without concept when the file has no row for it."""
        return self._by_unit.get(unit, UnitLabel(unit, None, None, False))


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def check_schema(data: Any) -> str:
    """The schema of ``data``; :class:`SchemaError` unless it is one this cxrsem reads."""
    schema = data.get("schema") if isinstance(data, Mapping) else type(data).__name__
    if not isinstance(schema, str) or not schema.startswith(SCHEMA_PREFIX):
        raise SchemaError(f"not a cxrsem dissection result (schema {schema!r}, expected {SCHEMA})")
    if schema not in SCHEMAS_READ:
        raise SchemaError(f"schema {schema!r} is not supported by this cxrsem "
                          f"(expected {', '.join(SCHEMAS_READ)})")
    return schema


def parse_dissection(data: Any, path: str | Path) -> Dissection:
    """A :class:`Dissection` from a ``dissection.json`` document; ``ValueError`` names what is wrong.

    Only ``schema`` and ``units`` are required; a unit row needs no more than its ``unit`` (its
    index when absent)."""
    path = Path(path)
    schema = check_schema(data)
    rows = data.get("units")
    if not isinstance(rows, list):
        raise ValueError("it has no 'units' list")
    settings = _mapping(data.get("settings"))
    threshold = settings.get("iou_threshold")
    threshold = DEFAULT_IOU_THRESHOLD if threshold is None else threshold
    if _number(threshold) is None:
        raise ValueError(f"settings.iou_threshold is not a number: {threshold!r}")
    threshold = float(threshold)
    units = []
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"units[{index}] is not an object")
        unit = row.get("unit", index)
        if isinstance(unit, bool) or not isinstance(unit, int):
            raise ValueError(f"units[{index}].unit is not an integer")
        concept = row.get("concept")
        concept = None if concept is None else str(concept)
        iou = _number(row.get("iou"))
        detector = row.get("detector")
        labelled = bool(detector) if detector is not None else is_detector(iou, threshold)
        units.append(UnitLabel(unit, concept, iou, labelled and concept is not None))
    num_units = data.get("num_units")
    if num_units is not None and (isinstance(num_units, bool) or not isinstance(num_units, int)):
        raise ValueError(f"num_units is not an integer: {num_units!r}")
    model = _mapping(data.get("model"))
    concept_images: dict[str, int] = {}
    for row in data.get("concepts") or []:
        if isinstance(row, Mapping) and row.get("name") is not None:
            images = row.get("images")
            concept_images[str(row["name"])] = int(images) if isinstance(images, int) else 0
    concepts = list(concept_images)
    for unit in units:  # concepts named by units but not listed (hand-made or older files)
        if unit.concept is not None and unit.concept not in concepts:
            concepts.append(unit.concept)
    layer, sha256 = data.get("layer"), model.get("sha256")
    return Dissection(
        path=path, schema=schema, layer=None if layer in (None, "") else str(layer),
        sha256=None if sha256 is None else str(sha256), num_units=num_units,
        iou_threshold=threshold, units=units, model_path=str(model.get("path") or ""),
        train=dict(_mapping(model.get("train"))), settings=dict(settings),
        concept_images=concept_images, concepts=concepts, data=dict(data))


def _read_for_labels(path: Path) -> Dissection:
    """:func:`parse_dissection` of the file ``path``, with the fields naming units needs;
    :class:`~cxrsem.errors.UsageError` otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read dissection result {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"dissection result {path} is not valid JSON: {exc}") from None
    try:
        result = parse_dissection(data, path)
        for name, value in (("layer", result.layer), ("model.sha256", result.sha256),
                            ("num_units", result.num_units)):
            if value is None:
                raise ValueError(f"missing or invalid {name!r}")
    except SchemaError as exc:
        raise UsageError(f"{path}: {exc}") from None
    except ValueError as exc:
        raise UsageError(f"malformed dissection result {path}: {exc}") from None
    return result


def load_dissection(path: str | Path, *, layer: str, sha256: str, num_units: int,
                    model_name: str = "the checkpoint") -> Dissection:
    """The dissection of ``layer`` of the model with weights checksum ``sha256``, to name the units
    of an attribution.

    ``path`` is a ``dissection.json`` or a folder searched for ``**/dissection.json`` (the layout
    ``DISSECT_DIR/<model-stem>/<layer>/dissection.json`` of ``cxrsem dissect``); the file whose
    layer and checksum match is used.  A result for another model (checksum) or layer, or with
    another unit count, is a :class:`~cxrsem.errors.UsageError`: its labels would name the wrong
    units.
    """
    path = Path(path)
    if path.is_dir():
        # Hidden folders hold activation caches and result sets being written or replaced.
        found = sorted(p for p in path.rglob("dissection.json")
                       if not any(part.startswith(".") for part in p.relative_to(path).parts[:-1]))
        if not found:
            raise UsageError(f"no dissection.json under {path}")
        seen = []
        for candidate in found:
            try:
                result = _read_for_labels(candidate)
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
    return _check(_read_for_labels(path), layer, sha256, num_units, model_name)


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
    bad = [u.unit for u in result.units if not 0 <= u.unit < num_units]
    if bad:
        raise UsageError(f"dissection {result.path} names unit {bad[0]}, outside 0..{num_units - 1}")
    return result
