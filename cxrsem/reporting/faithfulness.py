"""The report's "Faithfulness" section: the results of ``cxrsem verify`` (``verify.json``, schema
``cxrsem-verify/1``) -- deletion and insertion curves per attribution method against random
units, AOPC with paired comparisons, concept ablation and localisation of the top labelled unit.

Like the rest of the report's inputs, a file that cannot be read, has another schema or misses a
part becomes a warning and the rest is shown (:mod:`cxrsem.reporting.collect`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrsem.reporting.collect import find_files, finite_number, read_json

SCHEMA = "cxrsem-verify/1"


@dataclass(frozen=True)
class Estimate:
    """A value with its bootstrap interval, as ``verify.json`` stores it (any may be None: an
    AUROC over a split with one class is undefined)."""

    value: float | None
    low: float | None
    high: float | None

    def text(self, spec: str = ".3g") -> str:
        if self.value is None:
            return "–"
        if self.low is None or self.high is None:
            return format(self.value, spec)
        return f"{self.value:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"


@dataclass(frozen=True)
class Curve:
    method: str
    ks: list[int]
    aopc: Estimate
    deletion: list[Estimate]
    insertion: list[Estimate]


@dataclass(frozen=True)
class Comparison:
    first: str
    second: str
    difference: Estimate
    p_value: float | None
    p_adjusted: float | None


@dataclass(frozen=True)
class ConceptAblation:
    concept: str
    units: int
    change: Estimate
    random_change: Estimate
    excess: Estimate | None = None  # change - random_change, paired (absent in older records)
    excess_p: float | None = None


@dataclass(frozen=True)
class LocalisationRow:
    method: str
    images: int
    pointing_game: Estimate | None
    relevance_mass: Estimate | None


@dataclass
class Verification:
    """One ``verify.json``: what the report shows of it."""

    path: Path
    model: str
    layer: str
    images: int
    split: str
    metric: str
    metric_value: float | None
    resamples: int | None
    confidence: float | None
    curves: list[Curve]
    random: Curve | None
    comparisons: list[Comparison]
    concepts: list[ConceptAblation]
    localisation: list[LocalisationRow]
    localisation_sets: list[str]
    localisation_images: int
    sentences: list[str]
    figure: bytes | None = field(default=None, repr=False)

    @property
    def title(self) -> str:
        return f"{Path(self.model).name} — {self.layer}"


def _estimate(value: Any) -> Estimate:
    if not isinstance(value, Mapping):
        raise ValueError("an estimate is not an object")
    return Estimate(*(finite_number(value.get(key)) for key in ("value", "low", "high")))


def _curve(data: Any) -> Curve:
    if not isinstance(data, Mapping):
        raise ValueError("a curve is not an object")
    ks = data.get("ks")
    if not isinstance(ks, list) or not all(isinstance(k, int) for k in ks):
        raise ValueError("a curve has no integer ks")
    deletion = [_estimate(e) for e in data.get("deletion") or []]
    insertion = [_estimate(e) for e in data.get("insertion") or []]
    if len(deletion) != len(ks) or len(insertion) != len(ks):
        raise ValueError(f"curve {data.get('method')!r} has {len(deletion)} deletion and "
                         f"{len(insertion)} insertion points for {len(ks)} ks")
    return Curve(str(data.get("method")), ks, _estimate(data.get("aopc")), deletion, insertion)


def parse_verification(path: Path, data: Mapping[str, Any]) -> Verification:
    """A :class:`Verification` from a ``verify.json``; ``ValueError`` says what is wrong."""
    if data.get("schema") != SCHEMA:
        raise ValueError(f"schema {data.get('schema')!r}, expected {SCHEMA}")
    curves = [_curve(c) for c in data.get("curves") or []]
    if not curves:
        raise ValueError("it has no curves")
    random = _curve(data["random"]) if data.get("random") is not None else None
    comparisons = [Comparison(str(c.get("first")), str(c.get("second")), _estimate(c.get("difference")),
                              finite_number(c.get("p_value")), finite_number(c.get("p_adjusted")))
                   for c in data.get("aopc_comparisons") or [] if isinstance(c, Mapping)]
    concepts = [ConceptAblation(str(c.get("concept")), len(c.get("units") or []),
                                _estimate(c.get("change")), _estimate(c.get("random_change")),
                                _estimate(c["excess"]) if c.get("excess") else None,
                                finite_number(c.get("excess_p")))
                for c in data.get("concept_ablation") or [] if isinstance(c, Mapping)]
    local = data.get("localisation") if isinstance(data.get("localisation"), Mapping) else {}
    rows = []
    for m in local.get("methods") or []:
        if isinstance(m, Mapping):
            rows.append(LocalisationRow(
                str(m.get("method")), int(m.get("images") or 0),
                _estimate(m["pointing_game"]) if m.get("pointing_game") else None,
                _estimate(m["relevance_mass"]) if m.get("relevance_mass") else None))
    settings = data.get("settings") if isinstance(data.get("settings"), Mapping) else {}
    resamples = settings.get("resamples")
    return Verification(
        path=path, model=str(data.get("model") or "?"), layer=str(data.get("layer") or "?"),
        images=int(data.get("images") or 0), split=str(data.get("split") or "?"),
        metric=str(data.get("metric") or "?"), metric_value=finite_number(data.get("metric_value")),
        resamples=resamples if isinstance(resamples, int) else None,
        confidence=finite_number(settings.get("confidence")), curves=curves, random=random,
        comparisons=comparisons, concepts=concepts, localisation=rows,
        localisation_sets=[str(s) for s in local.get("concept_sets") or []],
        localisation_images=int(local.get("images") or 0),
        sentences=[str(s) for s in data.get("sentences") or []])


def load_verifications(roots: Sequence[str | Path], warnings: list[str],
                       with_figures: bool = True) -> list[Verification]:
    """Every readable ``verify.json`` under ``roots`` (folders of ``cxrsem verify --out``, or the
    files), once each, with its curves figure."""
    from cxrsem.reporting.figures import faithfulness_figure

    found: list[Verification] = []
    seen: set[Path] = set()
    for given in roots:
        root = Path(given)
        if not root.exists():
            warnings.append(f"{root} does not exist; skipped")
            continue
        paths = find_files(root, "verify.json")
        if not paths:
            warnings.append(f"{root} holds no verify.json (written by `cxrsem verify --out`); skipped")
        for path in paths:
            if path.resolve() in seen:
                continue
            seen.add(path.resolve())
            data = read_json(path, warnings, "verify result")
            if data is None:
                continue
            try:
                verification = parse_verification(path, data)
            except (ValueError, TypeError, KeyError) as exc:
                warnings.append(f"verify result {path}: {exc}; skipped")
                continue
            if with_figures:
                verification.figure = faithfulness_figure(verification)
            found.append(verification)
    return found


def p_text(p: float | None, resamples: int | None) -> str:
    """A bootstrap p-value as text: ``< 1/B`` where no resample crossed zero."""
    if p is None:
        return "–"
    if p == 0 and resamples:
        return f"< {1 / resamples:.2g}"
    return f"{p:.3g}"


def verdict(difference: Estimate) -> str:
    if difference.low is not None and difference.low > 0:
        return "larger"
    if difference.high is not None and difference.high < 0:
        return "smaller"
    return "not distinguishable"
