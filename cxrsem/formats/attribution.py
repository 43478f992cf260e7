"""The attribution result: ``<image-stem>.json`` (schema ``cxrsem-attribution/1``) and the tables of a
run over several images (``summary.csv``, ``concepts.csv``).

The one home of this file contract: the schema, the JSON record (:func:`attribution_record`), the
CSV rows and the reader the report uses (:func:`parse_attribution`).  Fields are documented in
``docs/attribution.md``.  The record of a run of the default method ``ig`` keeps every field it had
before attribution methods were components (``method`` is its quadrature rule, ``steps``,
``baseline``); ``attribution_method`` and ``method_options`` say which method ran with which
options.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxrsem.formats.dissection import UNLABELLED

__all__ = ["ATTRIBUTION_SCHEMA", "CONCEPT_COLUMNS", "SCHEMA", "SUMMARY_COLUMNS", "Attribution",
           "ablation_cells", "ablation_columns",
           "attribution_record", "concept_rows", "csv_text", "method_fields", "parse_attribution",
           "skipped_row", "summary_row"]

SCHEMA = "cxrsem-attribution/1"
ATTRIBUTION_SCHEMA = SCHEMA

# New columns go at the end: scripts that read the file by position keep working.
SUMMARY_COLUMNS = ("image", "status", "target", "prediction", "top_unit", "top_concept",
                   "top_share", "top_concept_overall", "rel_gap", "path", "json", "error",
                   "top_labelled_unit", "top_labelled_rank", "top_labelled_concept",
                   "top_labelled_share")
CONCEPT_COLUMNS = ("concept", "images", "mean_share", "top_in_images")


# --- writer ----------------------------------------------------------------------------------------


def _json_float(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def method_fields(method: str, options: Mapping[str, Any], baseline: str | None) -> dict[str, Any]:
    """The record's description of the attribution method: ``method`` (the quadrature rule of a
    method that has one -- ``ig`` -- else the method's name), ``steps`` (``None`` without),
    ``baseline``, ``attribution_method`` and ``method_options``."""
    return {"method": options.get("rule", method), "steps": options.get("steps"),
            "baseline": baseline, "attribution_method": method, "method_options": dict(options)}


def _unit_entries(contrib: np.ndarray, order: np.ndarray, total: float,
                  dissection: Any | None) -> list[dict[str, Any]]:
    entries = []
    for rank, unit in enumerate(order, start=1):
        unit = int(unit)
        label = dissection.label(unit) if dissection is not None else None
        labelled = bool(label and label.labelled)
        entries.append({
            "rank": rank, "unit": unit, "contribution": float(contrib[unit]),
            "share": float(contrib[unit] / total) if total > 0 else 0.0,
            "concept": (label.concept if labelled else UNLABELLED) if dissection is not None
            else None,
            "best_concept": label.concept if label else None,
            "iou": label.iou if label else None,
            "labelled": labelled,
            "dissected": dissection is not None,
        })
    return entries


def _top_labelled(contrib: np.ndarray, order: np.ndarray, total: float, dissection: Any | None,
                  s: np.ndarray) -> dict[str, Any] | None:
    """The highest-ranked unit the dissection labels (the paper: "select the top contributing
    unit(s) and use their annotations (if it exists)"), with its rank and map; None without a
    dissection or when no unit is labelled."""
    if dissection is None:
        return None
    for rank, unit in enumerate(order, start=1):
        label = dissection.label(int(unit))
        if label.labelled:
            (entry,) = _unit_entries(contrib, np.asarray([unit]), total, dissection)
            return {**entry, "rank": rank, "map": s[int(unit)].tolist()}
    return None


def _concepts(contrib: np.ndarray, dissection: Any | None) -> list[dict[str, Any]]:
    """Contributions summed over the units labelled with each concept (plus ``unlabelled``)."""
    if dissection is None:
        return []
    total = float(contrib.sum())
    sums: dict[str, list[float]] = {}
    for unit, value in enumerate(contrib):
        label = dissection.label(unit)
        name = label.concept if label.labelled else UNLABELLED
        sums.setdefault(name, []).append(float(value))
    rows = [{"concept": name, "contribution": sum(vals),
             "share": sum(vals) / total if total > 0 else 0.0, "units": len(vals)}
            for name, vals in sums.items()]
    return sorted(rows, key=lambda r: (r["concept"] == UNLABELLED, -r["contribution"]))


def _completeness(sum_s: float, f_a: float | None, f_0: float | None) -> dict[str, Any]:
    if f_a is None or f_0 is None:  # the method defines no f(A), f(0): nothing to check
        return {"sum_s": _json_float(sum_s), "delta": None, "abs_gap": None, "rel_gap": None}
    delta = f_a - f_0
    gap = abs(sum_s - delta)
    rel = gap / abs(delta) if delta != 0 else (0.0 if gap == 0 else None)
    return {"sum_s": _json_float(sum_s), "delta": _json_float(delta), "abs_gap": _json_float(gap),
            "rel_gap": None if rel is None else _json_float(rel)}


def attribution_record(*, image: str, header: Mapping[str, Any], target: Mapping[str, Any],
                       predictions: Mapping[str, float], s: np.ndarray, contrib: np.ndarray,
                       f_a: float | None, f_0: float | None, top_k: int,
                       dissection: Any | None) -> dict[str, Any]:
    """The JSON record of one image: ``s`` (``[K, h, w]``) and its unit scores ``contrib``
    (``[K]``, ``sum |s|``), ``f(A)``/``f(0)`` (``None`` where the method defines none), the
    top-k units with their maps, named by ``dissection``
    (:class:`cxrsem.formats.dissection.Dissection`) when given; ``header`` holds the run's
    fields (model, layer, split path, :func:`method_fields`, device, dtype)."""
    total = float(contrib.sum())
    order = np.argsort(-contrib, kind="stable")
    top = _unit_entries(contrib, order[:top_k], total, dissection)
    for entry in top:
        entry["map"] = s[entry["unit"]].tolist()
    return {
        "schema": SCHEMA,
        "image": image,
        **header,
        "target": dict(target),
        "prediction": {k: _json_float(v) for k, v in predictions.items()},
        "f_input": _json_float(f_a),
        "f_baseline": _json_float(f_0),
        "completeness": _completeness(float(s.sum()), f_a, f_0),
        "num_units": int(s.shape[0]),
        "map_size": list(s.shape[1:]),
        "units": [float(c) for c in contrib],
        "top_k": top,
        "top_labelled": _top_labelled(contrib, order, total, dissection, s),
        "concepts": _concepts(contrib, dissection),
        "dissection": None if dissection is None else {
            "path": str(dissection.path), "iou_threshold": dissection.iou_threshold},
        "figure": None,
    }


def summary_row(image: str, data: Mapping[str, Any], json_name: str = "") -> dict[str, Any]:
    """The ``summary.csv`` row of an attributed image (``data``: its record)."""
    top = data["top_k"][0]
    concepts = [c for c in data["concepts"] if c["concept"] != UNLABELLED]
    return {
        "image": image, "status": "ok", "target": data["target"]["name"],
        "prediction": data["prediction"].get(data["target"]["name"]),
        "top_unit": top["unit"], "top_concept": top["concept"] or "",
        "top_share": round(top["share"], 6),
        "top_concept_overall": concepts[0]["concept"] if concepts else "",
        **_top_labelled_cells(data.get("top_labelled")),
        "rel_gap": data["completeness"]["rel_gap"], "path": data["path"],
        "json": json_name, "error": "",
        **(ablation_cells(data["ablation"]) if "ablation" in data else {}),
    }


def _top_labelled_cells(entry: Mapping[str, Any] | None) -> dict[str, Any]:
    if not entry:
        return {}
    return {"top_labelled_unit": entry["unit"], "top_labelled_rank": entry["rank"],
            "top_labelled_concept": entry["concept"],
            "top_labelled_share": round(entry["share"], 6)}


def ablation_columns(ks: Sequence[int]) -> list[str]:
    """The ``summary.csv`` columns of ``attribute --ablate``: per k, the deletion and insertion
    changes of the top-k units and the mean deletion change of random sets of k units."""
    return [f"{kind}_k{k}" for k in ks for kind in ("deletion", "random_deletion", "insertion")]


def ablation_cells(ablation: Mapping[str, Any]) -> dict[str, Any]:
    """The ``summary.csv`` cells of one record's ``ablation`` block."""
    cells: dict[str, Any] = {}
    for j, k in enumerate(ablation["ks"]):
        cells[f"deletion_k{k}"] = round(ablation["deletion"][j], 8)
        cells[f"insertion_k{k}"] = round(ablation["insertion"][j], 8)
        means = ablation["random_deletion"]["mean"]
        cells[f"random_deletion_k{k}"] = round(means[j], 8) if means else None
    return cells


def skipped_row(image: str, error: str) -> dict[str, Any]:
    """The ``summary.csv`` row of an image that could not be read."""
    return {"image": image, "status": "skipped", "error": error}


def concept_rows(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``concepts.csv``: per concept, the images it appears in, its mean share and how often it
    is the top named concept."""
    shares: dict[str, list[float]] = {}
    tops: dict[str, int] = {}
    for data in records:
        concepts = data["concepts"]
        for row in concepts:
            shares.setdefault(row["concept"], []).append(row["share"])
        named = [c for c in concepts if c["concept"] != UNLABELLED]
        if named:
            tops[named[0]["concept"]] = tops.get(named[0]["concept"], 0) + 1
    n = max(len(records), 1)
    rows = [{"concept": name, "images": len(vals), "mean_share": round(sum(vals) / n, 6),
             "top_in_images": tops.get(name, 0)} for name, vals in shares.items()]
    return sorted(rows, key=lambda r: (r["concept"] == UNLABELLED, -r["mean_share"]))


def csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})
    return buffer.getvalue()


# --- reader ----------------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass
class Attribution:
    """One ``<stem>.json`` of ``cxrsem attribute``, as the report reads it."""

    json_path: Path
    data: dict[str, Any] = field(repr=False)
    image: str
    sha256: str | None
    layer: str | None
    target: str
    prediction: float | None
    top_k: list[dict[str, Any]]
    units: list[float] | None = field(repr=False)
    rel_gap: float | None
    method: str = "ig"  # the attribution method and its settings, e.g. "ig (gausslegendre, 32 steps)"

    @property
    def stem(self) -> str:
        return self.json_path.stem

    def figure(self) -> Path | None:
        name = self.data.get("figure") or f"{self.stem}.png"
        path = self.json_path.parent / Path(str(name)).name
        return path if path.is_file() else None


def parse_attribution(path: Path, data: Mapping[str, Any]) -> Attribution:
    """An :class:`Attribution` from a record; ``ValueError`` names what is wrong."""
    schema = data.get("schema")
    if schema != ATTRIBUTION_SCHEMA:
        raise ValueError(f"schema {schema!r}, expected {ATTRIBUTION_SCHEMA}")
    top_k = [dict(row) for row in data.get("top_k") or [] if isinstance(row, Mapping)
             and isinstance(row.get("unit"), int)]
    if not top_k:
        raise ValueError("it has no top_k units")
    model = data.get("model") if isinstance(data.get("model"), Mapping) else {}
    target = data.get("target") if isinstance(data.get("target"), Mapping) else {}
    name = str(target.get("name")) if target.get("name") is not None else "?"
    prediction = data.get("prediction") if isinstance(data.get("prediction"), Mapping) else {}
    units = data.get("units")
    units = [float(v) if _number(v) is not None else 0.0 for v in units] if isinstance(units, list) else None
    completeness = data.get("completeness") if isinstance(data.get("completeness"), Mapping) else {}
    return Attribution(
        json_path=path, data=dict(data), image=str(data.get("image") or path.stem),
        sha256=model.get("sha256"), layer=data.get("layer"), target=name,
        prediction=_number(prediction.get(name)), top_k=top_k, units=units,
        rel_gap=_number(completeness.get("rel_gap")), method=describe_method(data))


def describe_method(data: Mapping[str, Any]) -> str:
    """``"ig (gausslegendre, 32 steps)"``, ``"act-times-one (scale=2.0)"``: the method of a record.
    Records written before attribution methods were components name only IG's rule (``method``)."""
    name = data.get("attribution_method")
    if name is None:
        name, options = "ig", {"rule": data.get("method"), "steps": data.get("steps")}
    else:
        options = data.get("method_options") if isinstance(data.get("method_options"), Mapping) else {}
    details = [str(options["rule"])] if options.get("rule") is not None else []
    if options.get("steps") is not None:
        details.append(f"{options['steps']} steps")
    details += [f"{k}={v}" for k, v in options.items() if k not in ("rule", "steps")]
    return f"{name} ({', '.join(details)})" if details else str(name)
