"""The report as one self-contained HTML file: figures embedded as PNG data URIs, no external
script, style sheet or font, printable, and readable with JavaScript off (the only script sorts
tables).  Every piece of text that comes from a result file, a plugin or a path goes through
:func:`e` (``html.escape``): concept and file names are untrusted."""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from typing import Any

from cxrsem.formats.dissection import UNLABELLED
from cxrsem.reporting.aggregate import TABLE_THRESHOLDS, NullCount, count_at
from cxrsem.reporting.build import (
    UNITS_PER_CONCEPT,
    AttributionView,
    GalleryModel,
    ModelCard,
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
from cxrsem.reporting.faithfulness import Estimate, Verification, p_text, verdict


def e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def img(png: bytes, alt: str, cls: str = "") -> str:
    data = base64.b64encode(png).decode("ascii")
    klass = f' class="{e(cls)}"' if cls else ""
    return f'<img{klass} src="data:image/png;base64,{data}" alt="{e(alt)}">'


def _num(value: float | int | None, spec: str = "") -> str:
    if value is None:
        return "–"
    return format(value, spec) if spec else str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, sortable: bool = True,
          numeric: Sequence[bool] | None = None, cls: str = "", raw_headers: Sequence[str] | None = None,
          counts_from: int | None = None) -> str:
    """A table; cells are escaped, numbers right-aligned and sorted by value (``data-sort``);
    zeros in the count columns (index ``counts_from`` on) are dimmed."""
    classes = " ".join(c for c in ("sortable" if sortable else "", cls) if c)
    head_cells = raw_headers if raw_headers is not None else [e(h) for h in headers]
    out = [f'<div class="table-wrap"><table class="{classes}"><thead><tr>']
    out.extend(f'<th scope="col">{h}</th>' for h in head_cells)
    out.append("</tr></thead><tbody>")
    for row in rows:
        out.append("<tr>")
        for i, cell in enumerate(row):
            is_num = numeric[i] if numeric is not None and i < len(numeric) else isinstance(cell, int | float)
            if isinstance(cell, tuple):  # (shown text, sort key)
                shown, key = cell
                out.append(f'<td class="{"num" if is_num else ""}" data-sort="{e(key)}">{e(shown)}</td>')
            elif isinstance(cell, int | float) and not isinstance(cell, bool):
                text = f"{cell:.4g}" if isinstance(cell, float) else str(cell)
                dim = " zero" if counts_from is not None and i >= counts_from and cell == 0 else ""
                out.append(f'<td class="num{dim}" data-sort="{cell!r}">{e(text)}</td>')
            else:
                out.append(f'<td class="{"num" if is_num else ""}">{e(cell)}</td>')
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def swatch(color: str) -> str:
    return f'<span class="swatch" style="background:{e(color)}"></span>'


def _warnings(data: ReportData) -> str:
    if not data.warnings:
        return ""
    items = "".join(f"<li>{e(w)}</li>" for w in data.warnings)
    return f'<aside class="warnings" role="note"><h2>Warnings</h2><ul>{items}</ul></aside>'


def _section_claims(data: ReportData) -> str:
    if data.claims is None:
        return ""
    headers, rows, note = data.claims
    return ('<section id="claims"><h2>The paper\'s claims, measured <small>(a study\'s '
            '[[claims]])</small></h2>' + table(headers, rows, sortable=False)
            + f'<p class="note">{e(note)}</p></section>')


