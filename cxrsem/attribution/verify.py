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
3. **Localisation against annotations** (with a dissection and ``concepts``): for every image of
   the concept sets and each method, the top-ranked labelled unit whose concept is present in
   the image; does its map fall on that concept's mask?  Pointing game and relevance mass
   (:mod:`cxrsem.attribution.localisation`), averaged over the images that count, with
   percentile bootstrap intervals over them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrsem.api import build_dataset, resolve_component
from cxrsem.attribution.ablation import DEFAULT_KS, DEFAULT_RANDOM, AblationSettings, ablate_image
from cxrsem.attribution.localisation import localise
from cxrsem.attribution.methods import complete, unit_scores
from cxrsem.attribution.targets import default_columns, values_function
from cxrsem.engine.data import make_loader
from cxrsem.engine.split import HeadOnce
from cxrsem.errors import DataError, UsageError
from cxrsem.formats.dissection import UNLABELLED, Dissection, load_dissection
from cxrsem.outputs import output_dir, write_json
from cxrsem.statistics.bootstrap import holm, interval, p_value
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


def _finite(value: float) -> float | None:
    """``value``, or None where it is NaN or infinite (strict JSON has no NaN: an AUROC over a
    split where an output has one class only is undefined)."""
    return float(value) if np.isfinite(value) else None


@dataclass
class Estimate:
    value: float
    low: float
    high: float

    def to_json(self) -> dict[str, float | None]:
        return {"value": _finite(self.value), "low": _finite(self.low), "high": _finite(self.high)}

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
class AopcComparison:
    """Paired comparison of two methods' AOPC on the same images: ``first - second``."""

    first: str
    second: str
    difference: Estimate
    p_value: float           # two-sided paired bootstrap p of "no difference"
    p_adjusted: float        # Holm over all comparisons of the run
    resamples: int           # the bootstrap's resamples: a p of 0 means p < 1 / resamples

    def p_text(self, p: float) -> str:
        return f"p < {1 / self.resamples:.2g}" if p == 0 else f"p = {p:.3g}"


@dataclass
class ConceptAblation:
    concept: str
    units: list[int]
    change: Estimate          # metric(ablated) - metric(all units)
    random_change: Estimate   # the same for as many random units (mean over draws)
    excess: Estimate | None = None  # change - random_change, paired over the same resamples
    excess_p: float | None = None   # two-sided bootstrap p of "no excess"


@dataclass
class MethodLocalisation:
    method: str
    images: int                      # images that counted (a labelled unit's concept present)
    pointing_game: Estimate | None   # None when no image counted
    relevance_mass: Estimate | None
    concepts: dict[str, int] = field(default_factory=dict)  # the chosen units' concepts: images


@dataclass
class Localisation:
    concept_sets: list[str]
    images: int                      # images of the concept sets looked at
    mask_size: int
    methods: list[MethodLocalisation] = field(default_factory=list)
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # per concept set, resolved


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
    localisation: Localisation | None = None
    comparisons: list[AopcComparison] = field(default_factory=list)
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
        for c in self.comparisons:
            verdict = "larger" if c.difference.low > 0 else "smaller" if c.difference.high < 0 else \
                "not distinguishable"
            lines.append(f"AOPC {c.first} - {c.second}: {c.difference} ({c.p_text(c.p_value)}, "
                         f"Holm {c.p_text(c.p_adjusted)}): {c.first} {verdict}")
        for c in self.concepts:
            excess = (f"; difference {c.excess} (paired, p = {c.excess_p:.3g})"
                      if c.excess is not None else "")
            lines.append(f"zeroing the {len(c.units)} {c.concept} detector(s) changes "
                         f"{self.metric} by {c.change}; {len(c.units)} random unit(s): "
                         f"{c.random_change}{excess}")
        if self.localisation is not None:
            counted = [m for m in self.localisation.methods if m.images]
            if counted:
                lines.append(
                    f"top labelled unit's map on its concept's annotation "
                    f"({self.localisation.images} images of {', '.join(self.localisation.concept_sets)}"
                    f"): pointing game " + ", ".join(
                        f"{m.method} {m.pointing_game} (n={m.images})" for m in counted)
                    + "; relevance mass " + ", ".join(
                        f"{m.method} {m.relevance_mass}" for m in counted))
            else:
                lines.append(f"localisation: no image of {', '.join(self.localisation.concept_sets)} "
                             f"contains the concept of a labelled unit")
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


