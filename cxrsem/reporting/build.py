"""From collected results to everything a report shows (:class:`ReportData`), independent of the
output format; :mod:`cxrsem.reporting.html` and :mod:`cxrsem.reporting.markdown` only render it."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cxrsem.formats.dissection import UNLABELLED
from cxrsem.reporting import figures
from cxrsem.reporting.aggregate import (
    THRESHOLDS,
    ConceptRow,
    GalleryUnit,
    ModelCounts,
    NullCount,
    RunSeries,
    TopUnit,
    attribution_top_labelled,
    attribution_top_units,
    chance_sentence,
    concept_order,
    evolution_series,
    gallery_units,
    model_counts,
    null_record,
    series_changes,
    settings_warnings,
    top_concepts,
    top_contributor_table,
)
from cxrsem.reporting.collect import AttributionSet, Collected, Dissection
from cxrsem.reporting.faithfulness import Verification

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
UNITS_PER_CONCEPT = 3
GALLERY_UNITS_PER_MODEL = 24
GALLERY_UNITS_TOTAL = 150  # unit figures are ~80 kB each: keeps a report of many models openable
ATTRIBUTIONS_PER_SET = 24


def read_png(path: Path | None) -> bytes | None:
    """The file's bytes when it is a PNG (anything else is not embedded)."""
    if path is None:
        return None
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return data if data.startswith(PNG_SIGNATURE) else None


@dataclass
class GalleryItem:
    unit: GalleryUnit
    png: bytes | None
    source: Path | None


@dataclass
class GalleryModel:
    name: str
    layer: str
    concepts: list[tuple[str, list[GalleryItem]]]
    detectors: int
    left_out: int  # detectors beyond the per-concept / per-model limits
    missing: int  # chosen units without a figure
    limit: int = GALLERY_UNITS_PER_MODEL


@dataclass
class AttributedImage:
    image: str
    stem: str
    target: str
    prediction: float | None
    rel_gap: float | None
    units: list[TopUnit]
    png: bytes | None
    source: Path | None
    top_labelled: TopUnit | None = None  # the highest-ranked labelled unit (shown when not in units)


def shown_units(image: AttributedImage) -> list[tuple[TopUnit, bool]]:
    """The rows of an image's unit table: its top units, then its top labelled unit when it ranks
    below them; each with whether it is the top labelled unit."""
    first = image.top_labelled
    rows = [(u, first is not None and u.unit == first.unit) for u in image.units]
    if first is not None and not any(is_first for _u, is_first in rows):
        rows.append((first, True))
    return rows


def unit_rank_text(unit: TopUnit, top_labelled: bool) -> str:
    return f"{unit.rank} (top labelled)" if top_labelled else str(unit.rank)


@dataclass
class AttributionView:
    title: str
    folder: Path
    model_path: str
    layer: str | None
    method: str  # the attribution method and its settings
    naming: str  # how units are named
    named: bool
    images: list[AttributedImage]
    total: int
    table: list[ConceptRow]


@dataclass
class ModelCard:
    name: str
    sections: list[tuple[str, list[tuple[str, str]]]]
    metrics: list[tuple[str, str]]
    concept_sets: list[tuple[str, list[tuple[str, int | None]]]]  # (set, [(concept, images)])