def _section_detectors(data: ReportData) -> str:
    parts = ['<section id="detectors"><h2>1. Concept detectors per model <small>(paper Fig. 2)</small></h2>']
    if not data.models:
        parts.append("<p>No dissection results were given.</p></section>")
        return "".join(parts)
    parts.append(f"<p>A unit is a detector of its best concept when that concept's dataset-wide IoU "
                 f"exceeds <b>{e(f'{data.threshold:g}')}</b> (paper Eq. 5). Bars: detectors per "
                 f"concept, stacked; totals on top.</p>")
    legend = null_legend(data.models)
    with_nulls = legend is not None
    if legend is not None:
        parts.append(f"<p>{e(legend)}</p>")
    if data.fig_detectors:
        baselines = " with the chance baselines" if with_nulls else ""
        parts.append(f'<figure class="wide">{img(data.fig_detectors, "Detectors per concept per model")}'
                     f"<figcaption>Number and type of concept detectors per model at IoU &gt; "
                     f"{e(f'{data.threshold:g}')}{baselines}.</figcaption></figure>")
    if data.fig_concept_intervals:
        parts.append(f'<figure class="wide">'
                     f'{img(data.fig_concept_intervals, "Detectors per concept with bootstrap intervals")}'
                     f"<figcaption>Detectors per concept with the bootstrap intervals of "
                     f"<code>dissect --bootstrap</code> (thresholds T_k fixed at the full set's)."
                     f"</figcaption></figure>")
    parts.append("<ul class=\"observations\">" + "".join(f"<li>{e(o)}</li>" for o in data.observations)
                 + "</ul>")
    concepts = data.concepts
    null_cols = null_columns(data.models)
    headers = ["model", "layer", "epoch", "units", "detectors", "unique concepts", *null_cols]
    raw = [e(h) for h in headers] + [f"{swatch(data.colors[c])}{e(c)}" for c in concepts]
    if data.mixed_settings:
        headers += ["seg size", "quantile", "dissection IoU thr."]
        raw += [e("seg size"), e("quantile"), e("dissection IoU thr.")]
    rows = []
    for m in data.models:
        d = m.dissection
        row: list[Any] = [m.name, short_layer(d.layer), ("–", -1) if d.epoch is None else d.epoch,
                          d.num_units, m.total, m.unique]
        row += [("–", -1) if v is None else v for v in null_cells(m, null_cols)]
        row += [m.counts.get(c, 0) for c in concepts]
        if data.mixed_settings:
            row += [_setting(d.settings.get(k)) for k in ("seg_size", "quantile", "iou_threshold")]
        rows.append(row)
    headers = headers[:6 + len(null_cols)] + list(concepts) + headers[6 + len(null_cols):]
    parts.append(table(headers, rows, raw_headers=raw, cls="counts", counts_from=4))
    if not concepts:
        parts.append(f"<p>No unit of any model exceeds IoU {e(f'{data.threshold:g}')}.</p>")
    parts.append(_chance_table(data))
    parts.append("</section>")
    return "".join(parts)


def _chance_table(data: ReportData) -> str:
    headers, rows = chance_table(data.models, data.concepts)
    if not rows:
        return ""
    cells = [[("–", -1) if v is None else (str(v), v.mean) if isinstance(v, NullCount) else v
              for v in row] for row in rows]
    return ("<h3>Chance baselines per concept</h3><p>Detectors of each concept, those significant "
            "against shuffled annotations, and the detectors each chance baseline gives (mean "
            "[range] over its draws).</p>"
            + table(headers, cells, numeric=[False, False] + [True] * (len(headers) - 2),
                    cls="counts", counts_from=2))


def _setting(value: Any) -> Any:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else ("?" if value is None
                                                                                        else str(value))


def _section_evolution(data: ReportData) -> str:
    parts = ['<section id="evolution"><h2>2. Evolution over epochs <small>(paper Fig. 4)</small></h2>']
    if not data.runs:
        parts.append("<p>No run with dissections of two or more epochs was given. Dissect several "
                     "checkpoints of one run (e.g. <code>--model 'RUN/epoch-*.pt'</code>) to see how "
                     "concept detectors emerge during training.</p></section>")
        return "".join(parts)
    if data.fig_evolution:
        parts.append(f'<figure class="wide">{img(data.fig_evolution, "Detectors per concept over epochs")}'
                     f"<figcaption>Detectors per concept against epoch for each run, and the totals "
                     f"(right).</figcaption></figure>")
    parts.append("<ul class=\"observations\">" + "".join(f"<li>{e(o)}</li>" for o in data.run_observations)
                 + "</ul>")
    for run in data.runs:
        concepts = [c for c, v in run.counts.items() if any(v)]
        parts.append(f"<h3>{e(run.name)}</h3><p class=\"meta\">run folder {e(run.run_dir)}, layer "
                     f"{e(run.layer)}</p>")
        rows = [[epoch, run.totals[i]] + [run.counts[c][i] for c in concepts]
                for i, epoch in enumerate(run.epochs)]
        raw = [e("epoch"), e("total")] + [f"{swatch(data.colors.get(c, '#888'))}{e(c)}" for c in concepts]
        parts.append(table(["epoch", "total", *concepts], rows, raw_headers=raw, cls="counts", counts_from=1))
    parts.append("</section>")
    return "".join(parts)