def _comparisons(aopc: Mapping[str, np.ndarray], draws: np.ndarray,
                 confidence: float) -> list[AopcComparison]:
    """Every pair of methods, then every method against random units: the per-image AOPC
    difference, averaged, with a paired percentile bootstrap over the same resampled images and
    Holm's adjustment over the whole family."""
    names = [n for n in aopc if n != "random"]
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    pairs += [(a, "random") for a in names if "random" in aopc]
    found = []
    for a, b in pairs:
        d = aopc[a] - aopc[b]
        boot = d[draws].mean(axis=1)
        found.append((a, b, _interval(boot, d.mean(), confidence), p_value(boot)))
    adjusted = holm([p for *_rest, p in found]) if found else []
    return [AopcComparison(a, b, e, p, q, len(draws))
            for (a, b, e, p), q in zip(found, adjusted, strict=True)]


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


def verify(checkpoint: str | Path, layer: str | None, dataset: str, *, dissection: str | Path | None = None,
           dataset_options: Mapping[str, Any] | None = None,
           concepts: Sequence[str] = (),
           concept_options: Mapping[str, Mapping[str, Any]] | None = None,
           data_roots: Mapping[str, str] | None = None, settings: VerifySettings | None = None,
           device: str = "auto", out: str | Path | None = None,
           model_options: Mapping[str, Any] | None = None,
           progress: Progress | None = None) -> VerifyResult:
    """Deletion/insertion curves and AOPC per attribution method, and (with ``dissection``)
    concept ablation against random units, over ``dataset``'s ``settings.split``.

    With ``concepts`` (concept-set names, options per set in ``concept_options``; needs
    ``dissection``): localisation of each method's top labelled unit against the annotations of
    the sets' first ``settings.limit`` images (all with 0), see :func:`_localisation`."""
    from cxrsem.attribution.api import _build_method, _load_model  # the attribute pipeline's steps

    settings = settings or VerifySettings()
    settings.validate()
    concepts = list(dict.fromkeys(concepts))
    if concepts and dissection is None:
        raise UsageError("--concepts needs --dissection: localisation follows the units the "
                         "dissection labels")
    if concept_options and not concepts:
        raise UsageError("--concept-opt given without --concepts")
    emit = progress or (lambda *_a, **_k: None)
    methods = [_build_method(m, None, settings.steps if m == "ig" else None, None)
               for m in settings.methods]
    model, _ = _load_model(checkpoint, layer, None, device, "float32", "auto",
                           model_options=model_options)
    info, options = resolve_component("dataset", dataset, dict(dataset_options or {}))
    data = build_dataset(info, options, split=settings.split, image_size=model.spec.size,
                         seed=settings.seed, data_roots=data_roots)
    if model.kind not in data.outputs:
        raise UsageError(f"dataset {dataset} has no {model.kind!r} targets for this model "
                         f"(it has {', '.join(data.outputs)})")
    count = min(len(data), settings.limit) if settings.limit else len(data)
    if count == 0:
        raise DataError(f"dataset {dataset} yields no {settings.split} images")
    record = _dissection(dissection, model) if dissection is not None else None
    detectors = _detectors(record, model.num_units) if record is not None else {}
    annotations = (_annotations(model, record, detectors, concepts, concept_options, data_roots,
                                settings) if concepts else None)
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
    emit("phase", name="ablation", total=count)
    # Every method starts from the head's activations of the same batch: computed once.
    split = HeadOnce(model.split)
    seen = 0
    for batch in make_loader(data, batch_size=settings.batch_size):
        images_raw = batch["image"][:max(0, count - seen)]
        if images_raw.shape[0] == 0:
            break
        n = images_raw.shape[0]
        targets_all.append(batch["targets"][model.kind][:n])
        images = model.spec.prepare(images_raw, device=model.device, dtype=model.dtype)
        with torch.no_grad():
            activations, extras = split.head(images)
        columns = default_columns(model.kind)
        for method in methods:
            result = complete(method.run(split, images, values=values, columns=columns,
                                         batch_size=settings.batch_size * 8),
                              split, images, columns, settings.batch_size)
            scores = unit_scores(result.attributions.detach())
            first = method is methods[0]
            for j in range(n):
                curve = ablate_image(split, activations, extras, j, n, scores[j], values,
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
    localisation = (_localisation(model, methods, *annotations, settings, emit)
                    if annotations is not None else None)
    return _summarise(model, settings, ks, deletion, insertion, random_deletion, random_insertion,
                      targets_all, logits_by_condition, detectors, seen, out, localisation)


def _dissection(dissection: str | Path, model) -> Dissection:
    return load_dissection(dissection, layer=model.layer, sha256=model.sha256,
                           num_units=model.num_units, model_name=Path(model.path).name)


def _detectors(record: Dissection, num_units: int) -> dict[str, list[int]]:
    """Concept -> the units the dissection labels with it (paper-rule detectors)."""
    found: dict[str, list[int]] = {}
    for unit in range(num_units):
        label = record.label(unit)
        if label.labelled and label.concept not in (None, UNLABELLED):
            found.setdefault(label.concept, []).append(unit)
    return found


def _annotations(model, record: Dissection, detectors: Mapping[str, list[int]],
                 concepts: list[str], concept_options, data_roots,
                 settings: VerifySettings) -> tuple[Any, int, torch.Tensor]:
    """``(source, mask_size, unit_channel)``: the concept sets' images and masks at the
    dissection's seg size, and for every unit the mask channel of the concept the dissection
    labels it with (-1: unlabelled, or a concept these sets do not annotate).  Built before any
    model pass, so a mismatch with the dissection fails at once."""
    from cxrsem.dissection.concepts import build_concept_source

    mask_size = int(record.settings.get("seg_size") or model.spec.size)
    source = build_concept_source(concepts, image_size=model.spec.size, mask_size=mask_size,
                                  seed=settings.seed, options=concept_options,
                                  data_roots=data_roots, limit=settings.limit)
    channel = {c: i for i, c in enumerate(source.concepts)}
    unit_channel = torch.full((model.num_units,), -1, dtype=torch.long)
    for concept, members in detectors.items():
        if concept in channel:
            unit_channel[members] = channel[concept]
    if not bool((unit_channel >= 0).any()):
        labelled = ", ".join(sorted(detectors)) or "none"
        raise UsageError(f"the dissection labels no unit with a concept of {', '.join(concepts)} "
                         f"({', '.join(source.concepts)}); its labelled concepts: {labelled}")
    return source, mask_size, unit_channel


def _localisation(model, methods, source, mask_size: int, unit_channel: torch.Tensor,
                  settings: VerifySettings, emit: Progress) -> Localisation:
    """Pointing game and relevance mass (:mod:`cxrsem.attribution.localisation`) per method over
    the images of the concept sets ``concepts``.

    Per image and method: the units are ranked by the method's score (``sum |s_k|``,
    :func:`unit_scores`; ties: the lower unit); the top one among the units the dissection labels
    with a concept whose mask is non-empty in this image is localised against that mask, its map
    ``s_k`` upsampled to the mask size (the dissection's seg size).  An image where no labelled
    unit's concept is present does not count for the method.  The explained output is the one
    every verify curve explains (``default_columns``)."""
    labelled = unit_channel >= 0
    values = values_function(model.kind, len(model.outputs))
    columns = default_columns(model.kind)
    hits: dict[str, list[float]] = {m.name: [] for m in methods}
    mass: dict[str, list[float]] = {m.name: [] for m in methods}
    chosen: dict[str, dict[str, int]] = {m.name: {} for m in methods}
    total = len(source)
    split = HeadOnce(model.split)  # the methods share each batch's head pass
    emit("phase", name="localisation", total=total)
    for start in range(0, total, settings.batch_size):
        batch = source.batch(list(range(start, min(start + settings.batch_size, total))))
        masks = batch["masks"]
        present = masks.flatten(2).any(-1)                                 # [B, C]
        # eligible[j, k]: unit k is labelled and its concept's mask is non-empty in image j
        eligible = labelled[None, :] & present[:, unit_channel.clamp(min=0)]
        images = model.spec.prepare(batch["image"], device=model.device, dtype=model.dtype)
        for method in methods:
            result = complete(method.run(split, images, values=values, columns=columns,
                                         batch_size=settings.batch_size * 8),
                              split, images, columns, settings.batch_size)
            maps = result.attributions.detach().float().cpu()
            scores = unit_scores(maps).double()
            ranked = scores.masked_fill(~eligible, float("-inf"))
            for j in torch.nonzero(eligible.any(dim=1)).flatten().tolist():
                unit = int(ranked[j].argmax())  # the first of equal scores: the lower unit
                c = int(unit_channel[unit])
                hit, share = localise(maps[j, unit], masks[j, c])
                hits[method.name].append(hit)
                mass[method.name].append(share)
                name = source.concepts[c]
                chosen[method.name][name] = chosen[method.name].get(name, 0) + 1
        emit("advance", amount=masks.shape[0])
    rows = []
    for method in methods:
        n = len(hits[method.name])
        if n == 0:
            rows.append(MethodLocalisation(method.name, 0, None, None, {}))
            continue
        draws = _resamples(n, settings.resamples, settings.seed)
        estimates = []
        for values_ in (np.asarray(hits[method.name]), np.asarray(mass[method.name])):
            estimates.append(_interval(values_[draws].mean(axis=1), values_.mean(),
                                       settings.confidence))
        rows.append(MethodLocalisation(method.name, n, *estimates,
                                       dict(sorted(chosen[method.name].items()))))
    # Recorded as resolved (typed, defaults filled in), as training and attribution record theirs.
    resolved = {name: resolve_component("concept_set", name, source.options.get(name, {}))[1]
                for name in source.set_names()}
    return Localisation(source.set_names(), total, mask_size, rows, resolved)


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
               targets_all, logits_by_condition, detectors, seen, out,
               localisation: Localisation | None = None) -> VerifyResult:
    draws = _resamples(seen, settings.resamples, settings.seed)
    curves = [_curves(name, ks, np.stack(deletion[name]), np.stack(insertion[name]), draws,
                      settings.confidence) for name in deletion]
    per_image_aopc = {name: np.stack(rows).mean(axis=1) for name, rows in deletion.items()}
    if settings.random_draws:
        per_image_aopc["random"] = np.stack(random_deletion).mean(axis=1)
    comparisons = _comparisons(per_image_aopc, draws, settings.confidence)
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
        excess = np.asarray(boot) - np.asarray(boot_random)
        concepts.append(ConceptAblation(
            concept, list(members),
            _interval(np.asarray(boot), change, settings.confidence),
            _interval(np.asarray(boot_random), float(random_change), settings.confidence),
            _interval(excess, change - float(random_change), settings.confidence),
            p_value(excess)))
    result = VerifyResult(model.path, model.layer, seen, metric, base_value, curves, random,
                          concepts, localisation, comparisons)
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
        "split": settings.split, "metric": result.metric, "metric_value": _finite(result.metric_value),
        "settings": {"methods": list(settings.methods), "ks": list(settings.ks),
                     "random_draws": settings.random_draws, "ig_steps": settings.steps,
                     "resamples": settings.resamples, "confidence": settings.confidence,
                     "seed": settings.seed},
        "curves": [curves(c) for c in result.curves],
        "random": curves(result.random) if result.random else None,
        "aopc_comparisons": [{"first": c.first, "second": c.second,
                              "difference": c.difference.to_json(), "p_value": c.p_value,
                              "p_adjusted": c.p_adjusted} for c in result.comparisons],
        "concept_ablation": [{"concept": c.concept, "units": c.units, "change": c.change.to_json(),
                              "random_change": c.random_change.to_json(),
                              "excess": c.excess.to_json() if c.excess else None,
                              "excess_p": c.excess_p}
                             for c in result.concepts],
        "localisation": _localisation_record(result.localisation),
        "sentences": result.sentences(),
        "definitions": {
            "deletion": "f(A) - f(A with the method's top-k units zeroed), mean over images",
            "insertion": "f(A with only the top-k units kept) - f(0), mean over images",
            "aopc": "mean of the deletion change over the ks (area over the perturbation curve)",
            "aopc_comparisons": "per-image AOPC of the first method minus the second's, mean over "
                                "images; paired percentile bootstrap over the same resampled "
                                "images; two-sided p; Holm over all pairs",
            "concept_ablation": "metric with the concept's detectors zeroed minus the metric with "
                                "all units, over the split; random: as many random units, mean "
                                "over draws; excess: the first minus the second; intervals: "
                                "paired percentile bootstrap over images",
            "localisation": "per image and method, the top-ranked (sum |s_k|) unit the dissection "
                            "labels with a concept present in the image; its map s_k upsampled "
                            "bilinearly to the mask size; images without such a unit do not count",
            "pointing_game": "1 if the upsampled map's argmax pixel lies inside the concept's "
                             "mask, else 0 (ties: the share of maximal pixels inside); mean over "
                             "counted images",
            "relevance_mass": "sum of the map's positive part inside the mask / its sum over the "
                              "image (0 without a positive part); mean over counted images"},
    }


def _localisation_record(localisation: Localisation | None) -> dict[str, Any] | None:
    if localisation is None:
        return None
    as_json = lambda e: None if e is None else e.to_json()  # noqa: E731
    return {"concept_sets": localisation.concept_sets, "images": localisation.images,
            "mask_size": localisation.mask_size, "options": localisation.options,
            "methods": [{"method": m.method, "images": m.images,
                         "pointing_game": as_json(m.pointing_game),
                         "relevance_mass": as_json(m.relevance_mass), "concepts": m.concepts}
                        for m in localisation.methods]}


__all__ = ["DEFAULT_METHODS", "SCHEMA", "AopcComparison", "ConceptAblation", "Estimate", "Localisation",
           "MethodCurves", "MethodLocalisation", "VerifyResult", "VerifySettings", "verify"]
