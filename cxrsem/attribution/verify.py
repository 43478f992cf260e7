"""``verify``: are the units an attribution method names causal?  Ablation over a dataset split.

Two checks, both at the speed of the tail (the head runs once per image; every ablation is a row
of the split model's tail):

1. **Deletion and insertion curves per method** (:mod:`cxrsem.attribution.ablation`): for each
   image of the split and each attribution method, zero the method's top-k units (deletion) or
   keep only them (insertion), and the same for random sets of k units.  Averaged over images,
   with percentile bootstrap intervals over images, and the **AOPC** (area over the perturbation
   curve, Samek et al. 2017): the mean deletion change over the ks -- which method's top units
   matter most.  Random units are the reference every method must beat.
2. **Concept ablation** (with a dissection): zero all detectors of concept c (the dissection's
   paper-rule labels) and measure the change of the task's metric over the split (AUROC mean for
   multi-label, zone MAE for severity zones, MAE for a global score, AUROC for binary), against
   zeroing as many random units of the layer (R draws); paired bootstrap intervals over images
   (the same resampled images for every condition).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrsem.api import build_dataset, resolve_component
from cxrsem.attribution.ablation import DEFAULT_KS, DEFAULT_RANDOM, AblationSettings, ablate_image
from cxrsem.attribution.methods import complete, unit_scores
from cxrsem.attribution.targets import default_columns, values_function
from cxrsem.engine.data import make_loader
from cxrsem.errors import DataError, UsageError
from cxrsem.formats.dissection import UNLABELLED, load_dissection
from cxrsem.outputs import output_dir, write_json
from cxrsem.statistics.bootstrap import interval
from cxrsem.tasks import predict
from cxrsem.training.metrics import compute_metrics, primary_metric

SCHEMA = "cxrsem-verify/1"
DEFAULT_METHODS = ("ig", "grad-x-act", "activation", "gradcam")
Progress = Callable[..., None]


@dataclass
class VerifySettings:
    methods: tuple[str, ...] = DEFAULT_METHODS
    ks: tuple[int, ...] = DEFAULT_KS
    random_draws: int = DEFAULT_RANDOM     # random unit sets per k (curves) and per concept
    steps: int = 16                        # integration points of ig
    split: str = "val"
    limit: int = 0                         # first N images of the split (0: all)
    batch_size: int = 16
    resamples: int = 200                   # bootstrap resamples of the images
    confidence: float = 0.95
    seed: int = 0

    def validate(self) -> None:
        if not self.methods:
            raise UsageError("--methods must name at least one attribution method")
        AblationSettings(self.ks, self.random_draws, self.seed).validate()
        if self.limit < 0 or self.batch_size < 1 or self.resamples < 1:
            raise UsageError("--limit must be >= 0, --batch-size and --resamples >= 1")
        if not 0 < self.confidence < 1:
            raise UsageError(f"--confidence must be in (0, 1), got {self.confidence}")


@dataclass
class Estimate:
    value: float
    low: float
    high: float

    def to_json(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}

    def __str__(self) -> str:
        return f"{self.value:.3g} [{self.low:.3g}, {self.high:.3g}]"


@dataclass
class MethodCurves:
    method: str
    ks: list[int]
    deletion: list[Estimate]
    insertion: list[Estimate]
    aopc: Estimate


@dataclass
class ConceptAblation:
    concept: str
    units: list[int]
    change: Estimate          # metric(ablated) - metric(all units)
    random_change: Estimate   # the same for as many random units (mean over draws)


@dataclass
class VerifyResult:
    model: str
    layer: str
    images: int
    metric: str
    metric_value: float
    curves: list[MethodCurves] = field(default_factory=list)
    random: MethodCurves | None = None
    concepts: list[ConceptAblation] = field(default_factory=list)
    out: Path | None = None

    def sentences(self) -> list[str]:
        """One line per finding, as the terminal and the README state them."""
        lines = []
        if self.curves:
            best = max(self.curves, key=lambda c: c.aopc.value)
            ref = f"; random units {self.random.aopc}" if self.random else ""
            lines.append(f"AOPC (mean output drop when zeroing the top-k units, k = "
                         f"{', '.join(map(str, best.ks))}): " + ", ".join(
                             f"{c.method} {c.aopc}" for c in self.curves) + ref
                         + f"; largest: {best.method}")
        for c in self.concepts:
            lines.append(f"zeroing the {len(c.units)} {c.concept} detector(s) changes "
                         f"{self.metric} by {c.change}; {len(c.units)} random unit(s): "
                         f"{c.random_change}")
        return lines


def _interval(samples: np.ndarray, value: float, confidence: float) -> Estimate:
    low, high = interval(samples, confidence)
    return Estimate(float(value), float(low), float(high))


def _resamples(n: int, count: int, seed: int) -> np.ndarray:
    """``[B, n]`` image indices drawn with replacement (row 0 is not the identity: every row is a
    resample; the point estimates come from all images)."""
    return np.random.default_rng([int(seed), 0xAB1]).integers(0, n, size=(count, n))


def _curves(name: str, ks: list[int], deletion: np.ndarray, insertion: np.ndarray,
            draws: np.ndarray, confidence: float) -> MethodCurves:
    """Mean curves ``[N, J] -> [J]`` with intervals from the resampled image rows ``draws``."""
    def summarise(values: np.ndarray) -> list[Estimate]:
        return [_interval(values[draws, j].mean(axis=1), values[:, j].mean(), confidence)
                for j in range(values.shape[1])]

    aopc = deletion.mean(axis=1)
    return MethodCurves(name, ks, summarise(deletion), summarise(insertion),
                        _interval(aopc[draws].mean(axis=1), aopc.mean(), confidence))


def _metric(kind: str, logits: torch.Tensor, targets: torch.Tensor, names: list[str],
            metric: str) -> float:
    value = compute_metrics(kind, logits, targets, names).get(metric)
    return float("nan") if value is None else float(value)


def _per_image_errors(kind: str, logits: torch.Tensor, targets: torch.Tensor) -> np.ndarray | None:
    """Per-image absolute errors whose mean is the task's MAE (zones: mean over the zones of the
    expected score's error, Eq. 4; global score: the score's error), so a resample's metric is a
    mean of rows; None for AUROC metrics (not a mean over images)."""
    if kind not in ("zones", "global-score"):
        return None
    prediction = predict(kind, logits).double()
    return (prediction - targets.double()).abs().mean(dim=1).numpy()


def _metric_resamples(kind: str, logits: torch.Tensor, targets: torch.Tensor, names: list[str],
                      metric: str, draws: np.ndarray) -> np.ndarray:
    """The metric on every resample of the images (``draws [B, N]``): a mean of per-image errors
    where the metric is one (checked against :func:`compute_metrics` on all images), else the
    metric recomputed per resample."""
    errors = _per_image_errors(kind, logits, targets)
    if errors is not None and np.isclose(errors.mean(), _metric(kind, logits, targets, names, metric),
                                         rtol=1e-5, atol=1e-7):
        return errors[draws].mean(axis=1)
    return np.asarray([_metric(kind, logits[torch.from_numpy(rows)],
                               targets[torch.from_numpy(rows)], names, metric) for rows in draws])


def verify(checkpoint: str | Path, layer: str, dataset: str, *, dissection: str | Path | None = None,
           dataset_options: Mapping[str, Any] | None = None,
           data_roots: Mapping[str, str] | None = None, settings: VerifySettings | None = None,
           device: str = "auto", out: str | Path | None = None,
           progress: Progress | None = None) -> VerifyResult:
    """Deletion/insertion curves and AOPC per attribution method, and (with ``dissection``)
    concept ablation against random units, over ``dataset``'s ``settings.split``."""
    from cxrsem.attribution.api import _build_method, _load_model  # the attribute pipeline's steps

    settings = settings or VerifySettings()
    settings.validate()
    emit = progress or (lambda *_a, **_k: None)
    methods = [_build_method(m, None, settings.steps if m == "ig" else None, None)
               for m in settings.methods]
    model, _ = _load_model(checkpoint, layer, None, device, "float32", "auto")
    info, options = resolve_component("dataset", dataset, dict(dataset_options or {}))
    data = build_dataset(info, options, split=settings.split, image_size=model.spec.size,
                         seed=settings.seed, data_roots=data_roots)
    if model.kind not in data.outputs:
        raise UsageError(f"dataset {dataset} has no {model.kind!r} targets for this model "
                         f"(it has {', '.join(data.outputs)})")
    count = min(len(data), settings.limit) if settings.limit else len(data)
    if count == 0:
        raise DataError(f"dataset {dataset} yields no {settings.split} images")
    detectors = _detectors(dissection, model) if dissection is not None else {}
    units = model.num_units
    ablation = AblationSettings(settings.ks, settings.random_draws, settings.seed)
    # The random sets do not depend on the method: drawn (and run through the tail) once.
    without_random = AblationSettings(settings.ks, 0, settings.seed)
    ks = ablation.ks_for(units)
    values = values_function(model.kind, len(model.outputs))
    concept_sets = _concept_unit_sets(detectors, units, settings)

    deletion = {m.name: [] for m in methods}
    insertion = {m.name: [] for m in methods}
    random_deletion, random_insertion, targets_all = [], [], []
    logits_by_condition: dict[str, list[torch.Tensor]] = {"all": []}
    for name in concept_sets:
        logits_by_condition[name] = []
    emit("start", total=count)
    seen = 0
    for batch in make_loader(data, batch_size=settings.batch_size):
        images_raw = batch["image"][:max(0, count - seen)]
        if images_raw.shape[0] == 0:
            break
        n = images_raw.shape[0]
        targets_all.append(batch["targets"][model.kind][:n])
        images = model.spec.prepare(images_raw, device=model.device, dtype=model.dtype)
        with torch.no_grad():
            activations, extras = model.split.head(images)
        columns = default_columns(model.kind)
        for method in methods:
            result = complete(method.run(model.split, images, values=values, columns=columns,
                                         batch_size=settings.batch_size * 8),
                              model.split, images, columns, settings.batch_size)
            scores = unit_scores(result.attributions.detach())
            first = method is methods[0]
            for j in range(n):
                curve = ablate_image(model.split, activations, extras, j, n, scores[j], values,
                                     int(result.columns[j]), ablation if first else without_random,
                                     settings.batch_size * 8, seen + j)
                deletion[method.name].append(curve.deletion)
                insertion[method.name].append(curve.insertion)
                if first and settings.random_draws:
                    random_deletion.append(curve.random_deletion.mean(axis=0))
                    random_insertion.append(curve.random_insertion.mean(axis=0))
        for name, keep in concept_sets.items():
            logits_by_condition[name].append(_tail_with(model, activations, extras, keep))
        logits_by_condition["all"].append(
            _tail_with(model, activations, extras, torch.ones(1, units, dtype=torch.bool)))
        seen += n
        emit("advance", amount=n)
    return _summarise(model, settings, ks, deletion, insertion, random_deletion, random_insertion,
                      targets_all, logits_by_condition, detectors, seen, out)