def _gallery_model(g: GalleryModel, colors: dict[str, str]) -> str:
    summary = f"{e(g.name)} <span class=\"meta\">— {e(g.layer)}: {g.detectors} detector(s)</span>"
    parts = [f"<details open><summary>{summary}</summary>"]
    if not g.concepts:
        parts.append("<p>No detectors at this threshold.</p>")
    for concept, items in g.concepts:
        parts.append(f'<h4>{swatch(colors.get(concept, "#888"))}{e(concept)}</h4><div class="units">')
        for item in items:
            caption = f"unit {item.unit.unit} · dataset-wide IoU {item.unit.iou:.3f}"
            if item.png is not None:
                parts.append(f"<figure>{img(item.png, f'{concept}: {caption}')}"
                             f"<figcaption>{e(caption)}</figcaption></figure>")
            else:
                parts.append(f'<figure class="missing"><figcaption>{e(caption)}<br>no figure (dissected '
                             f"with --no-figures, or below the dissection's own threshold)</figcaption>"
                             f"</figure>")
        parts.append("</div>")
    if g.left_out:
        parts.append(f"<p class=\"meta\">{g.left_out} more detector(s) not shown (the best "
                     f"{UNITS_PER_CONCEPT} per concept by IoU, at most {g.limit} per model).</p>")
    parts.append("</details>")
    return "".join(parts)


def _section_gallery(data: ReportData) -> str:
    parts = ['<section id="units"><h2>3. Concept detector units <small>(paper Fig. 3)</small></h2>',
             "<p>For the top units of each concept: the unit's top-activating images with its mask "
             "(red, activation above T<sub>k</sub>) and the concept's annotation (green). The IoU is the "
             "dataset-wide IoU of Eq. 5, not that of the images shown.</p>"]
    if not data.gallery:
        parts.append("<p>No dissection results were given.</p>")
    parts.extend(_gallery_model(g, data.colors) for g in data.gallery)
    parts.append("</section>")
    return "".join(parts)


def _attribution_view(view: AttributionView, colors: dict[str, str]) -> str:
    parts = [f"<h3>{e(view.title)}</h3>",
             f"<p class=\"meta\">{e(view.total)} image(s) in {e(view.folder)}; model {e(view.model_path)}, "
             f"layer {e(view.layer)}; method {e(view.method)}; {e(view.naming)}.</p>"]
    if view.table:
        n = view.total
        def count(k: int) -> tuple[str, int]:
            return f"{k} ({100 * k / n:.0f}%)", k

        rows = [[r.concept, count(r.top_unit_images),
                 count(r.top_labelled_images) if r.concept != UNLABELLED else ("–", -1),
                 count(r.top_concept_images) if r.mean_share is not None else ("–", -1),
                 (f"{100 * r.mean_share:.1f}%", r.mean_share) if r.mean_share is not None else ("–", -1)]
                for r in view.table]
        parts.append("<p>Which concept most often drives the prediction: images whose top contributing "
                     "unit detects the concept, images whose highest-ranked <em>labelled</em> unit "
                     "detects it (the paper: \u201cselect the top contributing unit(s) and use their "
                     "annotations (if it exists)\u201d), images where the concept's units together "
                     "contribute most, and the concept's mean share of the total contribution.</p>")
        parts.append(table(["concept", "top unit in images", "top labelled unit in images",
                            "top concept in images", "mean share"], rows,
                           numeric=[False, True, True, True, True]))
    parts.append('<div class="attributions">')
    for image in view.images:
        pred = f"{image.target} = {image.prediction:.3f}" if image.prediction is not None else image.target
        parts.append(f"<article class=\"attribution\"><h4>{e(image.stem)}</h4>"
                     f"<p class=\"meta\">{e(image.image)} — {e(pred)}"
                     + (f"; completeness gap {image.rel_gap:.1e} (relative)" if image.rel_gap is not None
                        else "") + "</p>")
        if image.png is not None:
            parts.append(f"<figure>{img(image.png, f'attribution of {image.stem}')}</figure>")
        rows = [[unit_rank_text(u, first), u.unit, concept_text(u.concept, u.best_concept, u.iou),
                 (f"{100 * u.share:.1f}%", u.share)] for u, first in shown_units(image)]
        parts.append(table(["rank", "unit", "concept", "share"], rows, sortable=False,
                           numeric=[True, True, False, True], cls="compact"))
        parts.append("</article>")
    parts.append("</div>")
    if view.total > len(view.images):
        parts.append(f"<p class=\"meta\">{view.total - len(view.images)} more image(s) not shown; the table "
                     f"above counts all {view.total}.</p>")
    return "".join(parts)


