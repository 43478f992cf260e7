"""``cxrsem report``: one report over dissections, epochs and attributions (paper Figs. 2-5).

::

    from cxrsem.reporting import build_report

    result = build_report(["dissect/"], attributions=["attr/"], labels={"dissect/": "phantom"},
                          iou_threshold=0.04, out="report.html")
    result.warnings       # problems with inputs, one line each (what was valid is still reported)
    result.summary        # one SummaryRow per dissected model and layer

Inputs are the outputs of ``cxrsem dissect`` (``dissection.json``, schema ``cxrsem-dissection/1``)
and ``cxrsem attribute`` (``<stem>.json``, schema ``cxrsem-attribution/1``).  Detector counts are
recomputed from each unit's best IoU at ``iou_threshold``.  See ``docs/report.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cxrsem.errors import DataError, UsageError
from cxrsem.formats.dissection import DEFAULT_IOU_THRESHOLD
from cxrsem.outputs import write_text
from cxrsem.reporting.aggregate import (
    THRESHOLDS,
    detector_counts,
    evolution_series,
    threshold_curve,
    top_concepts,
    top_contributor_table,
)
from cxrsem.reporting.collect import collect, parse_labels
from cxrsem.reporting.faithfulness import load_verifications

__all__ = [
    "FORMATS",
    "ReportResult",
    "SummaryRow",
    "build_report",
    "parse_labels",
    "detector_counts",
    "evolution_series",
    "threshold_curve",
    "top_contributor_table",
    "THRESHOLDS",
]

FORMATS = ("html", "md")


@dataclass(frozen=True)
class SummaryRow:
    """One dissected model and layer at the report's threshold."""

    model: str
    layer: str
    epoch: int | None
    units: int
    detectors: int
    unique_concepts: int
    top_concepts: list[tuple[str, int]]
    path: str


@dataclass
class ReportResult:
    out: Path
    format: str
    iou_threshold: float
    summary: list[SummaryRow]
    warnings: list[str]
    runs: int = 0
    attributions: int = 0
    verifications: int = 0
    files: list[Path] = field(default_factory=list)  # everything written, the report first

    @property
    def path(self) -> Path:
        """The report file (same as :attr:`out`)."""
        return self.out


def load_claims(path: str | Path, warnings: list[str]) -> tuple[list[str], list[list[str]], str] | None:
    """The claims table of a study's ``claims.json``: (headers, rows, note); None (with a warning)
    when it cannot be read."""
    from cxrsem.reporting.collect import read_json
    from cxrsem.study.claims import CLAIM_COLUMNS, claim_rows, claims_note

    data = read_json(Path(path), warnings, "claims table")
    if data is None:
        return None
    try:
        return list(CLAIM_COLUMNS), claim_rows(data["claims"], data.get("resamples")), \
            claims_note(data)
    except (KeyError, TypeError, ValueError) as exc:
        warnings.append(f"claims table {path} is not a cxrsem claims file ({exc}); skipped")
        return None


def build_report(dissect_dirs: Sequence[str | Path], attributions: Sequence[str | Path] = (),
                 labels: Mapping[str, str] | None = None, iou_threshold: float = DEFAULT_IOU_THRESHOLD,
                 out: str | Path = "report.html", fmt: str = "html",
                 verify: Sequence[str | Path] = (), claims: str | Path | None = None) -> ReportResult:
    """Write the report of the dissections under ``dissect_dirs`` (the ``cxrsem dissect --out``
    folder, a model folder, a layer folder or a ``dissection.json``) and the attributions in the
    ``attributions`` folders, with the faithfulness checks (``cxrsem verify --out``) under
    ``verify``; ``claims``: a study's ``claims.json`` (:mod:`cxrsem.study.claims`), whose table then
    opens the report.

    ``labels`` maps a folder (or checkpoint) to the name its models get; ``fmt`` is ``html`` (one
    self-contained file) or ``md`` (Markdown plus PNGs in ``<out stem>_files/``).  Unreadable or
    inconsistent inputs become :attr:`ReportResult.warnings` and the report covers what is valid;
    a :class:`~cxrsem.errors.DataError` only when nothing valid is left.
    """
    from cxrsem import __version__
    from cxrsem.reporting.build import assemble

    if fmt not in FORMATS:
        raise UsageError(f"--format must be html or md, got {fmt!r}")
    threshold = float(iou_threshold)
    if not 0.0 <= threshold < 1.0:
        raise UsageError(f"--iou-threshold must be in [0, 1), got {iou_threshold}")
    if not dissect_dirs:
        raise UsageError("give at least one dissection folder")
    out = Path(out)
    if out.exists() and out.is_dir():
        raise UsageError(f"--out {out} is a folder; give the report's file name (e.g. {out / 'report.html'})")
    collected = collect(dissect_dirs, attributions, labels)
    if not collected.dissections and not collected.attributions:
        reasons = "; ".join(collected.warnings) or "nothing found"
        raise DataError(f"no valid dissection results to report: {reasons}")
    data = assemble(collected, threshold, version=__version__)
    data.faithfulness = load_verifications(verify, data.warnings)
    if claims is not None:
        data.claims = load_claims(claims, data.warnings)
    inputs = ([str(p) for p in dissect_dirs] + [f"attributions: {p}" for p in attributions]
              + [f"verify: {p}" for p in verify])
    files: list[Path] = []
    if fmt == "html":
        from cxrsem.reporting.html import render_html

        files.append(write_text(out, render_html(data, inputs)))
    else:
        from cxrsem.reporting.markdown import render_markdown

        text, figures = render_markdown(data, out, inputs)
        files.append(write_text(out, text))
        files.extend(figures)
    summary = [SummaryRow(model=m.name, layer=m.dissection.layer, epoch=m.dissection.epoch,
                          units=m.dissection.num_units, detectors=m.total, unique_concepts=m.unique,
                          top_concepts=top_concepts(m.counts, 3), path=str(m.dissection.json_path))
               for m in data.models]
    return ReportResult(out=out, format=fmt, iou_threshold=threshold, summary=summary,
                        warnings=data.warnings, runs=len(data.runs),
                        attributions=sum(v.total for v in data.attributions),
                        verifications=len(data.faithfulness), files=files)
