"""``compare``: is model A's detector count really different from model B's? (paper Fig. 2, 4)

Each dissection result folder holds the layer's per-image statistics (``imagestats.npz``), so the
counts of every model can be resampled without a model pass (:mod:`cxrsem.statistics.bootstrap`).
Models dissected on the same images (same concept sets, limit and annotations: checked from the
files) are compared with a **paired** bootstrap -- the same resampled images for both -- otherwise
with an unpaired one, and the result says which.  With several models, each is compared with the
first (an epoch series: with ``epoch-000``), and the p-values of one quantity are Holm-corrected
over those comparisons.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cxrsem.errors import DataError, UsageError
from cxrsem.formats.dissection import Dissection, parse_dissection
from cxrsem.reporting.aggregate import Chance, chance_baselines, chance_sentence, total_detectors
from cxrsem.statistics.bootstrap import (
    DEFAULT_CONFIDENCE,
    Resampled,
    estimate_and_resample,
    holm,
    interval,
    p_value,
    resample_weights,
    same_images,
)
from cxrsem.statistics.imagestats import ImageStats

IMAGE_STATS = "imagestats.npz"
DEFAULT_RESAMPLES = 1000
TOTAL, UNIQUE = "all concepts (total detectors)", "unique concepts"
Pairing = Literal["auto", "paired", "unpaired"]


@dataclass
class Model:
    """One dissected model and layer: its result and its per-image statistics."""

    name: str
    dissection: Dissection
    stats: ImageStats

    @property
    def threshold(self) -> float:
        return self.dissection.iou_threshold


@dataclass
class Estimate:
    """A count and its percentile interval."""

    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{_fmt(self.value)} [{_fmt(self.low)}, {_fmt(self.high)}]"

    def to_json(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


@dataclass
class Row:
    """One quantity (a concept's detector count, the total, the unique concepts) of model ``b``
    against the reference ``a``."""

    quantity: str
    a: Estimate
    b: Estimate
    difference: Estimate
    p: float
    p_adjusted: float = 1.0

    def significant(self, alpha: float) -> bool:
        return self.p_adjusted < alpha and (self.difference.low > 0 or self.difference.high < 0)

    def sentence(self, name_a: str, name_b: str, alpha: float) -> str:
        what = ("detectors" if self.quantity == TOTAL else "concepts with detectors"
                if self.quantity == UNIQUE else f"{self.quantity} detectors")
        if self.significant(alpha):
            more, less, a, b = ((name_b, name_a, self.b, self.a) if self.difference.value > 0
                                else (name_a, name_b, self.a, self.b))
            return (f"{more} has more {what} than {less}: {a} vs {b}; difference "
                    f"{_fmt(abs(self.difference.value))} [{_abs_interval(self.difference)}], "
                    f"p = {_p(self.p_adjusted)}")
        return (f"{name_a} vs {name_b}, {what}: {self.a} vs {self.b}; difference {self.difference}, "
                f"p = {_p(self.p_adjusted)} -- not distinguishable at this sample size")


@dataclass
class Comparison:
    """Model ``b`` against the reference ``a``: one row per quantity."""

    a: str
    b: str
    paired: bool
    why_unpaired: str | None
    rows: list[Row]


@dataclass
class ChanceRow:
    """A model's chance baselines (``dissect --null``) as its ``dissection.json`` records them,
    at its own IoU threshold: point values of the records, not resampled."""

    model: str
    detectors: int
    iou_threshold: float
    chance: Chance

    def sentence(self) -> str:
        return chance_sentence(self.model, self.detectors, self.chance) or f"{self.model}: no baselines"

    def to_json(self) -> dict[str, Any]:
        c = self.chance
        out: dict[str, Any] = {"model": self.model, "detectors": self.detectors,
                               "iou_threshold": self.iou_threshold, "fdr": c.fdr}
        if c.significant is not None:
            out["significant"] = c.significant
            out["significant_per_concept"] = dict(c.significant_per_concept)
        for key in ("shuffled", "random_init", "rotation"):
            count = getattr(c, key)
            if count is not None:
                out[key] = {"mean": count.mean, "low": count.low, "high": count.high,
                            "draws": count.draws}
        if c.initial_checkpoint is not None:
            out["initial_checkpoint"] = {"path": c.initial_checkpoint.path,
                                         "num_detectors": int(c.initial_checkpoint.mean)}
        out["sentence"] = self.sentence()
        return out


@dataclass
class CompareResult:
    models: list[str]
    comparisons: list[Comparison]
    resamples: int
    confidence: float
    seed: int
    group_by: str
    notes: list[str] = field(default_factory=list)
    chance: list[ChanceRow] = field(default_factory=list)  # when every model has chance baselines

    def chance_sentences(self) -> list[str]:
        return [row.sentence() for row in self.chance]

    @property
    def alpha(self) -> float:
        return 1.0 - self.confidence

    def sentences(self) -> list[str]:
        return [row.sentence(c.a, c.b, self.alpha) for c in self.comparisons for row in c.rows]

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": "cxrsem-compare/1", "models": self.models, "resamples": self.resamples,
            "confidence": self.confidence, "seed": self.seed, "group_by": self.group_by,
            "notes": self.notes,
            "comparisons": [{
                "a": c.a, "b": c.b, "paired": c.paired, "why_unpaired": c.why_unpaired,
                "rows": [{"quantity": r.quantity, "a": r.a.to_json(), "b": r.b.to_json(),
                          "difference": r.difference.to_json(), "p": r.p,
                          "p_holm": r.p_adjusted, "sentence": r.sentence(c.a, c.b, self.alpha)}
                         for r in c.rows]} for c in self.comparisons],
            **({"chance": [row.to_json() for row in self.chance]} if self.chance else {})}


def _fmt(value: float) -> str:
    return f"{value:g}" if float(value).is_integer() else f"{value:.3g}"


def _abs_interval(d: Estimate) -> str:
    low, high = sorted((abs(d.low), abs(d.high))) if d.low * d.high >= 0 else (0.0, max(
        abs(d.low), abs(d.high)))
    return f"{_fmt(low)}, {_fmt(high)}"


def _p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


# --- loading -----------------------------------------------------------------------------------------


def load_models(dirs: Sequence[str | Path]) -> list[Model]:
    """Every dissection result under ``dirs`` (layer folders, model folders or a ``cxrsem dissect
    --out``), in the order given and, inside one folder, by path (``epoch-000`` first)."""
    from cxrsem.reporting.collect import find_files

    models: list[Model] = []
    for given in dirs:
        root = Path(given)
        found = find_files(root, "dissection.json")
        if not found:
            raise UsageError(f"{root} holds no dissection.json (give a `cxrsem dissect --out` "
                             f"folder, a model folder or a layer folder)")
        for path in found:
            try:
                dissection = parse_dissection(json.loads(path.read_text(encoding="utf-8")), path)
            except (OSError, ValueError) as exc:
                raise DataError(f"cannot read dissection result {path}: {exc}") from None
            stats_path = path.parent / IMAGE_STATS
            if not stats_path.is_file():
                raise DataError(f"{path.parent} has no {IMAGE_STATS} (dissected by an older cxrsem? "
                                f"dissect it again to compare with intervals)")
            models.append(Model(_name(path), dissection, ImageStats.load(stats_path)))
    if len(models) < 2:
        raise UsageError(f"compare needs at least two dissection results; found {len(models)}")
    names = [m.name for m in models]
    if len(set(names)) < len(names):  # the same stem in several folders: say where each is from
        for m in models:
            m.name = f"{m.dissection.path.parent.parent.parent.name}/{m.name}"
    return models


def _name(path: Path) -> str:
    layer = path.parent.name
    return f"{path.parent.parent.name} @ {layer.rsplit('.', 1)[-1]}"


def pairing_problem(a: Model, b: Model) -> str | None:
    """Why ``a`` and ``b`` were not dissected on the same images (``None`` when they were)."""
    fields = (("concept sets", "concept_sets"), ("images", "num_images"))
    for label, key in fields:
        if a.dissection.data.get(key) != b.dissection.data.get(key):
            return f"other {label}"
    for label, key in (("--limit", "limit"), ("--seg-size", "seg_size")):
        if a.dissection.settings.get(key) != b.dissection.settings.get(key):
            return f"another {label}"
    return same_images(a.stats, b.stats)


# --- the comparison ----------------------------------------------------------------------------------


def _weights(stats: ImageStats, group_by: str, resamples: int, seed: int) -> np.ndarray:
    groups = stats.groups if group_by == "patient" else np.arange(stats.num_images)
    return resample_weights(groups, resamples, seed)


def _quantities(result: Resampled) -> dict[str, np.ndarray]:
    """``[B]`` samples of every compared quantity."""
    out = {concept: result.counts[:, j] for j, concept in enumerate(result.concepts)}
    out[TOTAL] = result.total
    out[UNIQUE] = result.unique
    return out


def _estimate(point: float, samples: np.ndarray, confidence: float) -> Estimate:
    low, high = interval(samples.astype(np.float64), confidence)
    return Estimate(float(point), float(low), float(high))


def compare(dirs: Sequence[str | Path], *, resamples: int = DEFAULT_RESAMPLES,
            confidence: float = DEFAULT_CONFIDENCE, seed: int = 0,
            group_by: Literal["patient", "image"] = "patient", pairing: Pairing = "auto",
            out: str | Path | None = None) -> CompareResult:
    """Compare the detector counts of the dissections under ``dirs`` (the first is the reference)
    with a bootstrap of ``resamples`` over images or patients (``group_by``); ``pairing="paired"``
    refuses models dissected on other images, ``"unpaired"`` never pairs.  Writes the result as
    JSON to ``out`` when given."""
    result = compare_models(load_models(dirs), resamples=resamples, confidence=confidence,
                            seed=seed, group_by=group_by, pairing=pairing)
    if out is not None:
        from cxrsem.outputs import write_json

        write_json(Path(out), result.to_json())
    return result


def compare_models(models: Sequence[Model], *, resamples: int = DEFAULT_RESAMPLES,
                   confidence: float = DEFAULT_CONFIDENCE, seed: int = 0,
                   group_by: Literal["patient", "image"] = "patient",
                   pairing: Pairing = "auto") -> CompareResult:
    """:func:`compare` on loaded models (the first is the reference)."""
    if pairing not in ("auto", "paired", "unpaired"):
        raise UsageError(f"pairing must be auto, paired or unpaired, got {pairing!r}")
    if group_by not in ("patient", "image"):
        raise UsageError(f"--group-by must be patient or image, got {group_by!r}")
    if len(models) < 2:
        raise UsageError(f"compare needs at least two dissection results; found {len(models)}")
    reference = models[0]
    ref_weights = _weights(reference.stats, group_by, resamples, seed)
    ref_point, ref_samples = estimate_and_resample(reference.stats, ref_weights,
                                                   reference.threshold)
    comparisons: list[Comparison] = []
    notes: list[str] = []
    for other in models[1:]:
        problem = pairing_problem(reference, other)
        if pairing == "paired" and problem is not None:
            raise UsageError(f"--paired: {reference.name} and {other.name} were not dissected on "
                             f"the same images ({problem})")
        paired = pairing != "unpaired" and problem is None
        weights = (ref_weights if paired  # the same images drawn for both
                   else _weights(other.stats, group_by, resamples, seed + 1 + len(comparisons)))
        point, samples = estimate_and_resample(other.stats, weights, other.threshold)
        if reference.threshold != other.threshold:
            notes.append(f"{reference.name} and {other.name} use other IoU thresholds "
                         f"({reference.threshold:g}, {other.threshold:g}); each is counted at its own")
        rows = []
        qa, qb = _quantities(ref_samples), _quantities(samples)
        pa, pb = _quantities(ref_point), _quantities(point)
        for quantity in [*dict.fromkeys([*qa, *qb])]:
            if quantity not in qa or quantity not in qb:
                continue  # a concept only one model was dissected against
            if quantity not in (TOTAL, UNIQUE) and not (pa[quantity][0] or pb[quantity][0]
                                                        or qa[quantity].any() or qb[quantity].any()):
                continue  # no detector of it anywhere: nothing to compare
            d = qb[quantity] - qa[quantity]
            rows.append(Row(quantity, _estimate(pa[quantity][0], qa[quantity], confidence),
                            _estimate(pb[quantity][0], qb[quantity], confidence),
                            _estimate(pb[quantity][0] - pa[quantity][0], d, confidence),
                            p_value(d)))
        comparisons.append(Comparison(reference.name, other.name, paired,
                                      None if paired else (problem or "--unpaired"), rows))
    # Holm over the comparisons with the reference, quantity by quantity.
    by_quantity: dict[str, list[Row]] = {}
    for c in comparisons:
        for row in c.rows:
            by_quantity.setdefault(row.quantity, []).append(row)
    for rows in by_quantity.values():
        for row, adjusted in zip(rows, holm([r.p for r in rows]), strict=True):
            row.p_adjusted = adjusted
    return CompareResult([m.name for m in models], comparisons, resamples, confidence, seed,
                         group_by, notes, chance_rows(models))


def chance_rows(models: Sequence[Model]) -> list[ChanceRow]:
    """Each model's chance baselines at its own threshold, when every model has them (a count
    beyond chance is compared only where all were dissected with ``--null``)."""
    rows = []
    for m in models:
        chance = chance_baselines(m.dissection.data, m.threshold)
        if chance is None:
            return []
        rows.append(ChanceRow(m.name, total_detectors(m.dissection.units, m.threshold),
                              m.threshold, chance))
    return rows