def _estimate_cell(estimate: Estimate | None) -> tuple[str, float] | str:
    if estimate is None or estimate.value is None:
        return "–"
    return estimate.text(), estimate.value


def _verification(v: Verification) -> str:
    level = f"{100 * v.confidence:g}%" if v.confidence else "95%"
    parts = [f"<h3>{e(v.title)}</h3>",
             f"<p class=\"meta\">{e(v.images)} {e(v.split)} image(s); {e(v.path)}; intervals: {level} "
             f"percentile bootstrap over the images ({e(v.resamples or '?')} resamples).</p>"]
    if v.figure is not None:
        parts.append(f"<figure>{img(v.figure, f'deletion and insertion curves of {v.title}')}"
                     "<figcaption>Mean change of the explained output when each method's top-k units "
                     "are zeroed (deletion) or alone kept (insertion); grey dashed: as many random "
                     "units.</figcaption></figure>")
    random = {c.first: c for c in v.comparisons if c.second == "random"}
    rows = []
    for curve in v.curves + ([v.random] if v.random else []):
        versus = random.get(curve.method)
        rows.append([curve.method, _estimate_cell(curve.aopc),
                     _estimate_cell(versus.difference) if versus else "–",
                     p_text(versus.p_adjusted, v.resamples) if versus else "–"])
    parts.append("<p>AOPC: the mean drop of the explained output over the ks when the method's top-k "
                 "units are zeroed (area over the perturbation curve); larger means the units it "
                 "names matter more.</p>")
    parts.append(table(["method", "AOPC", "minus random units (paired)", "p (Holm)"], rows,
                       numeric=[False, True, True, True]))
    pairs = [c for c in v.comparisons if c.second != "random"]
    if pairs:
        parts.append(table(["first", "second", "AOPC first − second (paired)", "p", "p (Holm)", "verdict"],
                           [[c.first, c.second, _estimate_cell(c.difference), p_text(c.p_value, v.resamples),
                             p_text(c.p_adjusted, v.resamples), f"{c.first} {verdict(c.difference)}"]
                            for c in pairs], numeric=[False, False, True, True, True, False]))
    if v.concepts:
        base = f" (all units: {v.metric_value:.4g})" if v.metric_value is not None else ""
        parts.append(f"<p>Concept ablation: the change of {e(v.metric)}{e(base)} over the split when "
                     "the dissection's detectors of a concept are zeroed, against as many random units "
                     "of the layer (mean over draws); paired bootstrap over the images.</p>")
        parts.append(table(["concept", "detectors", "zeroing them", "as many random units",
                            "difference (paired)", "p"],
                           [[c.concept, c.units, _estimate_cell(c.change), _estimate_cell(c.random_change),
                             _estimate_cell(c.excess), p_text(c.excess_p, v.resamples)]
                            for c in v.concepts], numeric=[False, True, True, True, True, True]))
    if v.localisation:
        parts.append(f"<p>Localisation: per image, the top-ranked labelled unit whose concept is "
                     f"present; its map upsampled to the mask ({e(v.localisation_images)} images of "
                     f"{e(', '.join(v.localisation_sets))}).</p>")
        parts.append(table(["method", "images counted", "pointing game", "relevance mass"],
                           [[m.method, m.images, _estimate_cell(m.pointing_game),
                             _estimate_cell(m.relevance_mass)] for m in v.localisation],
                           numeric=[False, True, True, True]))
    if v.sentences:
        parts.append("<ul>" + "".join(f"<li>{e(x)}</li>" for x in v.sentences) + "</ul>")
    return "".join(parts)


