"""The report as Markdown with its figures as PNG files next to it (``<stem>_files/``), for papers
and notebooks.  Untrusted text is HTML-escaped (Markdown renderers pass HTML through) and table
pipes are escaped."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cxrsem.formats.dissection import UNLABELLED
from cxrsem.outputs import write_bytes
from cxrsem.reporting.aggregate import TABLE_THRESHOLDS, NullCount, count_at
from cxrsem.reporting.build import (
    ReportData,
    chance_table,
    concept_text,
    null_cells,
    null_columns,
    null_legend,
    shown_units,
    unit_rank_text,
)
from cxrsem.reporting.collect import short_layer
from cxrsem.reporting.faithfulness import p_text, verdict

# Emphasis, code, links/images (no "[" means no link, so parentheses may stay), table cells.
_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def md(value: Any) -> str:
    """Text shown literally: one line, Markdown punctuation backslash-escaped, ``& < >`` as HTML
    entities (Markdown renderers pass raw HTML through)."""
    text = _SPECIAL.sub(r"\\\1", " ".join(("" if value is None else str(value)).split()))
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return md(value)

    lines = ["| " + " | ".join(md(h) for h in headers) + " |",
             "|" + "|".join("---:" if rows and isinstance(rows[0][i], int | float) else "---"
                            for i in range(len(headers))) + "|"]
    lines.extend("| " + " | ".join(cell(v) for v in row) + " |" for row in rows)
    return "\n".join(lines)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")[:60] or "item"


class _Figures:
    def __init__(self, folder: Path, relative: str) -> None:
        self.folder, self.relative, self.written = folder, relative, []

    def add(self, name: str, png: bytes, alt: str) -> str:
        path = write_bytes(self.folder / name, png)
        self.written.append(path)
        return f"![{md(alt)}]({self.relative}/{name})"


def render_markdown(data: ReportData, out: Path, inputs: Sequence[str] = ()) -> tuple[str, list[Path]]:
    """The Markdown text, after writing its PNGs to ``<out stem>_files/``."""
    folder_name = f"{out.stem}_files"
    figs = _Figures(out.parent / folder_name, folder_name)
    t = f"{data.threshold:g}"
    lines = ["# Semantic interpretation report", "",
             f"{len(data.models)} dissected model(s), {len(data.runs)} run(s) over epochs; detectors at "
             f"IoU > {t}; generated {data.created} by cxrsem {md(data.version)}.", ""]
    if data.warnings:
        lines += ["**Warnings**", ""] + [f"- {md(w)}" for w in data.warnings] + [""]

    if data.claims is not None:
        headers, rows, note = data.claims
        lines += ["## The paper's claims, measured", "", md_table(headers, rows), "", md(note), ""]
    lines += ["## 1. Concept detectors per model (paper Fig. 2)", ""]
    legend = null_legend(data.models)
    if legend is not None:
        lines += [md(legend), ""]
    if data.fig_detectors:
        lines += [figs.add("detectors.png", data.fig_detectors, "Detectors per concept per model"), ""]
    if data.fig_concept_intervals:
        lines += [figs.add("detectors-intervals.png", data.fig_concept_intervals,
                           "Detectors per concept with bootstrap intervals"), ""]
    lines += [f"- {md(o)}" for o in data.observations] + [""]
    if data.models:
        null_cols = null_columns(data.models)
        headers = ["model", "layer", "epoch", "units", "detectors", "unique concepts", *null_cols,
                   *data.concepts]
        rows = [[m.name, short_layer(m.dissection.layer), "–" if m.dissection.epoch is None
                 else m.dissection.epoch, m.dissection.num_units, m.total, m.unique]
                + ["–" if v is None else v for v in null_cells(m, null_cols)]
                + [m.counts.get(c, 0) for c in data.concepts] for m in data.models]
        if data.mixed_settings:
            headers += ["seg size", "quantile", "dissection IoU thr."]
            for row, m in zip(rows, data.models, strict=True):
                row += [m.dissection.settings.get(k, "?") for k in ("seg_size", "quantile", "iou_threshold")]
        lines += [md_table(headers, rows), ""]
        chance_headers, chance_rows = chance_table(data.models, data.concepts)
        if chance_rows:
            lines += ["**Chance baselines per concept**: detectors of each concept, those significant "
                      "against shuffled annotations, and the detectors each chance baseline gives "
                      "(mean \\[range\\] over its draws).", "",
                      md_table(chance_headers, [["–" if v is None else str(v) if isinstance(v, NullCount)
                                                 else v for v in row] for row in chance_rows]), ""]

    lines += ["## 2. Evolution over epochs (paper Fig. 4)", ""]
    if not data.runs:
        lines += ["No run with dissections of two or more epochs was given.", ""]
    else:
        if data.fig_evolution:
            lines += [figs.add("evolution.png", data.fig_evolution, "Detectors per concept over epochs"), ""]
        lines += [f"- {md(o)}" for o in data.run_observations] + [""]
        for run in data.runs:
            concepts = [c for c, v in run.counts.items() if any(v)]
            rows = [[epoch, run.totals[i]] + [run.counts[c][i] for c in concepts]
                    for i, epoch in enumerate(run.epochs)]
            lines += [f"### {md(run.name)}", "", md_table(["epoch", "total", *concepts], rows), ""]

    lines += ["## 3. Concept detector units (paper Fig. 3)", "",
              "Red: the unit's mask; green: the concept's annotation; IoU: dataset-wide (Eq. 5).", ""]
    for i, g in enumerate(data.gallery):
        lines += [f"### {md(g.name)} — {md(g.layer)}: {g.detectors} detector(s)", ""]
        for concept, items in g.concepts:
            lines += [f"**{md(concept)}**", ""]
            for item in items:
                caption = f"unit {item.unit.unit}, dataset-wide IoU {item.unit.iou:.3f}"
                if item.png is not None:
                    lines += [figs.add(f"units/{i:02d}-unit-{item.unit.unit:04d}.png", item.png,
                                       f"{concept}: {caption}"), "", md(caption), ""]
                else:
                    lines += [f"{md(caption)} (no figure)", ""]
        if g.left_out:
            lines += [f"{g.left_out} more detector(s) not shown.", ""]

    lines += ["## 4. Semantic attributions (paper Fig. 5)", ""]
    if not data.attributions:
        lines += ["No attributions were given.", ""]
    for j, view in enumerate(data.attributions):
        lines += [f"### {md(view.title)}", "", f"{view.total} image(s) in {md(view.folder)}; "
                  f"method {md(view.method)}; {md(view.naming)}.", ""]
        if view.table:
            rows = [[r.concept, r.top_unit_images,
                     r.top_labelled_images if r.concept != UNLABELLED else "–",
                     r.top_concept_images if r.mean_share is not None else "–",
                     f"{100 * r.mean_share:.1f}%" if r.mean_share is not None else "–"] for r in view.table]
            headers = ["concept", "top unit in images", "top labelled unit in images",
                       "top concept in images", "mean share"]
            lines += [md_table(headers, rows), ""]
        for image in view.images:
            lines += [f"**{md(image.stem)}** — {md(image.target)}"
                      + (f" = {image.prediction:.3f}" if image.prediction is not None else ""), ""]
            if image.png is not None:
                lines += [figs.add(f"attributions/{j:02d}-{_safe(image.stem)}.png", image.png,
                                   f"attribution of {image.stem}"), ""]
            rows = [[unit_rank_text(u, first), u.unit, concept_text(u.concept, u.best_concept, u.iou),
                     f"{100 * u.share:.1f}%"] for u, first in shown_units(image)]
            lines += [md_table(["rank", "unit", "concept", "share"], rows), ""]

    lines += ["## 5. Faithfulness (do the named units matter?)", ""]
    if not data.faithfulness:
        lines += ["No faithfulness checks were given (`--verify VERIFY_DIR`).", ""]
    for j, v in enumerate(data.faithfulness):
        lines += [f"### {md(v.title)}", "", f"{v.images} {md(v.split)} image(s); {md(v.path)}.", ""]
        if v.figure is not None:
            lines += [figs.add(f"faithfulness/{j:02d}-curves.png", v.figure,
                               f"deletion and insertion curves of {v.title}"), ""]
        random = {c.first: c for c in v.comparisons if c.second == "random"}
        rows = [[c.method, c.aopc.text(),
                 random[c.method].difference.text() if c.method in random else "–",
                 p_text(random[c.method].p_adjusted, v.resamples) if c.method in random else "–"]
                for c in v.curves + ([v.random] if v.random else [])]
        lines += [md_table(["method", "AOPC", "minus random units (paired)", "p (Holm)"], rows), ""]
        pairs = [c for c in v.comparisons if c.second != "random"]
        if pairs:
            lines += [md_table(["first", "second", "AOPC first - second (paired)", "p (Holm)", "verdict"],
                               [[c.first, c.second, c.difference.text(), p_text(c.p_adjusted, v.resamples),
                                 f"{c.first} {verdict(c.difference)}"] for c in pairs]), ""]
        if v.concepts:
            lines += [f"Concept ablation: change of {md(v.metric)} over the split.", "",
                      md_table(["concept", "detectors", "zeroing them", "as many random units",
                                "difference (paired)", "p"],
                               [[c.concept, c.units, c.change.text(), c.random_change.text(),
                                 c.excess.text() if c.excess else "–", p_text(c.excess_p, v.resamples)]
                                for c in v.concepts]), ""]
        if v.localisation:
            lines += [md_table(["method", "images counted", "pointing game", "relevance mass"],
                               [[m.method, m.images, m.pointing_game.text() if m.pointing_game else "–",
                                 m.relevance_mass.text() if m.relevance_mass else "–"]
                                for m in v.localisation]), ""]
        lines += [f"- {md(x)}" for x in v.sentences] + [""]

    lines += ["## 6. Model cards", ""]
    for card in data.cards:
        lines += [f"### {md(card.name)}", ""]
        for title, rows in card.sections:
            if rows:
                lines += [f"**{md(title)}**", "", md_table(["", ""], [[k, v] for k, v in rows]), ""]
        if card.metrics:
            lines += ["**Validation metrics**: " + ", ".join(f"{md(k)} {md(v)}" for k, v in card.metrics), ""]
        for name, concepts in card.concept_sets:
            listed = ", ".join(f"{c} ({'–' if n is None else n})" for c, n in concepts)
            lines += [f"**Concept data, {md(name)}**: {md(listed)}", ""]

    lines += ["## 7. Sensitivity to the IoU threshold", ""]
    if data.fig_thresholds:
        lines += [figs.add("thresholds.png", data.fig_thresholds, "Detectors against IoU threshold"), ""]
    if data.models:
        rows = [[m.name, m.total] + [count_at(m, x) for x in TABLE_THRESHOLDS] for m in data.models]
        lines += [md_table(["model", f"at {t}"] + [f"{x:g}" for x in TABLE_THRESHOLDS], rows), ""]
    lines += ["---", "", "Inputs: " + ", ".join(md(p) for p in inputs), ""]
    return "\n".join(lines), figs.written