@dataclass
class ReportData:
    threshold: float
    thresholds: tuple[float, ...]
    created: str
    version: str
    warnings: list[str]
    models: list[ModelCounts]
    concepts: list[str]
    colors: dict[str, str]
    observations: list[str]
    runs: list[RunSeries]
    run_observations: list[str]
    gallery: list[GalleryModel]
    attributions: list[AttributionView]
    cards: list[ModelCard]
    mixed_settings: bool
    fig_detectors: bytes | None = None
    fig_concept_intervals: bytes | None = None  # only with dissect --bootstrap
    fig_evolution: bytes | None = None
    fig_thresholds: bytes | None = None
    faithfulness: list[Verification] = field(default_factory=list)  # cxrsem verify results
    # A study's claims table (cxrsem.study.claims: claims.json), shown first: (headers, rows, note)
    claims: tuple[list[str], list[list[str]], str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ", ".join(_fmt(v) for v in value)
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    return str(value)


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def concept_text(concept: str | None, best: str | None, iou: float | None) -> str:
    """How a top unit is named in tables: ``Consolidation (IoU 0.081)``, ``unlabelled (best: ...)``."""
    if concept is None:
        return "–"
    if concept == UNLABELLED and best:
        return f"unlabelled (best: {best}, IoU {iou:.3f})" if iou is not None else "unlabelled"
    return f"{concept} (IoU {iou:.3f})" if iou is not None else concept


def pretraining_chain(d: Dissection, by_path: Mapping[str, Dissection], depth: int = 5) -> str:
    """``init`` followed back through checkpoints: ``from runs/chexpert/best.pt (chexpert/bce,
    epoch 3) ← imagenet``.  A checkpoint's info is read from the dissections given or from its
    run's ``config.toml``; the checkpoint itself is never loaded."""
    parts = []
    init = d.train.get("init")
    run_dir = Path(d.model_path).parent if d.model_path else None
    for _ in range(depth):
        if init in (None, "", "random", "imagenet"):
            parts.append(str(init or "?"))
            break
        path = Path(str(init))
        if not path.is_absolute() and run_dir is not None and not path.exists():
            path = run_dir / path  # relative paths in a config are most often relative to the run
        known = by_path.get(str(path)) or by_path.get(str(init))
        if known is not None:
            parts.append(f"{init} ({known.train.get('dataset')}/{known.train.get('loss')}, epoch "
                         f"{known.train.get('epoch')})")
            init, run_dir = known.train.get("init"), path.parent
            continue
        config_path = path.parent / "config.toml"
        try:
            train = tomllib.loads(config_path.read_text(encoding="utf-8")).get("train", {})
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            parts.append(f"{init} (its run config is not readable here)")
            break
        parts.append(f"{init} ({train.get('dataset')}/{train.get('loss')})")
        init, run_dir = train.get("init"), path.parent
    return " ← ".join(parts)


def _uncertainty_rows(d: Dissection) -> list[tuple[str, str]]:
    """Images and patients behind the counts and, with ``dissect --bootstrap``, their intervals."""
    rows = []
    stats = d.data.get("image_stats")
    if isinstance(stats, Mapping) and isinstance(stats.get("num_groups"), int):
        rows.append(("images / patients", f"{_fmt(stats.get('num_images'))} / {stats['num_groups']}"))
        rows += _per_set_patients(d)
    boot = d.data.get("bootstrap")
    if isinstance(boot, Mapping) and isinstance(boot.get("num_detectors"), Mapping):
        total = boot["num_detectors"]
        rows.append(("bootstrap (at the dissection's threshold)",
                     f"{_fmt(total.get('count'))} [{_fmt(total.get('low'))}, {_fmt(total.get('high'))}] "
                     f"detectors, {_fmt(boot.get('confidence'))} interval from "
                     f"{_fmt(boot.get('resamples'))} resamples of {_fmt(boot.get('group_by'))}s"))
    return rows


def _per_set_patients(d: Dissection) -> list[tuple[str, str]]:
    """Images and patients of each concept set (group names are ``"<set>/<patient>"``), read
    from ``imagestats.npz``; nothing when it is missing or unreadable."""
    from collections import Counter

    from cxrsem.errors import CxrsemError
    from cxrsem.statistics.imagestats import ImageStats

    path = d.own_file("imagestats.npz")
    if path is None:
        return []
    try:
        stats = ImageStats.load(path)
    except CxrsemError:
        return []
    set_of_group = [name.split("/", 1)[0] for name in stats.group_names]
    images = Counter(set_of_group[g] for g in stats.groups.tolist())
    patients = Counter(set_of_group)
    return [(f"  {name}: images / patients", f"{images[name]} / {patients[name]}")
            for name in dict.fromkeys(set_of_group)]


def _sensitivity_rows(d: Dissection) -> list[tuple[str, str]]:
    """``dissect --sensitivity``: one row per quantile, the counts at each IoU threshold."""
    grid = d.data.get("sensitivity")
    if not isinstance(grid, Mapping):
        return []
    thresholds = grid.get("iou_thresholds") or []
    return [(f"q = {q:g}", ", ".join(f"{t:g}: {n}" for t, n in zip(thresholds, counts, strict=False)))
            for q, counts in zip(grid.get("quantiles") or [], grid.get("detectors") or [],
                                 strict=False)]


def _per_draw(count: NullCount, word: str) -> str:
    return f"; per {word} {', '.join(map(str, count.per_draw))}" if count.per_draw else ""


def _nonzero(counts: Mapping[str, int | float]) -> str:
    return ", ".join(f"{c} {_fmt(n)}" for c, n in counts.items() if n) or "none"


def _chance_rows(d: Dissection, m: ModelCounts, threshold: float) -> list[tuple[str, str]]:
    """The chance baselines' settings and counts (``dissect --null``) at the report's threshold."""
    nulls = null_record(d.data, threshold)
    if nulls is None or not m.has_nulls:
        return []
    rows = [("IoU threshold / FDR", f"{_fmt(nulls.get('iou_threshold', threshold))} / "
                                    f"{_fmt(m.fdr)} (Benjamini-Hochberg over units)")]
    shuffle = nulls.get("shuffle") if isinstance(nulls.get("shuffle"), Mapping) else None
    if shuffle is not None:
        rows.append(("shuffled annotations", f"{_fmt(shuffle.get('permutations'))} permutations, "
                                             f"seed {_fmt(shuffle.get('seed'))}"))
    if m.significant is not None:
        rows.append(("significant detectors", f"{m.significant} of {m.total} "
                                              f"({_nonzero(m.significant_per_concept)})"))
    if m.shuffled is not None:
        rows.append(("detectors with shuffled annotations", str(m.shuffled)))
    init = nulls.get("random_init") if isinstance(nulls.get("random_init"), Mapping) else None
    if init is not None:
        rows.append(("untrained networks", f"{_fmt(init.get('models'))} networks, seeds "
                                           f"{_fmt(init.get('seeds'))}"))
    if m.random_init is not None:
        rows.append(("their detectors", f"{m.random_init}{_per_draw(m.random_init, 'network')}"))
    rotation = nulls.get("rotation") if isinstance(nulls.get("rotation"), Mapping) else None
    if rotation is not None:
        rows.append(("rotated unit basis", f"{_fmt(rotation.get('rotations'))} rotation(s), "
                                           f"seed {_fmt(rotation.get('seed'))}"))
    if m.rotation is not None:
        rows.append(("its detectors", f"{m.rotation}{_per_draw(m.rotation, 'rotation')}"))
    if m.initial_checkpoint is not None:
        rows.append(("the run's initial checkpoint", f"{m.initial_checkpoint.path or '?'}: "
                                                     f"{plural(int(m.initial_checkpoint.mean), 'detector')}"))
    return rows


def _definition_rows(m: ModelCounts) -> list[tuple[str, str]]:
    """``dissect`` with a variant definition: both definitions, the paper's counts and the units
    that move (at the dissection's threshold)."""
    d = m.definitions
    if d is None:
        return []

    def described(settings: Mapping[str, Any]) -> str:
        return ", ".join(f"{_DEFINITION_NAMES.get(k, k)} {_setting_text(v)}"
                         for k, v in settings.items())

    def units(found: list[int]) -> str:
        return _fmt(found) if found else "none"

    return [("this dissection", described(d.this)), ("the paper's", described(d.paper)),
            ("detectors by the paper's definition",
             f"{d.paper_total} ({_nonzero(d.paper_counts)})"),
            ("detectors only here (units)", units(d.only_this)),
            ("detectors only by the paper's (units)", units(d.only_paper)),
            ("relabelled (units)", units(d.relabelled))]


def _elsewhere_rows(d: Dissection, m: ModelCounts, threshold: float) -> list[tuple[str, str]]:
    """Where the dissection has chance baselines or the paper's definition beside its own, but
    at another threshold than the report's: say so (they are not shown)."""
    rows = []
    nulls = d.data.get("nulls")
    if isinstance(nulls, Mapping) and not m.has_nulls:
        at = nulls.get("iou_threshold", d.settings.get("iou_threshold"))
        rows.append(("chance baselines", f"computed at IoU > {_fmt(at)} only; not shown at the "
                                         f"report's {threshold:g}"))
    if isinstance(d.data.get("definitions"), Mapping) and m.definitions is None:
        at = d.settings.get("iou_threshold")
        rows.append(("definitions compared with the paper's",
                     f"at IoU > {_fmt(at)} only; not shown at the report's {threshold:g}"))
    return rows


def model_card(d: Dissection, counts: ModelCounts, by_path: Mapping[str, Dissection],
               threshold: float) -> ModelCard:
    model = d.data.get("model") if isinstance(d.data.get("model"), Mapping) else {}
    task = model.get("task") if isinstance(model.get("task"), Mapping) else {}
    inputs = model.get("input") if isinstance(model.get("input"), Mapping) else {}
    run = d.run_config().get("train", {})
    manifest = d.manifest()
    sections = [
        ("Model", [
            ("checkpoint", d.model_path or "?"),
            ("weights sha256", str(d.sha256 or "?")),
            ("architecture", _fmt(model.get("arch"))),
            ("task", f"{_fmt(task.get('kind'))}: {_fmt(task.get('outputs'))}"),
            ("input", f"{_fmt(inputs.get('size'))} px, {_fmt(inputs.get('channels'))} channel(s)"),
            ("checkpoint cxrsem version", _fmt(model.get("cxrsem_version"))),
        ]),
        ("Training", [
            ("dataset", _fmt(d.train.get("dataset"))),
            ("loss", _fmt(d.train.get("loss"))),
            ("init / pretraining", pretraining_chain(d, by_path)),
            ("epoch of this checkpoint", _fmt(d.epoch)),
        ] + [(f"run {key}", _fmt(run[key])) for key in ("epochs", "batch_size", "lr", "image_size", "seed")
             if key in run]),
        ("Dissection", [
            ("layer", d.layer),
            ("units", str(d.num_units)),
            ("feature shape", _fmt(d.data.get("feature_shape"))),
            ("quantile (P(f_k > T_k))", _fmt(d.settings.get("quantile"))),
            ("IoU threshold of the dissection", _fmt(d.settings.get("iou_threshold"))),
            ("seg size", _fmt(d.settings.get("seg_size"))),
            ("images (for T_k / for IoU)", f"{_fmt(d.settings.get('threshold_images'))} / "
                                         f"{_fmt(d.data.get('num_images'))}"),
            ("detectors at the report's threshold", f"{counts.total} ({plural(counts.unique, 'concept')})"),
            ("dissected with cxrsem", _fmt(manifest.get("cxrsem"))),
            ("dissected on", _fmt(manifest.get("created"))),
            ("result", str(d.json_path)),
        ] + _uncertainty_rows(d) + _elsewhere_rows(d, counts, threshold)),
        ("Chance baselines (dissect --null)", _chance_rows(d, counts, threshold)),
        ("Definition: this dissection's and the paper's", _definition_rows(counts)),
        ("Sensitivity: detectors by quantile q (rows) and IoU threshold", _sensitivity_rows(d)),
    ]
    metrics = d.train.get("metrics") if isinstance(d.train.get("metrics"), Mapping) else {}
    concept_sets: list[tuple[str, list[tuple[str, int | None]]]] = []
    listed: set[str] = set()
    for entry in d.data.get("concept_sets") or []:
        if not isinstance(entry, Mapping):
            continue
        names = [str(c) for c in entry.get("concepts") or []]
        concept_sets.append((str(entry.get("name")), [(c, d.concept_images.get(c)) for c in names]))
        listed.update(names)
    rest = [(c, d.concept_images.get(c)) for c in d.concepts if c not in listed]
    if rest:
        concept_sets.append(("other", rest))
    return ModelCard(d.name, sections, [(str(k), _fmt(v)) for k, v in metrics.items()], concept_sets)


_DEFINITION_NAMES = {"quantile": "quantile", "quantile_sample": "quantile sample",
                     "iou_over": "IoU over", "merge_concepts": "concepts merged"}


def _setting_text(value: Any) -> str:
    return ("yes" if value else "no") if isinstance(value, bool) else _fmt(value)


def definitions_sentence(m: ModelCounts) -> str | None:
    """``a.pt: by the paper's definition 5 detectors (here: quantile 0.05 instead of 0.005);
    2 units move (1 only here, 1 only by the paper's, 0 relabelled)``."""
    d = m.definitions
    if d is None:
        return None
    here = ", ".join(f"{_DEFINITION_NAMES.get(key, key)} {_setting_text(this)} instead of "
                     f"{_setting_text(paper)}" for key, this, paper in d.differences())
    moves = "unit moves" if d.moved == 1 else "units move"
    return (f"{m.name}: by the paper's definition {plural(d.paper_total, 'detector')}"
            + (f" (here: {here})" if here else "")
            + f"; {d.moved} {moves} ({len(d.only_this)} only here, {len(d.only_paper)} only by the "
              f"paper's, {len(d.relabelled)} relabelled).")


def null_columns(models: Sequence[ModelCounts]) -> list[str]:
    """The Fig. 2 table's columns for the chance baselines: ``significant`` when a model has the
    shuffled null, ``random init (mean)`` when one has untrained networks (none without nulls)."""
    columns = []
    if any(m.significant is not None for m in models):
        columns.append("significant")
    if any(m.random_init is not None for m in models):
        columns.append("random init (mean)")
    return columns


def null_cells(m: ModelCounts, columns: Sequence[str]) -> list[int | float | None]:
    """``m``'s cells of :func:`null_columns` (a mean to three significant digits; None: not computed)."""
    cells: list[int | float | None] = []
    for column in columns:
        if column == "significant":
            cells.append(m.significant)
        else:
            cells.append(None if m.random_init is None else float(f"{m.random_init.mean:.3g}"))
    return cells


def null_legend(models: Sequence[ModelCounts]) -> str | None:
    """What Fig. 2 draws of the chance baselines the models have (None without any)."""
    bars = [text for attr, text in (
        ("random_init", "untrained networks of its architecture (solid)"),
        ("shuffled", "its units with each concept's annotations shuffled among the images holding "
                     "it (hatched)"),
        ("rotation", "a rotated unit basis (dotted)")) if any(getattr(m, attr) for m in models)]
    parts = []
    if bars:
        listed = bars[0] if len(bars) == 1 else f"{', '.join(bars[:-1])} and {bars[-1]}"
        parts.append(f"thin grey bars beside a model's give the detectors of {listed}, each the "
                     f"mean over the draws with a whisker for their range")
    if any(m.significant is not None for m in models):
        parts.append("a black diamond marks the detectors that are significant against the "
                     "shuffled annotations (Benjamini-Hochberg over units)")
    if not parts:
        return None
    return f"Chance baselines (dissect --null, computed at this threshold): {'; '.join(parts)}."


CHANCE_KINDS = (("shuffled", "shuffled annotations"), ("random_init", "untrained networks"),
                ("rotation", "rotated basis"), ("initial_checkpoint", "epoch-000"))


def chance_table(models: Sequence[ModelCounts], concepts: Sequence[str]
                 ) -> tuple[list[str], list[list[Any]]]:
    """Per model and concept: detectors, significant detectors and each chance baseline's
    detectors (:class:`NullCount`, None where not computed); concepts in ``concepts``' order, then
    the model's others, each only where something is non-zero.  Empty without nulls."""
    shown = [m for m in models if m.has_nulls]
    kinds = [(attr, label) for attr, label in CHANCE_KINDS if any(getattr(m, attr) for m in shown)]
    significant = any(m.significant is not None for m in shown)
    headers = ["model", "concept", "detectors"] + (["significant"] if significant else []) + [
        label for _, label in kinds]
    rows: list[list[Any]] = []
    for m in shown:
        names = list(concepts) + [c for c in m.dissection.concepts if c not in concepts]
        for concept in names:
            per_kind = [getattr(m, attr).per_concept.get(concept) if getattr(m, attr) else None
                        for attr, _ in kinds]
            sig = m.significant_per_concept.get(concept) if m.significant is not None else None
            if not (m.counts.get(concept) or sig or any(c is not None and c.high > 0 for c in per_kind)):
                continue
            rows.append([m.name, concept, m.counts.get(concept, 0)]
                        + ([sig] if significant else []) + per_kind)
    return (headers, rows) if rows else ([], [])


def _observations(models: Sequence[ModelCounts], threshold: float) -> list[str]:
    lines = []
    for m in models:
        tops = ", ".join(f"{c} ({n})" for c, n in top_concepts(m.counts, 3)) or "none"
        share = 100.0 * m.total / m.dissection.num_units if m.dissection.num_units else 0.0
        lines.append(f"{m.name}: {plural(m.total, 'detector')} of {m.dissection.num_units} units "
                     f"({share:.1f}%), {plural(m.unique, 'unique concept')}; most: {tops}.")
        chance = chance_sentence(m.name, m.total, m) if m.has_nulls else None
        lines += [s for s in (chance, definitions_sentence(m)) if s]
    if len(models) > 1:
        best = max(models, key=lambda m: (m.total, m.unique))
        diverse = max(models, key=lambda m: (m.unique, m.total))
        lines.append(f"Most detectors: {best.name} ({best.total}); most unique concepts: "
                     f"{diverse.name} ({diverse.unique}) at IoU > {threshold:g}.")
    return lines


def _run_observations(runs: Sequence[RunSeries]) -> list[str]:
    lines = []
    for run in runs:
        first, last = run.epochs[0], run.epochs[-1]
        changes = series_changes(run)
        up = ", ".join(f"{c} {a}→{b}" for c, a, b in changes if b > a) or "none"
        down = ", ".join(f"{c} {a}→{b}" for c, a, b in changes if b < a) or "none"
        lines.append(f"{run.name}: {plural(run.totals[0], 'detector')} at epoch {first} → "
                     f"{run.totals[-1]} at epoch {last} (peak {max(run.totals)}); increased: {up}; "
                     f"decreased: {down}.")
    return lines


def gallery_limit(n_models: int) -> int:
    return max(6, min(GALLERY_UNITS_PER_MODEL, GALLERY_UNITS_TOTAL // max(1, n_models)))


def _gallery(m: ModelCounts, threshold: float, limit: int) -> GalleryModel:
    chosen = gallery_units(m.dissection.units, threshold, UNITS_PER_CONCEPT)
    concepts, shown, missing = [], 0, 0
    for concept, units in chosen.items():
        items = []
        for unit in units:
            if shown >= limit:
                break
            path = m.dissection.unit_figure(unit.unit)
            png = read_png(path)
            missing += png is None
            items.append(GalleryItem(unit, png, path if png is not None else None))
            shown += 1
        if items:
            concepts.append((concept, items))
    return GalleryModel(m.name, m.dissection.layer, concepts, m.total, m.total - shown, missing, limit)


def _attribution_view(s: AttributionSet, threshold: float, title: str) -> AttributionView:
    if s.dissection is not None:
        naming = (f"units named by the dissection of {s.dissection.name} at IoU > {threshold:g} "
                  f"(the report's threshold)")
    elif s.own_labels:
        naming = ("units named by the labels stored with the attribution (its dissection is not in "
                  "this report)")
    else:
        naming = "units unnamed: no dissection of this model and layer"
    tops = attribution_top_units(s, threshold)
    labelled = attribution_top_labelled(s, threshold)
    images = []
    for item, units, first_labelled in list(zip(s.items, tops, labelled, strict=True))[:ATTRIBUTIONS_PER_SET]:
        path = item.figure()
        png = read_png(path)
        images.append(AttributedImage(item.image, item.stem, item.target, item.prediction, item.rel_gap,
                                      units, png, path if png is not None else None, first_labelled))
    named = s.dissection is not None or s.own_labels
    return AttributionView(title=title, folder=s.folder, model_path=s.model_path, layer=s.layer,
                           method=s.method, naming=naming, named=named, images=images, total=len(s.items),
                           table=top_contributor_table(s, threshold) if named else [])


REPORT_RESAMPLES = 1000  # bootstrap resamples behind the report's comparison sentences


def _bootstrap_sentences(dissections: Sequence[Dissection], threshold: float, warnings: list[str],
                         last_only: bool = False) -> list[str]:
    """``cxrsem compare``'s sentences for these dissections against the first (the total, and
    every concept whose difference is significant), when each has its per-image statistics and
    was dissected at the report's threshold; ``last_only``: only the last against the first (an
    epoch series: the final checkpoint against epoch 0)."""
    from cxrsem.errors import CxrsemError
    from cxrsem.statistics.compare import IMAGE_STATS, TOTAL, Model, compare_models
    from cxrsem.statistics.imagestats import ImageStats

    usable = [d for d in dissections if d.own_file(IMAGE_STATS) is not None
              and d.settings.get("iou_threshold") == threshold]
    if last_only:
        usable = usable[:1] + usable[-1:] if len(usable) > 1 else []
    if len(usable) < 2:
        return []
    try:
        models = [Model(d.name, d.result, ImageStats.load(d.own_file(IMAGE_STATS))) for d in usable]
        result = compare_models(models, resamples=REPORT_RESAMPLES)
    except CxrsemError as exc:
        warnings.append(f"bootstrap comparison skipped: {exc}")
        return []
    sentences = []
    for comparison in result.comparisons:
        how = "paired" if comparison.paired else "unpaired"
        for row in comparison.rows:
            if row.quantity == TOTAL or row.significant(result.alpha):
                sentences.append(f"{row.sentence(comparison.a, comparison.b, result.alpha)} "
                                 f"({how} bootstrap, {result.resamples} resamples)")
    return sentences


def assemble(collected: Collected, threshold: float, *, version: str,
             with_figures: bool = True) -> ReportData:
    dissections = collected.dissections
    warnings = list(collected.warnings)
    warnings.extend(settings_warnings(dissections, threshold))
    models = [model_counts(d, threshold, THRESHOLDS) for d in dissections]
    concepts = concept_order(m.counts for m in models)
    everything = list(concepts)
    for d in dissections:
        everything.extend(c for c in d.concepts if c not in everything)
    colors = figures.concept_colors(everything)
    runs = evolution_series(dissections, threshold)
    by_path = {d.model_path: d for d in dissections if d.model_path}
    names = {}
    for s in collected.attributions:
        base = s.dissection.name if s.dissection is not None else Path(s.model_path).stem
        names[id(s)] = base if base not in names.values() else f"{base} ({s.folder.name})"
    observations = _observations(models, threshold) + _bootstrap_sentences(
        dissections, threshold, warnings)
    run_observations = _run_observations(runs)
    for run in runs:
        members = [d for name in run.models for d in dissections if d.name == name]
        run_observations += _bootstrap_sentences(members, threshold, warnings, last_only=True)
    data = ReportData(
        threshold=threshold, thresholds=THRESHOLDS, version=version, warnings=warnings,
        created=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        models=models, concepts=concepts, colors=colors,
        observations=observations, runs=runs, run_observations=run_observations,
        gallery=[_gallery(m, threshold, gallery_limit(len(models))) for m in models],
        attributions=[_attribution_view(s, threshold, names[id(s)]) for s in collected.attributions],
        cards=[model_card(m.dissection, m, by_path, threshold) for m in models],
        mixed_settings=any(w.startswith("dissections with different") for w in warnings))
    if with_figures and models:
        data.fig_detectors = figures.detectors_figure(models, concepts, colors, threshold)
        data.fig_concept_intervals = figures.concept_intervals_figure(models, concepts, colors, threshold)
        data.fig_thresholds = figures.threshold_figure(models, threshold)
    if with_figures and runs:
        data.fig_evolution = figures.evolution_figure(runs, colors, threshold)
    return data