def _section_faithfulness(data: ReportData) -> str:
    parts = ['<section id="faithfulness"><h2>5. Faithfulness <small>(do the named units matter?)</small>'
             "</h2>"]
    if not data.faithfulness:
        parts.append("<p>No faithfulness checks were given (<code>--verify VERIFY_DIR</code>, written by "
                     "<code>cxrsem verify --out</code>).</p></section>")
        return "".join(parts)
    parts.extend(_verification(v) for v in data.faithfulness)
    parts.append("</section>")
    return "".join(parts)


def _section_attributions(data: ReportData) -> str:
    parts = ['<section id="attributions"><h2>4. Semantic attributions <small>(paper Fig. 5)</small></h2>']
    if not data.attributions:
        parts.append("<p>No attributions were given (<code>--attributions ATTR_DIR</code>, written by "
                     "<code>cxrsem attribute</code>).</p></section>")
        return "".join(parts)
    parts.append("<p>Integrated Gradients at the layer with a zero-activation baseline (Eq. 6); a unit's "
                 "contribution is the sum of |s<sub>k</sub><sup>i</sup>| over its positions, its share "
                 "that contribution over all units'. Overlays: s<sub>k</sub> / max s<sub>k</sub>, "
                 "red positive, blue negative.</p>")
    parts.extend(_attribution_view(v, data.colors) for v in data.attributions)
    parts.append("</section>")
    return "".join(parts)


