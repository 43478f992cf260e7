"""Pure functions behind the report's numbers: detector counts (paper Fig. 2), their evolution
over epochs (Fig. 4), counts against the IoU threshold, the unit gallery's choice (Fig. 3) and
which concept drives attributions (Fig. 5).

Counts are recomputed from every unit's best IoU: unit ``k`` is a detector of its best concept
``c`` when ``IoU_{k,c} > t`` (paper Sec. 2.2, Eq. 5; :func:`cxrsem.formats.dissection.is_detector`,
default ``t = 0.04``), so any threshold can be shown without dissecting again.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxrsem.formats.dissection import UNLABELLED
from cxrsem.formats.dissection import is_detector as _is_detector
from cxrsem.reporting.collect import (
    AttributionSet,
    Dissection,
    Unit,
    default_base_name,
    short_layer,
)

THRESHOLDS = tuple(round(0.02 + 0.005 * i, 3) for i in range(17))  # 0.02 .. 0.10 for the curves
TABLE_THRESHOLDS = (0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.10)


def is_detector(unit: Unit, threshold: float) -> bool:
    """:func:`cxrsem.formats.dissection.is_detector` for a unit with a best concept."""
    return unit.concept is not None and _is_detector(unit.iou, threshold)


def detector_counts(units: Iterable[Unit], threshold: float,
                    concepts: Sequence[str] = ()) -> dict[str, int]:
    """Detectors per concept at ``threshold``; every name of ``concepts`` is present (maybe 0)."""
    counts = dict.fromkeys(concepts, 0)
    for unit in units:
        if is_detector(unit, threshold):
            counts[unit.concept] = counts.get(unit.concept, 0) + 1
    return counts


def total_detectors(units: Iterable[Unit], threshold: float) -> int:
    return sum(1 for unit in units if is_detector(unit, threshold))


def unique_concepts(counts: Mapping[str, int]) -> int:
    """Concepts with at least one detector."""
    return sum(1 for n in counts.values() if n > 0)


def top_concepts(counts: Mapping[str, int], n: int = 3) -> list[tuple[str, int]]:
    return sorted(((c, k) for c, k in counts.items() if k > 0), key=lambda x: (-x[1], x[0]))[:n]


def threshold_curve(units: Sequence[Unit], thresholds: Sequence[float] = THRESHOLDS
                    ) -> list[tuple[float, int, int]]:
    """``(t, detectors, unique concepts)`` for each threshold."""
    rows = []
    for t in thresholds:
        counts = detector_counts(units, t)
        rows.append((float(t), sum(counts.values()), unique_concepts(counts)))
    return rows


def concept_order(count_maps: Iterable[Mapping[str, int]]) -> list[str]:
    """Concepts by total detectors over all models (most first), then by name; concepts without
    any detector are left out."""
    totals: Counter[str] = Counter()
    for counts in count_maps:
        totals.update({c: n for c, n in counts.items() if n > 0})
    return sorted(totals, key=lambda c: (-totals[c], c))


@dataclass
class NullCount:
    """The detectors a chance baseline (``dissect --null``) gives: the mean over its draws and
    the range of the draws (``low``, ``high``: the 95% range of observed draws; with few draws
    the smallest and largest), overall and per concept."""

    mean: float
    low: float
    high: float
    draws: int | None = None  # permutations, networks or rotations (1: one checkpoint)
    per_concept: dict[str, NullCount] = field(default_factory=dict)
    per_draw: list[int] = field(default_factory=list)  # each draw's total, for nulls of few draws
    path: str | None = None  # the checkpoint behind it (the run's epoch-000.pt)

    def __str__(self) -> str:
        if self.low == self.high == self.mean:
            return _g(self.mean)
        return f"{_g(self.mean)} [{_g(self.low)}, {_g(self.high)}]"


def _g(value: float) -> str:
    return f"{value:.3g}"


@dataclass
class Definitions:
    """``dissect`` with a definition other than the paper's (``--iou-over all``,
    ``--merge-concepts``, another quantile, ``--quantile-sample``): the paper's detectors on the
    same model at the same IoU threshold, and the units that move between the two."""

    this: dict[str, Any]
    paper: dict[str, Any]
    paper_counts: dict[str, int]
    paper_total: int
    only_this: list[int]
    only_paper: list[int]
    relabelled: list[int]

    @property
    def moved(self) -> int:
        return len(self.only_this) + len(self.only_paper) + len(self.relabelled)

    def differences(self) -> list[tuple[str, Any, Any]]:
        """``(setting, this, paper's)`` for the settings in which the two definitions differ."""
        return [(key, self.this.get(key), value) for key, value in self.paper.items()
                if self.this.get(key) != value]


@dataclass
class ModelCounts:
    dissection: Dissection
    counts: dict[str, int]
    total: int
    unique: int
    curve: list[tuple[float, int, int]]
    interval: tuple[float, float] | None = None  # bootstrap interval of ``total``, when known
    concept_intervals: dict[str, tuple[float, float]] = field(default_factory=dict)  # per concept
    # Chance baselines (dissect --null), only when computed at the report's threshold:
    significant: int | None = None  # detectors beyond shuffled annotations (BH at ``fdr``)
    significant_per_concept: dict[str, int] = field(default_factory=dict)
    fdr: float | None = None
    shuffled: NullCount | None = None  # detectors with annotations paired with other images
    random_init: NullCount | None = None  # detectors of untrained networks of the architecture
    rotation: NullCount | None = None  # detectors of a rotated unit basis
    initial_checkpoint: NullCount | None = None  # detectors of the run's epoch-000.pt
    definitions: Definitions | None = None  # the paper's definition beside a variant one

    @property
    def name(self) -> str:
        return self.dissection.name

    @property
    def has_nulls(self) -> bool:
        return any(v is not None for v in (self.significant, self.shuffled, self.random_init,
                                           self.rotation, self.initial_checkpoint))


Interval = tuple[float, float]


def _bootstrap_block(dissection: Dissection, threshold: float) -> dict | None:
    # Intervals belong to the threshold they were computed at: none at another report threshold.
    boot = dissection.data.get("bootstrap")
    if not isinstance(boot, dict) or dissection.settings.get("iou_threshold") != threshold:
        return None
    return boot


def _interval(entry: object) -> Interval | None:
    if not isinstance(entry, dict) or not all(
            isinstance(entry.get(k), int | float) and not isinstance(entry.get(k), bool)
            for k in ("low", "high")):
        return None
    return float(entry["low"]), float(entry["high"])


def total_interval(dissection: Dissection, threshold: float) -> Interval | None:
    """The bootstrap interval of the total detector count (``dissect --bootstrap``), when the
    dissection has one at the report's ``threshold``."""
    boot = _bootstrap_block(dissection, threshold)
    return None if boot is None else _interval(boot.get("num_detectors"))


def concept_intervals(dissection: Dissection, threshold: float) -> dict[str, Interval]:
    """The bootstrap interval of each concept's detector count, when the dissection has them at
    ``threshold`` (concepts without a valid interval are left out)."""
    boot = _bootstrap_block(dissection, threshold)
    per_concept = boot.get("detectors") if boot is not None else None
    if not isinstance(per_concept, dict):
        return {}
    found = {str(c): _interval(entry) for c, entry in per_concept.items()}
    return {c: iv for c, iv in found.items() if iv is not None}


def _real(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _null_count(entry: object, draws: object = None) -> NullCount | None:
    """``{"mean", "low", "high"}`` of a null's record as a :class:`NullCount` (None when malformed)."""
    if not isinstance(entry, Mapping):
        return None
    values = [_real(entry.get(k)) for k in ("mean", "low", "high")]
    if any(v is None for v in values):
        return None
    mean, low, high = values
    return NullCount(mean, low, high, _count(draws))


def _null_block(block: object, draws_key: str) -> NullCount | None:
    """One null's sub-block (``shuffle``, ``random_init``, ``rotation``) as a :class:`NullCount`."""
    if not isinstance(block, Mapping):
        return None
    draws = block.get("draws", block.get(draws_key))
    total = _null_count(block.get("num_detectors"), draws)
    if total is None:
        return None
    per_concept = block.get("detectors")
    if isinstance(per_concept, Mapping):
        found = {str(c): _null_count(v, draws) for c, v in per_concept.items()}
        total.per_concept = {c: v for c, v in found.items() if v is not None}
    per_draw = block.get("num_detectors_per_draw")
    if isinstance(per_draw, list) and all(_count(v) is not None for v in per_draw):
        total.per_draw = list(per_draw)
    return total


def null_record(data: Mapping[str, Any], threshold: float) -> Mapping[str, Any] | None:
    """The ``nulls`` block of a ``dissection.json`` document (``dissect --null``) when it was
    computed at ``threshold`` (a chance baseline, like an interval, belongs to the threshold it
    was computed at)."""
    nulls = data.get("nulls")
    if not isinstance(nulls, Mapping):
        return None
    settings = data.get("settings") if isinstance(data.get("settings"), Mapping) else {}
    computed_at = nulls.get("iou_threshold", settings.get("iou_threshold"))
    return nulls if computed_at == threshold else None


@dataclass
class Chance:
    """The chance baselines of one dissection (``dissect --null``) at one IoU threshold, as
    recorded: the same names as the fields of :class:`ModelCounts`."""

    significant: int | None = None  # detectors beyond shuffled annotations (BH at ``fdr``)
    significant_per_concept: dict[str, int] = field(default_factory=dict)
    fdr: float | None = None
    shuffled: NullCount | None = None
    random_init: NullCount | None = None
    rotation: NullCount | None = None
    initial_checkpoint: NullCount | None = None

    def fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def chance_baselines(data: Mapping[str, Any], threshold: float) -> Chance | None:
    """The chance baselines of a ``dissection.json`` document at ``threshold`` (None when it has
    none there; malformed parts are left out)."""
    nulls = null_record(data, threshold)
    if nulls is None:
        return None
    chance = Chance(fdr=_real(nulls.get("fdr")))
    shuffle = nulls.get("shuffle")
    if isinstance(shuffle, Mapping):
        chance.significant = _count(shuffle.get("num_significant"))
        per_concept = shuffle.get("significant")
        if isinstance(per_concept, Mapping):
            chance.significant_per_concept = {str(c): n for c, n in per_concept.items()
                                              if _count(n) is not None}
        chance.shuffled = _null_block(shuffle, "permutations")
    chance.random_init = _null_block(nulls.get("random_init"), "models")
    chance.rotation = _null_block(nulls.get("rotation"), "rotations")
    initial = nulls.get("initial_checkpoint")
    if isinstance(initial, Mapping) and _count(initial.get("num_detectors")) is not None:
        n = float(initial["num_detectors"])
        per_concept = initial.get("detectors") if isinstance(initial.get("detectors"), Mapping) else {}
        chance.initial_checkpoint = NullCount(
            n, n, n, 1, {str(c): NullCount(float(v), float(v), float(v), 1)
                         for c, v in per_concept.items() if _count(v) is not None},
            path=None if initial.get("path") is None else str(initial["path"]))
    return chance


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _draws(count: NullCount, word: str) -> str:
    return f" ({_plural(count.draws, word)})" if count.draws else ""


def chance_sentence(name: str, total: int, chance: Chance | ModelCounts) -> str | None:
    """What the chance baselines say about a model's ``total`` detectors: ``a.pt: 7 detectors,
    3 significant against shuffled annotations (FDR 0.05, 100 permutations; blob-c 2, blob-a 1);
    shuffled annotations alone give 1.3 [0, 3]; untrained networks of this architecture give
    2.7 [2, 4] (3 networks); a rotated basis gives 3 [1, 5] (2 rotations); the run's
    epoch-000.pt has 2 detectors`` (the parts of the baselines computed); None without any."""
    c = chance
    parts = []
    if c.significant is not None:
        settings = [f"FDR {c.fdr:g}" if c.fdr is not None else "",
                    _plural(c.shuffled.draws, "permutation") if c.shuffled and c.shuffled.draws else ""]
        by_concept = ", ".join(f"{k} {n}" for k, n in top_concepts(c.significant_per_concept, 10))
        inside = "; ".join(p for p in (", ".join(p for p in settings if p), by_concept) if p)
        parts.append(f"{c.significant} significant against shuffled annotations"
                     + (f" ({inside})" if inside else ""))
    if c.shuffled is not None:
        parts.append(f"shuffled annotations alone give {c.shuffled}")
    if c.random_init is not None:
        parts.append(f"untrained networks of this architecture give {c.random_init}"
                     + _draws(c.random_init, "network"))
    if c.rotation is not None:
        parts.append(f"a rotated basis gives {c.rotation}" + _draws(c.rotation, "rotation"))
    if c.initial_checkpoint is not None:
        stem = Path(c.initial_checkpoint.path).name if c.initial_checkpoint.path else "epoch-000.pt"
        parts.append(f"the run's {stem} has {_plural(int(c.initial_checkpoint.mean), 'detector')}")
    if not parts:
        return None
    head = f"{name}: {_plural(total, 'detector')}, {parts[0]}"
    return f"{head}; {'; '.join(parts[1:])}." if parts[1:] else f"{head}."


def definitions(dissection: Dissection, threshold: float) -> Definitions | None:
    """The ``definitions`` block (a non-paper definition beside the paper's) when the dissection
    has one and was dissected at ``threshold`` (its counts belong to that threshold)."""
    block = dissection.data.get("definitions")
    if not isinstance(block, Mapping) or dissection.settings.get("iou_threshold") != threshold:
        return None
    this, paper, counts = block.get("this"), block.get("paper"), block.get("paper_detectors")
    total = _count(block.get("paper_num_detectors"))
    units = [block.get(k) for k in ("only_this", "only_paper", "relabelled")]
    if (not isinstance(this, Mapping) or not isinstance(paper, Mapping) or total is None
            or not all(isinstance(u, list) and all(_count(k) is not None for k in u) for u in units)):
        return None
    counts = {str(c): n for c, n in counts.items() if _count(n) is not None} if isinstance(
        counts, Mapping) else {}
    return Definitions(dict(this), dict(paper), counts, total, *[list(u) for u in units])


def model_counts(dissection: Dissection, threshold: float,
                 thresholds: Sequence[float] = THRESHOLDS) -> ModelCounts:
    counts = detector_counts(dissection.units, threshold, dissection.concepts)
    chance = chance_baselines(dissection.data, threshold)
    return ModelCounts(dissection, counts, sum(counts.values()), unique_concepts(counts),
                       threshold_curve(dissection.units, thresholds),
                       total_interval(dissection, threshold),
                       concept_intervals(dissection, threshold),
                       definitions=definitions(dissection, threshold),
                       **(chance.fields() if chance is not None else {}))


def count_at(model: ModelCounts, threshold: float) -> int:
    """Total detectors of ``model`` at ``threshold`` (from its curve when the threshold is on it)."""
    for t, total, _ in model.curve:
        if abs(t - threshold) < 1e-12:
            return total
    return total_detectors(model.dissection.units, threshold)


@dataclass
class RunSeries:
    """Detector counts of one training run's checkpoints at one layer, by epoch (Fig. 4)."""

    name: str
    run_dir: str
    layer: str
    epochs: list[int]
    counts: dict[str, list[int]]  # concept -> count per epoch
    totals: list[int]
    models: list[str] = field(default_factory=list)
    bands: list[Interval | None] = field(default_factory=list)  # intervals of totals, per epoch
    concept_bands: dict[str, list[Interval | None]] = field(default_factory=dict)  # per concept


def _prefer(a: Dissection, b: Dissection) -> Dissection:
    """Of two dissections of the same epoch (``best.pt`` and ``epoch-004.pt``), keep the
    ``epoch-NNN`` one."""
    return a if a.model_stem.startswith("epoch") or not b.model_stem.startswith("epoch") else b


def _run_name(members: Iterable[Dissection]) -> str:
    """The label shared by a run's checkpoints, else its ``dataset/loss/init`` (labels such as
    "initial" and "trained" name checkpoints, not the run)."""
    members = list(members)
    bases = {d.base_name for d in members}
    if len(bases) == 1 and all(d.label is not None for d in members):
        return bases.pop()
    return default_base_name(members[-1])


def evolution_series(dissections: Sequence[Dissection], threshold: float) -> list[RunSeries]:
    """One series per (run folder, layer) that has dissections of two or more epochs."""
    groups: dict[tuple[str, str], dict[int, Dissection]] = {}
    for d in dissections:
        if d.epoch is None:
            continue
        by_epoch = groups.setdefault((d.run_dir, d.layer), {})
        by_epoch[d.epoch] = _prefer(by_epoch[d.epoch], d) if d.epoch in by_epoch else d
    runs = [(key, by_epoch) for key, by_epoch in groups.items() if len(by_epoch) >= 2]
    layers_per_run: Counter[str] = Counter(run_dir for (run_dir, _), _ in runs)
    run_dirs_of: dict[str, set[str]] = {}
    for (run_dir, _), by_epoch in runs:
        run_dirs_of.setdefault(_run_name(by_epoch.values()), set()).add(run_dir)
    series = []
    for (run_dir, layer), by_epoch in runs:
        epochs = sorted(by_epoch)
        members = [by_epoch[e] for e in epochs]
        concepts: list[str] = []
        for d in members:
            concepts.extend(c for c in d.concepts if c not in concepts)
        per_epoch = [detector_counts(d.units, threshold, concepts) for d in members]
        member_intervals = [concept_intervals(d, threshold) for d in members]
        name = _run_name(members)
        if len(run_dirs_of[name]) > 1:  # two runs of one name: say which folder
            name = f"{name} ({run_dir.rstrip('/').rsplit('/', 1)[-1] or run_dir})"
        if layers_per_run[run_dir] > 1:
            name = f"{name} @ {short_layer(layer)}"
        series.append(RunSeries(
            name=name, run_dir=run_dir, layer=layer, epochs=epochs,
            counts={c: [counts.get(c, 0) for counts in per_epoch] for c in concepts},
            totals=[sum(counts.values()) for counts in per_epoch], models=[d.name for d in members],
            bands=[total_interval(d, threshold) for d in members],
            concept_bands={c: [iv.get(c) for iv in member_intervals] for c in concepts}))
    return series


def series_changes(series: RunSeries) -> list[tuple[str, int, int]]:
    """``(concept, first, last)`` for concepts whose count differs between the first and last epoch,
    largest change first."""
    rows = [(c, v[0], v[-1]) for c, v in series.counts.items() if v[0] != v[-1]]
    return sorted(rows, key=lambda r: (-abs(r[2] - r[1]), r[0]))


@dataclass(frozen=True)
class GalleryUnit:
    unit: int
    concept: str
    iou: float


def gallery_units(units: Sequence[Unit], threshold: float, per_concept: int = 3
                  ) -> dict[str, list[GalleryUnit]]:
    """The ``per_concept`` detectors of highest IoU for each concept, concepts by detector count."""
    by_concept: dict[str, list[Unit]] = {}
    for unit in units:
        if is_detector(unit, threshold):
            by_concept.setdefault(unit.concept, []).append(unit)
    ordered = sorted(by_concept, key=lambda c: (-len(by_concept[c]), c))
    return {c: [GalleryUnit(u.unit, c, u.iou)
                for u in sorted(by_concept[c], key=lambda u: (-u.iou, u.unit))[:per_concept]]
            for c in ordered}


@dataclass(frozen=True)
class UnitName:
    concept: str | None  # the concept, UNLABELLED below the threshold, None when not dissected
    best_concept: str | None
    iou: float | None


def unit_names(attribution_set: AttributionSet, threshold: float) -> dict[int, UnitName]:
    """Names of the units of an attribution set: from the report's dissection at ``threshold``
    when it has one, else the labels stored in the attribution JSON."""
    d = attribution_set.dissection
    if d is not None:
        return {u.unit: UnitName(u.concept if is_detector(u, threshold) else UNLABELLED, u.concept, u.iou)
                for u in d.units}
    names: dict[int, UnitName] = {}
    for item in attribution_set.items:
        for row in item.top_k:
            if attribution_set.own_labels:
                concept = row.get("concept")
                names[row["unit"]] = UnitName(None if concept is None else str(concept),
                                              row.get("best_concept"), row.get("iou"))
    return names


@dataclass
class TopUnit:
    rank: int
    unit: int
    share: float
    contribution: float | None
    concept: str | None
    best_concept: str | None
    iou: float | None


def attribution_top_units(attribution_set: AttributionSet, threshold: float) -> list[list[TopUnit]]:
    """The top units of each attributed image, named as :func:`unit_names` says."""
    names = unit_names(attribution_set, threshold)
    rows = []
    for item in attribution_set.items:
        units = []
        for rank, row in enumerate(item.top_k, start=1):
            name = names.get(row["unit"], UnitName(None, None, None))
            share = row.get("share")
            contribution = row.get("contribution")
            units.append(TopUnit(rank=int(row.get("rank") or rank), unit=row["unit"],
                                 share=float(share) if isinstance(share, int | float) else 0.0,
                                 contribution=float(contribution)
                                 if isinstance(contribution, int | float) else None,
                                 concept=name.concept, best_concept=name.best_concept, iou=name.iou))
        rows.append(units)
    return rows


def attribution_top_labelled(attribution_set: AttributionSet, threshold: float) -> list[TopUnit | None]:
    """Per attributed image, its highest-ranked unit that is labelled with a concept (the paper:
    "select the top contributing unit(s) and use their annotations (if it exists)"), or None.

    Named as :func:`unit_names` says: with the report's dissection, every unit's contribution
    (``units``) is ranked (descending, ties by unit index, as ``cxrsem attribute`` ranks them)
    and the first detector at ``threshold`` is taken; without it, the record's own
    ``top_labelled`` (the dissection given to ``cxrsem attribute``)."""
    names = unit_names(attribution_set, threshold)
    found: list[TopUnit | None] = []
    for item in attribution_set.items:
        found.append(_ranked_labelled(item, names) if attribution_set.dissection is not None
                     and item.units else _stored_labelled(item))
    return found


def _labelled(name: UnitName | None) -> bool:
    return name is not None and name.concept not in (None, UNLABELLED)


def _ranked_labelled(item, names: Mapping[int, UnitName]) -> TopUnit | None:
    contributions = np.asarray(item.units, dtype=np.float64)
    total = float(contributions.sum())
    for rank, unit in enumerate(np.argsort(-contributions, kind="stable"), start=1):
        name = names.get(int(unit))
        if _labelled(name):
            return TopUnit(rank=rank, unit=int(unit),
                           share=float(contributions[unit] / total) if total > 0 else 0.0,
                           contribution=float(contributions[unit]), concept=name.concept,
                           best_concept=name.best_concept, iou=name.iou)
    return None


def _stored_labelled(item) -> TopUnit | None:
    entry = item.data.get("top_labelled")
    if not isinstance(entry, Mapping) or not isinstance(entry.get("unit"), int) \
            or not isinstance(entry.get("rank"), int) or not entry.get("concept"):
        return None
    share, contribution = entry.get("share"), entry.get("contribution")
    iou = entry.get("iou")
    return TopUnit(rank=entry["rank"], unit=entry["unit"],
                   share=float(share) if isinstance(share, int | float) else 0.0,
                   contribution=float(contribution) if isinstance(contribution, int | float) else None,
                   concept=str(entry["concept"]),
                   best_concept=str(entry.get("best_concept") or entry["concept"]),
                   iou=float(iou) if isinstance(iou, int | float) else None)


@dataclass
class ConceptRow:
    concept: str
    top_unit_images: int  # images whose top contributing unit detects the concept
    top_concept_images: int  # images where the concept's units together contribute most
    mean_share: float | None  # mean share of the concept's units in the total contribution
    images: int
    top_labelled_images: int = 0  # images whose highest-ranked labelled unit detects the concept


def top_contributor_table(attribution_set: AttributionSet, threshold: float) -> list[ConceptRow]:
    """Which concept most often is the top contributor (paper Fig. 5, Sec. 3.5).

    ``top_unit_images`` counts the images whose highest-contributing unit is labelled with the
    concept (``unlabelled`` when that unit detects nothing at the threshold); when the attribution
    holds every unit's contribution and a dissection names them, contributions are also summed per
    concept (``top_concept_images``, ``mean_share``).
    """
    names = unit_names(attribution_set, threshold)
    n = len(attribution_set.items)
    top_unit: Counter[str] = Counter()
    top_concept: Counter[str] = Counter()
    top_labelled = Counter(u.concept for u in attribution_top_labelled(attribution_set, threshold)
                           if u is not None)
    shares: dict[str, float] = {}
    summed = attribution_set.dissection is not None
    for item, units in zip(attribution_set.items,
                           attribution_top_units(attribution_set, threshold), strict=True):
        first = units[0]
        top_unit[first.concept or f"unit {first.unit}"] += 1
        if summed and item.units:
            totals: Counter[str] = Counter()
            for unit, value in enumerate(item.units):
                name = names.get(unit)
                totals[name.concept if name and name.concept else UNLABELLED] += abs(value)
            grand = sum(totals.values())
            for concept, value in totals.items():
                shares[concept] = shares.get(concept, 0.0) + (value / grand if grand > 0 else 0.0)
            named = [(v, c) for c, v in totals.items() if c != UNLABELLED]
            if named:
                top_concept[max(named, key=lambda x: (x[0], x[1]))[1]] += 1
    concepts = set(top_unit) | set(top_concept) | set(shares) | set(top_labelled)
    rows = [ConceptRow(c, top_unit.get(c, 0), top_concept.get(c, 0),
                       shares[c] / n if c in shares and n else None, n, top_labelled.get(c, 0))
            for c in concepts]
    return sorted(rows, key=lambda r: (r.concept == UNLABELLED, -r.top_unit_images,
                                       -r.top_labelled_images, -r.top_concept_images,
                                       -(r.mean_share or 0.0), r.concept))


SETTING_KEYS = (("seg_size", "seg size"), ("quantile", "quantile"), ("iou_threshold", "IoU threshold"))


def settings_warnings(dissections: Sequence[Dissection], threshold: float) -> list[str]:
    """Warnings for comparisons across dissections whose settings differ."""
    warnings = []
    for key, label in SETTING_KEYS:
        values: dict[Any, list[str]] = {}
        for d in dissections:
            values.setdefault(d.settings.get(key), []).append(d.name)
        if len(values) > 1:
            parts = "; ".join(f"{value} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
                              for value, names in values.items())
            note = (f" -- counts here are all recomputed at IoU > {threshold}, but unit figures exist "
                    f"only above each dissection's own threshold") if key == "iou_threshold" else (
                " -- IoUs are not comparable across these models")
            warnings.append(f"dissections with different {label}s are compared: {parts}{note}")
    concept_sets: dict[tuple, list[str]] = {}
    for d in dissections:
        concept_sets.setdefault(tuple(sorted(d.concept_images.items())), []).append(d.name)
    if len(concept_sets) > 1:
        warnings.append("dissections against different concept data (concepts or image counts "
                        "differ) are compared; see the model cards")
    below = sorted({float(d.settings["iou_threshold"]) for d in dissections
                    if isinstance(d.settings.get("iou_threshold"), int | float)
                    and threshold < d.settings["iou_threshold"]})
    if below:
        warnings.append(f"the report's IoU threshold {threshold} is below the dissections' "
                        f"{', '.join(map(str, below))}: units in between have no unit figure")
    return warnings