def _detectors(dissection: str | Path, model) -> dict[str, list[int]]:
    """Concept -> the units the dissection labels with it (paper-rule detectors)."""
    record = load_dissection(dissection, layer=model.layer, sha256=model.sha256,
                             num_units=model.num_units, model_name=Path(model.path).name)
    found: dict[str, list[int]] = {}
    for unit in range(model.num_units):
        label = record.label(unit)
        if label.labelled and label.concept not in (None, UNLABELLED):
            found.setdefault(label.concept, []).append(unit)
    return found


def _concept_unit_sets(detectors: Mapping[str, list[int]], units: int,
                       settings: VerifySettings) -> dict[str, torch.Tensor]:
    """Condition name -> ``[D, K]`` bool masks of the units kept: ``concept:c`` zeroes c's
    detectors; ``random:c`` zeroes as many random units, ``settings.random_draws`` times."""
    sets: dict[str, torch.Tensor] = {}
    generator = torch.Generator().manual_seed(int(settings.seed) * 7919 + 17)
    for concept, members in sorted(detectors.items()):
        keep = torch.ones(1, units, dtype=torch.bool)
        keep[0, members] = False
        sets[f"concept:{concept}"] = keep
        draws = torch.ones(max(settings.random_draws, 1), units, dtype=torch.bool)
        for r in range(draws.shape[0]):
            draws[r, torch.randperm(units, generator=generator)[:len(members)]] = False
        sets[f"random:{concept}"] = draws
    return sets