def _card(card: ModelCard) -> str:
    parts = [f'<details open class="card"><summary>{e(card.name)}</summary><div class="card-body">']
    for title, rows in card.sections:
        if not rows:
            continue
        body = "".join(f"<tr><th scope=\"row\">{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows)
        parts.append(f'<div class="kv"><h4>{e(title)}</h4><table class="kv">{body}</table></div>')
    parts.append("</div>")
    if card.metrics:
        items = "".join(f"<div><dt>{e(k)}</dt><dd>{e(v)}</dd></div>" for k, v in card.metrics)
        parts.append(f'<h4>Validation metrics of this checkpoint</h4><dl class="metrics">{items}</dl>')
    if card.concept_sets:
        parts.append("<h4>Concept data (images with each concept)</h4>")
        for name, concepts in card.concept_sets:
            listed = ", ".join(f"{c} ({_num(n)})" for c, n in concepts)
            parts.append(f'<p class="concepts"><b>{e(name)}</b>: {e(listed)}</p>')
    parts.append("</details>")
    return "".join(parts)


def _section_cards(data: ReportData) -> str:
    parts = ['<section id="models"><h2>6. Model cards</h2>',
             f"<p>Training configuration, validation metrics and dissection settings of each model. "
             f"Report written by cxrsem {e(data.version)}.</p>"]
    if not data.cards:
        parts.append("<p>No dissection results were given.</p>")
    parts.extend(_card(c) for c in data.cards)
    parts.append("</section>")
    return "".join(parts)


def _section_thresholds(data: ReportData) -> str:
    parts = ['<section id="thresholds"><h2>7. Sensitivity to the IoU threshold</h2>',
             "<p>The number of detectors depends on the IoU threshold (paper Sec. 2.2); what matters is "
             "how models compare. If the ranking of models holds across thresholds, a comparison is not "
             f"an artefact of the chosen {e(f'{data.threshold:g}')}.</p>"]
    if not data.models:
        parts.append("<p>No dissection results were given.</p></section>")
        return "".join(parts)
    if data.fig_thresholds:
        parts.append(f'<figure class="wide">{img(data.fig_thresholds, "Detectors against IoU threshold")}'
                     f"<figcaption>Total detectors and unique concepts against the IoU threshold "
                     f"(dashed: the report's threshold).</figcaption></figure>")
    headers = ["model", f"at {data.threshold:g}"] + [f"{t:g}" for t in TABLE_THRESHOLDS]
    rows = [[m.name, m.total] + [count_at(m, t) for t in TABLE_THRESHOLDS] for m in data.models]
    parts.append(table(headers, rows, cls="counts", counts_from=1))
    parts.append("</section>")
    return "".join(parts)


CSS = """
:root{--fg:#1d232b;--muted:#5b6570;--line:#d7dce1;--bg:#fff;--accent:#2a62b8;--warn:#fff6df;--warnline:#e2b33c}
*{box-sizing:border-box}
body{margin:0;color:var(--fg);background:var(--bg);font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,
"Helvetica Neue",Arial,sans-serif}
main{max-width:1180px;margin:0 auto;padding:1.2rem 1.5rem 3rem}
h1{font-size:1.6rem;margin:.2rem 0}
h2{font-size:1.25rem;border-bottom:2px solid var(--line);padding-bottom:.2rem;margin-top:2.2rem}
h2 small{font-weight:normal;color:var(--muted);font-size:.8em}
h3{font-size:1.05rem;margin:1.4rem 0 .3rem}
h4{font-size:.95rem;margin:.8rem 0 .3rem}
.meta{color:var(--muted);font-size:.88rem;margin:.2rem 0}
nav ol{display:flex;flex-wrap:wrap;gap:.2rem 1.4rem;list-style:none;padding:0;margin:.6rem 0}
a{color:var(--accent)}
figure{margin:.6rem 0}
figure img{max-width:100%;height:auto;display:block}
figure.wide img{margin:0 auto}
figcaption{color:var(--muted);font-size:.85rem}
.table-wrap{overflow-x:auto;margin:.6rem 0}
table{border-collapse:collapse;font-size:.85rem}
th,td{border-bottom:1px solid var(--line);padding:.25rem .55rem;text-align:left;vertical-align:top}
thead th{background:#f3f5f7;position:sticky;top:0;vertical-align:bottom}
table.sortable thead th{cursor:pointer}
table.sortable thead th[aria-sort=ascending]::after{content:" \\25B2";font-size:.7em}
table.sortable thead th[aria-sort=descending]::after{content:" \\25BC";font-size:.7em}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.zero{color:#b3bac1}
table.counts td:first-child{min-width:14em}
table.compact{font-size:.8rem}
.swatch{display:inline-block;width:.8em;height:.8em;border-radius:2px;margin-right:.3em;vertical-align:-.05em;
border:1px solid rgba(0,0,0,.2)}
.warnings{background:var(--warn);border-left:4px solid var(--warnline);padding:.4rem 1rem;margin:1rem 0}
.warnings h2{border:0;margin:.3rem 0;font-size:1rem}
.warnings li{overflow-wrap:anywhere}
ul.observations li{margin:.15rem 0}
details{border:1px solid var(--line);border-radius:6px;padding:.3rem .8rem;margin:.7rem 0}
summary{cursor:pointer;font-weight:600}
.units{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:.4rem 1rem}
.units figure{margin:.2rem 0}
figure.missing{border:1px dashed var(--line);padding:.5rem}
.attributions{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:.8rem 1.2rem}
article.attribution{border-top:1px solid var(--line)}
.card-body{display:grid;grid-template-columns:repeat(auto-fit,minmax(330px,1fr));gap:.2rem 1.5rem}
table.kv{width:100%}
table.kv th{font-weight:normal;color:var(--muted);width:42%;background:none;position:static}
table.kv td{overflow-wrap:anywhere}
dl.metrics{display:grid;grid-template-columns:repeat(auto-fill,minmax(190px,1fr));gap:0 1rem;margin:.2rem 0;
font-size:.85rem}
dl.metrics div{display:flex;justify-content:space-between;border-bottom:1px solid var(--line);padding:.1rem 0}
dl.metrics dt{color:var(--muted)}dl.metrics dd{margin:0 0 0 .5rem;font-variant-numeric:tabular-nums}
p.concepts{font-size:.85rem;margin:.2rem 0}
footer{color:var(--muted);font-size:.8rem;border-top:1px solid var(--line);margin-top:3rem;padding-top:.6rem}
code{font-size:.9em}
@media (max-width:700px){.units,.attributions{grid-template-columns:1fr}}
@media print{
 body{font-size:11pt}main{max-width:none;padding:0}nav{display:none}
 h2{break-after:avoid}figure,tr,article.attribution{break-inside:avoid}
 .table-wrap{overflow:visible}thead th{position:static;white-space:normal}table{font-size:8pt}
 details{border:0;padding:0}summary{list-style:none}
 .units,.attributions{grid-template-columns:1fr 1fr}
}
"""

# Sorts tables with class "sortable" by a column when its header is clicked (or Enter is pressed);
# numbers by value (data-sort), text alphabetically.  Without JavaScript the tables are as written.
SCRIPT = """
(function () {
  "use strict";
  function key(cell) {
    var raw = cell.hasAttribute("data-sort") ? cell.getAttribute("data-sort") : cell.textContent.trim();
    var num = Number(raw);
    return raw !== "" && isFinite(num) ? {n: true, v: num} : {n: false, v: raw.toLowerCase()};
  }
  function compare(a, b) {
    if (a.n !== b.n) { return a.n ? -1 : 1; }
    return a.v < b.v ? -1 : (a.v > b.v ? 1 : 0);
  }
  var tables = document.querySelectorAll("table.sortable");
  Array.prototype.forEach.call(tables, function (tbl) {
    var heads = tbl.tHead ? tbl.tHead.rows[0].cells : [];
    Array.prototype.forEach.call(heads, function (th, col) {
      th.tabIndex = 0;
      th.title = "sort by this column";
      function sort() {
        var body = tbl.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        var asc = th.getAttribute("aria-sort") !== "ascending";
        Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", asc ? "ascending" : "descending");
        rows.sort(function (r1, r2) {
          var c = compare(key(r1.cells[col]), key(r2.cells[col]));
          return asc ? c : -c;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      }
      th.addEventListener("click", sort);
      th.addEventListener("keydown", function (ev) { if (ev.key === "Enter") { sort(); } });
    });
  });
})();
"""


def render_html(data: ReportData, inputs: Sequence[str] = ()) -> str:
    n_models = len(data.models)
    runs = len(data.runs)
    n_attr = sum(v.total for v in data.attributions)
    meta = (f"{n_models} dissected model(s), {runs} run(s) over epochs, {n_attr} attributed image(s) · "
            f"detectors at IoU &gt; {e(f'{data.threshold:g}')} · generated {e(data.created)} by cxrsem "
            f"{e(data.version)}")
    claims = '<li><a href="#claims">Claims</a></li>' if data.claims is not None else ""
    nav = ('<nav aria-label="sections"><ol>' + claims +
           '<li><a href="#detectors">1. Detectors per model</a></li><li><a href="#evolution">2. Evolution</a>'
           '</li><li><a href="#units">3. Unit gallery</a></li><li><a href="#attributions">4. Attributions</a>'
           '</li><li><a href="#faithfulness">5. Faithfulness</a></li><li><a href="#models">6. Model cards</a>'
           '</li><li><a href="#thresholds">7. IoU threshold</a>'
           '</li>'
           "</ol></nav>")
    inputs_html = "".join(f"<li>{e(p)}</li>" for p in inputs)
    body = "".join([
        "<header><h1>Semantic interpretation report</h1>", f'<p class="meta">{meta}</p>', nav, "</header>",
        _warnings(data), _section_claims(data), _section_detectors(data), _section_evolution(data),
        _section_gallery(data),
        _section_attributions(data), _section_faithfulness(data), _section_cards(data),
        _section_thresholds(data),
        "<footer><p>Method: Khakzar et al., “Towards Semantic Interpretation of Thoracic Disease and "
        "COVID-19 Diagnosis Models”, MICCAI 2021. Inputs:</p>", f"<ul>{inputs_html}</ul></footer>",
    ])
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<meta name=\"generator\" content=\"cxrsem\">"
            "<link rel=\"icon\" href=\"data:,\">"
            f"<title>cxrsem report — {n_models} model(s)</title><style>{CSS}</style></head>\n"
            f"<body><main>{body}</main><script>{SCRIPT}</script></body></html>\n")
