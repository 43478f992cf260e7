"""``attribute``: semantic attribution of predictions to (named) units, paper Sec. 2.3 and 3.5.

For every image: Integrated Gradients at layer ``L`` with a zero-activation baseline (Eq. 6, see
:mod:`cxrsem.attribution.ig`), unit contributions ``sum_i |s_k^i|``, the top-k units named by a
dissection, a concept-level summary, the completeness check, and the Fig. 5 overlay.

Outputs in ``out`` (schema ``cxrsem-attribution/1``, documented in ``docs/attribution.md``)::

    <image-stem>.json   <image-stem>.png   summary.csv + concepts.csv (several images / a folder)
    config.toml         manifest.json
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrsem.attribution.dissection import UNLABELLED, Dissection, load_dissection
from cxrsem.attribution.ig import integrated_gradients
from cxrsem.attribution.quadrature import check_method, check_steps
from cxrsem.attribution.render import render_figure, unit_title
from cxrsem.attribution.targets import (
    Target,
    default_columns,
    parse_target,
    prediction_table,
    target_for_column,
    values_function,
)
from cxrsem.checkpoint import build_model, load_model, state_dict_sha256
from cxrsem.engine.device import resolve_device
from cxrsem.engine.layers import resolve_layers
from cxrsem.engine.preprocess import normalize
from cxrsem.engine.split import split_at
from cxrsem.errors import CxrsemError, DataError, UsageError
from cxrsem.imageio import is_dicom, read_image, to_tensor
from cxrsem.outputs import ensure_output_dir, write_config, write_json, write_manifest, write_text

__all__ = ["SCHEMA", "AttributionResult", "AttributionRun", "attribute", "collect_images"]

SCHEMA = "cxrsem-attribution/1"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".bmp", ".tif", ".tiff", ".gif",
                  ".webp", ".pgm", ".ppm")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
Progress = Callable[..., None]


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


def collect_images(inputs: str | Path | Sequence[str | Path]) -> tuple[list[Path], bool]:
    """Image files from files and folders (a folder: its image files, sorted, not recursive).

    Returns ``(paths, batch)``; ``batch`` is False for exactly one file given as a file -- then an
    unreadable image is an error instead of a skipped entry.
    """
    items = [inputs] if isinstance(inputs, str | Path) else list(inputs)
    if not items:
        raise UsageError("no input images given")
    paths: list[Path] = []
    batch = len(items) > 1
    for item in items:
        item = Path(item)
        if item.is_dir():
            batch = True
            found = sorted(p for p in item.iterdir() if p.is_file() and not p.name.startswith(".")
                           and (p.suffix.lower() in IMAGE_SUFFIXES or is_dicom(p)))
            if not found:
                raise DataError(f"no images (PNG, JPEG, DICOM, ...) in folder {item}")
            paths.extend(found)
        elif item.is_file():
            paths.append(item)
        else:
            raise DataError(f"image not found: {item}")
    return paths, batch


def _json_float(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _unique_stem(stem: str, used: set[str]) -> str:
    name, n = stem, 1
    while name in used:
        n += 1
        name = f"{stem}-{n}"
    used.add(name)
    return name


def _unit_entries(contrib: np.ndarray, order: np.ndarray, total: float,
                  dissection: Dissection | None) -> list[dict[str, Any]]:
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


def _concepts(contrib: np.ndarray, dissection: Dissection | None) -> list[dict[str, Any]]:
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


def _load(checkpoint: str | Path | Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    if isinstance(checkpoint, Mapping):
        return dict(checkpoint), str(checkpoint.get("path", "<in memory>"))
    return load_model(str(checkpoint)), str(checkpoint)


def attribute(images: str | Path | Sequence[str | Path] | torch.Tensor,
              checkpoint: str | Path | Mapping[str, Any], layer: str, *,
              dissection: str | Path | None = None, target: str | int | None = None,
              top_k: int = 3, steps: int = 32, method: str = "gausslegendre",
              device: str | torch.device = "auto", batch_size: int = 32,
              out: str | Path | None = None, split: str = "auto", dtype: str = "float32",
              render: bool = True, progress: Progress | None = None) -> AttributionRun:
    """Semantic attribution (paper Sec. 2.3, Eq. 6) of each image's prediction at ``layer``.

    ``images``: image files (PNG/JPEG 8/16-bit, DICOM) and/or folders, or a tensor
    ``[N, 1, S, S]`` in ``[0, 1]``; ``checkpoint``: a cxrsem checkpoint (path or loaded dict);
    ``layer``: a module path or unambiguous suffix (``denseblock4``); ``dissection``: a
    ``dissection.json`` or a folder holding one for this model and layer; ``target``: an output
    name, an index or ``score`` (default: ``score`` for global-score and zones models, the most
    probable output for classification); ``steps``/``method``: the quadrature of the path integral;
    ``batch_size``: images per head pass and (image, step) rows per tail pass; ``split``: ``auto``
    (torch.fx, hook fallback), ``fx`` or ``hook``; ``out``: where to write the JSON/PNG files
    (nothing is written when ``None``).  Inputs are validated before anything is written: a bad
    target, dissection, layer or step count fails with a :class:`~cxrsem.errors.CxrsemError`.
    """
    method = check_method(method)
    steps = check_steps(steps)
    if int(top_k) < 1:
        raise UsageError(f"--top-k must be at least 1, got {top_k}")
    if int(batch_size) < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    if dtype not in DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}; use float32 or float64")
    emit = progress or (lambda *_a, **_k: None)

    # Inputs first: a typo in a path fails before the model is loaded.
    tensor_input = isinstance(images, torch.Tensor)
    if tensor_input:
        paths, batch_mode = [], images.shape[0] > 1
    else:
        paths, batch_mode = collect_images(images)
    preloaded: dict[int, np.ndarray] = {}
    if not tensor_input and not batch_mode:
        preloaded[0] = read_image(paths[0])  # a single unreadable image is an error

    ckpt, model_path = _load(checkpoint)
    task, spec_in = ckpt["task"], ckpt["input"]
    kind, outputs = task["kind"], list(task["outputs"])
    target_spec = parse_target(target, kind, outputs)
    size, channels = int(spec_in["size"]), int(spec_in.get("channels", 1))
    normalization = spec_in.get("normalization")
    model = build_model(ckpt, source=model_path)
    full_layer = resolve_layers(model, [layer], size, channels)[0]
    dev = resolve_device(device)
    torch_dtype = DTYPES[dtype]
    model.to(device=dev, dtype=torch_dtype)
    generator = torch.Generator().manual_seed(0)
    example = torch.rand(1, channels, size, size, generator=generator, dtype=torch_dtype)
    split_model = split_at(model, full_layer, normalize(example.to(dev), normalization), mode=split)
    num_units = int(split_model.activation_shape[0])
    sha = state_dict_sha256(ckpt["state_dict"])
    dissect = None
    if dissection is not None:
        dissect = load_dissection(dissection, layer=full_layer, sha256=sha, num_units=num_units,
                                  model_name=Path(model_path).name)

    out_dir = ensure_output_dir(out) if out is not None else None
    if out_dir is not None:
        write_config(out_dir, {"attribute": {
            "images": [str(p) for p in paths] or None, "model": model_path, "layer": full_layer,
            "dissection": str(dissection) if dissection is not None else None,
            "target": None if target is None else str(target), "top_k": int(top_k),
            "steps": steps, "method": method, "device": str(dev), "batch_size": int(batch_size),
            "out": str(out_dir)}})
        write_manifest(out_dir, device=str(dev), extra={"split_path": split_model.path,
                                                        "split_reason": split_model.reason})

    values = values_function(kind, len(outputs))
    pred_names = outputs + (["score"] if kind == "zones" else [])
    n_items = images.shape[0] if tensor_input else len(paths)
    emit("start", total=n_items, path=split_model.path, reason=split_model.reason,
         layer=full_layer, device=str(dev))

    used: set[str] = set()
    results: list[AttributionResult] = []
    rows: list[dict[str, Any]] = []  # summary.csv, in input order
    skipped: list[tuple[str, str]] = []
    for start in range(0, n_items, int(batch_size)):
        names: list[str] = []
        pictures: list[torch.Tensor] = []
        for i in range(start, min(start + int(batch_size), n_items)):
            if tensor_input:
                names.append(f"image-{i:03d}")
                picture = images[i].detach().to(torch.float32).cpu()
                pictures.append(to_tensor(picture, size))
                continue
            path = paths[i]
            try:
                array = preloaded.pop(i) if i in preloaded else read_image(path)
                pictures.append(to_tensor(array, size))
                names.append(str(path))
            except CxrsemError as exc:
                if not batch_mode:
                    raise
                skipped.append((str(path), str(exc)))
                rows.append({"image": str(path), "status": "skipped", "error": str(exc)})
                emit("skipped", image=str(path), reason=str(exc))
        if not pictures:
            continue
        batch = torch.stack(pictures)  # [B, 1, S, S] in [0, 1]
        model_input = batch.repeat(1, channels, 1, 1) if channels != 1 else batch
        model_input = normalize(model_input.to(device=dev, dtype=torch_dtype), normalization)
        if target_spec is None:
            columns = default_columns(kind)
        else:
            columns = torch.full((batch.shape[0],), target_spec.column, dtype=torch.long)
        layer_attr = integrated_gradients(split_model, model_input, values=values, columns=columns,
                                          steps=steps, method=method, batch_size=int(batch_size))
        s_all = layer_attr.attributions.detach().cpu().to(torch.float64)
        preds = prediction_table(kind, layer_attr.logits.detach().cpu().to(torch.float64))
        contributions = s_all.abs().flatten(2).sum(-1).numpy()
        for j, name in enumerate(names):
            column = int(layer_attr.columns[j])
            chosen = target_spec or target_for_column(kind, outputs, column, default=True)
            result = _result(
                name=name, stem=_unique_stem(Path(name).stem if not tensor_input else name, used),
                s=s_all[j].numpy(), contrib=contributions[j], picture=batch[j, 0].numpy(),
                f_a=float(layer_attr.f_input[j]), f_0=float(layer_attr.f_baseline[j]),
                target=chosen, predictions=dict(zip(pred_names, preds[j].tolist(), strict=True)),
                top_k=int(top_k), dissection=dissect,
                header={"model": {"path": model_path, "sha256": sha, "arch": ckpt["arch"]["name"],
                                  "task": kind},
                        "layer": full_layer, "path": split_model.path,
                        "split_note": split_model.reason, "method": method, "steps": steps,
                        "baseline": "zero activations", "device": str(dev), "dtype": dtype})
            if out_dir is not None:
                _write(result, out_dir, render)
            results.append(result)
            rows.append(_summary_row(result))
            emit("image", result=result)

    run = AttributionRun(results=results, skipped=skipped, layer=full_layer,
                         path=split_model.path, split_reason=split_model.reason,
                         model_sha256=sha, out=out_dir)
    if out_dir is not None and batch_mode:
        run.summary_csv = write_text(out_dir / "summary.csv", _csv(rows, SUMMARY_COLUMNS))
        if dissect is not None and results:
            run.concepts_csv = write_text(out_dir / "concepts.csv",
                                          _csv(_concept_rows(results), CONCEPT_COLUMNS))
    if not results:
        where = f"; see {run.summary_csv}" if run.summary_csv is not None else ""
        raise DataError(f"none of the {len(skipped)} image(s) could be read{where}")
    emit("done", run=run)
    return run


def _result(*, name: str, stem: str, s: np.ndarray, contrib: np.ndarray, picture: np.ndarray,
            f_a: float, f_0: float, target: Target, predictions: dict[str, float], top_k: int,
            dissection: Dissection | None, header: dict[str, Any]) -> AttributionResult:
    total = float(contrib.sum())
    order = np.argsort(-contrib, kind="stable")
    top = _unit_entries(contrib, order[:top_k], total, dissection)
    for entry in top:
        entry["map"] = s[entry["unit"]].tolist()
    sum_s = float(s.sum())
    delta = f_a - f_0
    gap = abs(sum_s - delta)
    rel = gap / abs(delta) if delta != 0 else (0.0 if gap == 0 else None)
    data = {
        "schema": SCHEMA,
        "image": name,
        **header,
        "target": target.to_json(),
        "prediction": {k: _json_float(v) for k, v in predictions.items()},
        "f_input": _json_float(f_a),
        "f_baseline": _json_float(f_0),
        "completeness": {"sum_s": _json_float(sum_s), "delta": _json_float(delta),
                         "abs_gap": _json_float(gap),
                         "rel_gap": None if rel is None else _json_float(rel)},
        "num_units": int(s.shape[0]),
        "map_size": list(s.shape[1:]),
        "units": [float(c) for c in contrib],
        "top_k": top,
        "concepts": _concepts(contrib, dissection),
        "dissection": None if dissection is None else {
            "path": str(dissection.path), "iou_threshold": dissection.iou_threshold},
        "figure": None,
    }
    return AttributionResult(image=name, stem=stem, data=data, attributions=s.astype(np.float32),
                             contributions=contrib, input_image=picture)


def _write(result: AttributionResult, out_dir: Path, render: bool) -> None:
    if render:
        target = result.data["target"]["name"]
        prediction = result.data["prediction"].get(target)
        shown = f"{prediction:.3f}" if prediction is not None else "n/a"
        result.png_path = render_figure(
            out_dir / f"{result.stem}.png", result.input_image,
            [np.asarray(e["map"]) for e in result.top_k], [unit_title(e) for e in result.top_k],
            f"{Path(result.image).name}\n{target}: {shown}")
        result.data["figure"] = result.png_path.name
    result.json_path = write_json(out_dir / f"{result.stem}.json", result.data)


SUMMARY_COLUMNS = ("image", "status", "target", "prediction", "top_unit", "top_concept",
                   "top_share", "top_concept_overall", "rel_gap", "path", "json", "error")
CONCEPT_COLUMNS = ("concept", "images", "mean_share", "top_in_images")


def _summary_row(result: AttributionResult) -> dict[str, Any]:
    data = result.data
    top = data["top_k"][0]
    concepts = [c for c in data["concepts"] if c["concept"] != UNLABELLED]
    return {
        "image": result.image, "status": "ok", "target": data["target"]["name"],
        "prediction": data["prediction"].get(data["target"]["name"]),
        "top_unit": top["unit"], "top_concept": top["concept"] or "",
        "top_share": round(top["share"], 6),
        "top_concept_overall": concepts[0]["concept"] if concepts else "",
        "rel_gap": data["completeness"]["rel_gap"], "path": data["path"],
        "json": result.json_path.name if result.json_path else "", "error": "",
    }


def _concept_rows(results: Sequence[AttributionResult]) -> list[dict[str, Any]]:
    shares: dict[str, list[float]] = {}
    tops: dict[str, int] = {}
    for result in results:
        concepts = result.data["concepts"]
        for row in concepts:
            shares.setdefault(row["concept"], []).append(row["share"])
        named = [c for c in concepts if c["concept"] != UNLABELLED]
        if named:
            tops[named[0]["concept"]] = tops.get(named[0]["concept"], 0) + 1
    n = max(len(results), 1)
    rows = [{"concept": name, "images": len(vals), "mean_share": round(sum(vals) / n, 6),
             "top_in_images": tops.get(name, 0)} for name, vals in shares.items()]
    return sorted(rows, key=lambda r: (r["concept"] == UNLABELLED, -r["mean_share"]))


def _csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})
    return buffer.getvalue()