def _tail_with(model, activations: torch.Tensor, extras: tuple, keep: torch.Tensor) -> torch.Tensor:
    """Logits ``[D, N, outputs]`` with the units outside each ``keep [D, K]`` row set to zero."""
    n = activations.shape[0]
    out = []
    for row in keep.to(activations.device):
        masked = activations * row[None, :, None, None].to(activations.dtype)
        with torch.no_grad():
            out.append(model.split.tail(masked, model.split.rows(
                extras, torch.arange(n, device=activations.device), n)).float().cpu())
    return torch.stack(out)


def _summarise(model, settings, ks, deletion, insertion, random_deletion, random_insertion,
               targets_all, logits_by_condition, detectors, seen, out) -> VerifyResult:
    draws = _resamples(seen, settings.resamples, settings.seed)
    curves = [_curves(name, ks, np.stack(deletion[name]), np.stack(insertion[name]), draws,
                      settings.confidence) for name in deletion]
    random = (_curves("random", ks, np.stack(random_deletion), np.stack(random_insertion), draws,
                      settings.confidence) if settings.random_draws else None)
    targets = torch.cat(targets_all)
    metric, _mode = primary_metric(model.kind)
    names = list(model.outputs)
    base = torch.cat(logits_by_condition["all"], dim=1)[0]
    base_value = _metric(model.kind, base, targets, names, metric)
    concepts = []
    for concept, members in sorted(detectors.items()):
        ablated = torch.cat(logits_by_condition[f"concept:{concept}"], dim=1)[0]
        randoms = torch.cat(logits_by_condition[f"random:{concept}"], dim=1)   # [R, N, outputs]
        change = _metric(model.kind, ablated, targets, names, metric) - base_value
        random_change = np.mean([_metric(model.kind, r, targets, names, metric) - base_value
                                 for r in randoms])
        base_boot = _metric_resamples(model.kind, base, targets, names, metric, draws)
        boot = _metric_resamples(model.kind, ablated, targets, names, metric, draws) - base_boot
        boot_random = np.mean([_metric_resamples(model.kind, r, targets, names, metric, draws)
                               for r in randoms], axis=0) - base_boot
        concepts.append(ConceptAblation(
            concept, list(members),
            _interval(np.asarray(boot), change, settings.confidence),
            _interval(np.asarray(boot_random), float(random_change), settings.confidence)))
    result = VerifyResult(model.path, model.layer, seen, metric, base_value, curves, random,
                          concepts)
    if out is not None:
        with output_dir(out) as folder:
            result.out = folder
            write_json(folder / "verify.json", _record(result, settings))
    return result


def _record(result: VerifyResult, settings: VerifySettings) -> dict[str, Any]:
    def curves(c: MethodCurves) -> dict[str, Any]:
        return {"method": c.method, "ks": c.ks, "aopc": c.aopc.to_json(),
                "deletion": [e.to_json() for e in c.deletion],
                "insertion": [e.to_json() for e in c.insertion]}

    return {
        "schema": SCHEMA, "model": result.model, "layer": result.layer, "images": result.images,
        "split": settings.split, "metric": result.metric, "metric_value": result.metric_value,
        "settings": {"methods": list(settings.methods), "ks": list(settings.ks),
                     "random_draws": settings.random_draws, "ig_steps": settings.steps,
                     "resamples": settings.resamples, "confidence": settings.confidence,
                     "seed": settings.seed},
        "curves": [curves(c) for c in result.curves],
        "random": curves(result.random) if result.random else None,
        "concept_ablation": [{"concept": c.concept, "units": c.units, "change": c.change.to_json(),
                              "random_change": c.random_change.to_json()}
                             for c in result.concepts],
        "sentences": result.sentences(),
        "definitions": {
            "deletion": "f(A) - f(A with the method's top-k units zeroed), mean over images",
            "insertion": "f(A with only the top-k units kept) - f(0), mean over images",
            "aopc": "mean of the deletion change over the ks (area over the perturbation curve)",
            "concept_ablation": "metric with the concept's detectors zeroed minus the metric with "
                                "all units, over the split; random: as many random units, mean "
                                "over draws; intervals: paired percentile bootstrap over images"},
    }


__all__ = ["DEFAULT_METHODS", "SCHEMA", "ConceptAblation", "Estimate", "MethodCurves",
           "VerifyResult", "VerifySettings", "verify"]
