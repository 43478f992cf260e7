"""The report's figures with matplotlib, as PNG bytes: detectors per concept per model (paper
Fig. 2), their evolution over epochs (Fig. 4) and total detectors against the IoU threshold."""

from __future__ import annotations

import io
from collections.abc import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from cxrsem.reporting.aggregate import ModelCounts, RunSeries
from cxrsem.textsafe import mpl_text

DPI = 110
# tab10 first: neighbouring concepts get clearly different colours; then tab20's light shades.
_PALETTES = (("tab10", range(10)), ("tab20", range(1, 20, 2)), ("tab20b", range(20)), ("tab20c", range(20)))


def concept_colors(concepts: Sequence[str]) -> dict[str, str]:
    """A fixed colour per concept, the same in every figure of the report."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    colors = []
    for name, indices in _PALETTES:
        cmap = colormaps[name]
        colors.extend(to_hex(cmap(i)) for i in indices)
    return {c: colors[i % len(colors)] for i, c in enumerate(concepts)}


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    return buffer.getvalue()


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _tick_label(name: str) -> str:
    # "dataset/loss/init · epoch-004": one line each, so many models still fit side by side.
    return "\n".join(mpl_text(part, 28) for part in name.split(" · "))


# Chance baselines beside each model's bar (dissect --null): attribute, legend label, bar style.
NULL_BARS = (
    ("random_init", "untrained networks", {"color": "#8c8c8c"}),
    ("shuffled", "shuffled annotations", {"facecolor": "white", "edgecolor": "#6b6b6b", "hatch": "////"}),
    ("rotation", "rotated unit basis", {"facecolor": "#d9d9d9", "edgecolor": "#6b6b6b", "hatch": "...."}),
)
_GROUP, _THIN, _GAP = 0.8, 0.12, 0.02  # with baselines: a model's bars share 0.8 of its slot


def detectors_figure(models: Sequence[ModelCounts], concepts: Sequence[str], colors: dict[str, str],
                     threshold: float) -> bytes:
    """Stacked bars: one per model, a colour per concept, the total on top (Fig. 2).  With
    chance baselines at ``threshold`` (``dissect --null``), thin grey bars beside each model's
    give the detectors of untrained networks, shuffled annotations and a rotated basis (mean,
    whisker: the range of the draws), and a black diamond marks the significant detectors."""
    n = len(models)
    kinds = [kind for kind in NULL_BARS if any(getattr(m, kind[0]) is not None for m in models)]
    with_significant = any(m.significant is not None for m in models)
    width, centers = 0.7, [float(i) for i in range(n)]
    if kinds:  # the stacked bar moves left to make room for the baselines
        width = _GROUP - _GAP - _THIN * len(kinds)
        centers = [i - _GROUP / 2 + width / 2 for i in range(n)]
    fig = _figure(min(max(5.5, (1.1 + 0.25 * len(kinds)) * n + 3.5), 15.0), 4.4)
    ax = fig.add_subplot()
    bottoms = [0] * n
    for concept in concepts:
        heights = [m.counts.get(concept, 0) for m in models]
        if not any(heights):
            continue
        ax.bar(centers, heights, bottom=bottoms, color=colors[concept], edgecolor="white",
               linewidth=0.5, label=mpl_text(concept, 32), width=width)
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    top = max([m.total for m in models] + [m.interval[1] for m in models if m.interval] + [1]
              + [getattr(m, kind).high for m in models for kind, _, _ in kinds
                 if getattr(m, kind) is not None])
    null_handles = []
    for j, (kind, label, style) in enumerate(kinds):
        x = [i - _GROUP / 2 + width + _GAP + _THIN * (j + 0.5) for i in range(n)]
        shown = [(xi, getattr(m, kind)) for xi, m in zip(x, models, strict=True)
                 if getattr(m, kind) is not None]
        xs, counts = [xi for xi, _ in shown], [c for _, c in shown]
        ax.bar(xs, [c.mean for c in counts], width=_THIN, linewidth=0.6, **style)
        ax.errorbar(xs, [c.mean for c in counts],
                    yerr=[[max(c.mean - c.low, 0) for c in counts],
                          [max(c.high - c.mean, 0) for c in counts]],
                    fmt="none", ecolor="#222222", elinewidth=0.9, capsize=2)
        null_handles.append((Patch(linewidth=0.6, **style), f"{label} (mean, range)"))
    if with_significant:
        marked = [(c, m.significant) for c, m in zip(centers, models, strict=True)
                  if m.significant is not None]
        ax.plot([c for c, _ in marked], [s for _, s in marked], linestyle="none", marker="D",
                markersize=6, color="#111111", markeredgecolor="white", markeredgewidth=0.8,
                zorder=4, clip_on=False)  # a diamond at 0 stays whole on the axis
        fdrs = {m.fdr for m in models if m.significant is not None and m.fdr is not None}
        null_handles.insert(0, (Line2D([], [], linestyle="none", marker="D", markersize=6,
                                       color="#111111", markeredgecolor="white"),
                                "significant vs shuffled" + (f" (FDR {fdrs.pop():g})"
                                                             if len(fdrs) == 1 else "")))
    for i, m in enumerate(models):
        label, above = f"{m.total}", m.total
        if m.interval is not None:  # dissect --bootstrap: the total's interval as an error bar
            low, high = m.interval
            ax.errorbar(centers[i], m.total, yerr=[[max(m.total - low, 0)], [max(high - m.total, 0)]],
                        fmt="none", ecolor="#222222", elinewidth=1.0, capsize=4)
            label, above = f"{m.total} [{low:g}, {high:g}]", max(high, m.total)
        ax.text(centers[i], above + top * 0.015, label, ha="center", va="bottom", fontsize=9,
                fontweight="bold")
    ax.set_xticks(range(n), [_tick_label(m.name) for m in models], fontsize=7.5,
                  rotation=0 if n <= 4 else 30, ha="center" if n <= 4 else "right")
    ax.set_ylim(0, top * 1.12 + 0.5)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylabel("concept detectors (units)")
    ax.set_title(f"Concept detectors per model (IoU > {threshold:g})", fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    if any(m.total for m in models):
        legend = ax.legend(fontsize=7.5, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0),
                           title="concept", title_fontsize=8)
        if null_handles:
            ax.add_artist(legend)  # a second legend would replace it otherwise
    else:
        ax.text(0.5, 0.5, f"no unit has an IoU above {threshold:g}", transform=ax.transAxes,
                ha="center", va="center", color="#666666")
    if null_handles:
        ax.legend([h for h, _ in null_handles], [t for _, t in null_handles], fontsize=7,
                  frameon=False, loc="lower left", bbox_to_anchor=(1.0, 0.0),
                  title="chance baselines", title_fontsize=8)
    return _png(fig)


def concept_intervals_figure(models: Sequence[ModelCounts], concepts: Sequence[str],
                             colors: dict[str, str], threshold: float) -> bytes | None:
    """Detectors per concept with their bootstrap intervals, one marker per model side by side
    (the per-concept companion of Fig. 2: stacked segments cannot carry their own error bars).
    ``None`` when no model has per-concept intervals."""
    shown = [m for m in models if m.concept_intervals]
    names = [c for c in concepts if any(c in m.concept_intervals for m in shown)]
    if not shown or not names:
        return None
    fig = _figure(min(max(6.0, 0.75 * len(names) * max(1, len(shown)) ** 0.5 + 3.5), 15.0), 3.8)
    ax = fig.add_subplot()
    width = 0.8 / len(shown)
    markers = ("o", "s", "^", "D", "v", "P", "X")
    for i, m in enumerate(shown):
        xs, ys, lows, highs = [], [], [], []
        for j, concept in enumerate(names):
            if concept not in m.concept_intervals:
                continue
            low, high = m.concept_intervals[concept]
            count = m.counts.get(concept, 0)
            xs.append(j - 0.4 + width * (i + 0.5))
            ys.append(count)
            lows.append(max(count - low, 0))
            highs.append(max(high - count, 0))
        ax.errorbar(xs, ys, yerr=[lows, highs], fmt=markers[i % len(markers)], color="#222222",
                    markersize=4, elinewidth=1.0, capsize=3, label=mpl_text(m.name, 44))
    for j, concept in enumerate(names):  # the concept's colour behind its group, as in Fig. 2
        ax.axvspan(j - 0.45, j + 0.45, color=colors.get(concept, "#888888"), alpha=0.15, linewidth=0)
    ax.set_xticks(range(len(names)), [mpl_text(c, 24) for c in names], fontsize=7.5,
                  rotation=0 if len(names) <= 5 else 30, ha="center" if len(names) <= 5 else "right")
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylim(bottom=-0.3)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("concept detectors (units)")
    ax.set_title(f"Detectors per concept with bootstrap intervals (IoU > {threshold:g})", fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0), title="model",
              title_fontsize=8)
    return _png(fig)


def evolution_figure(series: Sequence[RunSeries], colors: dict[str, str], threshold: float) -> bytes:
    """Detectors per concept against epoch for each run, and the totals of all runs (Fig. 4)."""
    panels = len(series) + 1
    cols = min(panels, 3)
    rows = (panels + cols - 1) // cols
    fig = _figure(4.4 * cols + 1.6, 3.3 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    top = max([max(s.totals) for s in series] + [1])
    shown: dict[str, object] = {}
    peak_band = 0.0
    for ax, run in zip(axes, series, strict=False):
        for concept, values in run.counts.items():
            if not any(values):
                continue
            color = colors.get(concept, "#888888")
            (line,) = ax.plot(run.epochs, values, marker="o", markersize=3.5, linewidth=1.4,
                              color=color, label=mpl_text(concept, 32))
            shown.setdefault(concept, line)
            bands = run.concept_bands.get(concept, [])
            if bands and all(band is not None for band in bands):  # dissect --bootstrap
                ax.fill_between(run.epochs, [b[0] for b in bands], [b[1] for b in bands],
                                color=color, alpha=0.15, linewidth=0)
                peak_band = max(peak_band, *(b[1] for b in bands))
        ax.set_title(mpl_text(run.name, 60), fontsize=8.5)
    total_ax = axes[len(series)]
    styles = ("-", "--", ":", "-.")
    markers = ("o", "s", "^", "D", "v")
    for i, run in enumerate(series):  # black: the concept colours stay unambiguous
        total_ax.plot(run.epochs, run.totals, color="#222222", linestyle=styles[i % len(styles)],
                      marker=markers[i % len(markers)], markersize=3.5, linewidth=1.4,
                      label=mpl_text(run.name, 40))
        if run.bands and all(band is not None for band in run.bands):  # dissect --bootstrap
            total_ax.fill_between(run.epochs, [b[0] for b in run.bands], [b[1] for b in run.bands],
                                  color="#222222", alpha=0.12, linewidth=0)
            top = max(top, *(b[1] for b in run.bands))
    total_ax.set_title("total detectors", fontsize=8.5)
    total_ax.legend(fontsize=7, frameon=False, loc="best")
    peak = max([max(v) for s in series for v in s.counts.values()] + [1, peak_band])
    for i, ax in enumerate(axes):
        if i > len(series):
            ax.set_visible(False)
            continue
        ax.set_xlabel("epoch")
        ax.set_ylabel("detectors")
        ax.set_ylim(-0.2, (top if i == len(series) else peak) * 1.15 + 0.5)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.spines[["top", "right"]].set_visible(False)
    if shown:
        fig.legend(list(shown.values()), [mpl_text(c, 32) for c in shown], fontsize=7.5, frameon=False,
                   loc="upper left", bbox_to_anchor=(1.0, 0.95), title="concept", title_fontsize=8)
    fig.suptitle(f"Evolution of concept detectors over training (IoU > {threshold:g})", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def threshold_figure(models: Sequence[ModelCounts], threshold: float) -> bytes:
    """Total detectors and unique concepts against the IoU threshold, one line per model."""
    fig = _figure(10.0, 3.4)
    ax_total, ax_unique = fig.subplots(1, 2)
    for m in models:
        ts = [t for t, _, _ in m.curve]
        ax_total.plot(ts, [n for _, n, _ in m.curve], marker=".", linewidth=1.3, label=mpl_text(m.name, 44))
        ax_unique.plot(ts, [u for _, _, u in m.curve], marker=".", linewidth=1.3)
    for ax, label in ((ax_total, "detectors"), (ax_unique, "concepts with ≥1 detector")):
        ax.axvline(threshold, color="#444444", linestyle="--", linewidth=0.9)
        ax.set_xlabel("IoU threshold")
        ax.set_ylabel(label)
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.set_ylim(bottom=0)
        ax.spines[["top", "right"]].set_visible(False)
    ax_total.set_title("total detectors", fontsize=9)
    ax_unique.set_title("unique concepts", fontsize=9)
    if len(models) <= 12:
        fig.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 0.95))
    fig.tight_layout()
    return _png(fig)


def faithfulness_figure(verification) -> bytes:
    """Deletion and insertion curves of ``cxrsem verify`` (a
    :class:`cxrsem.reporting.faithfulness.Verification`): the mean change of the explained output
    against k per method, with its bootstrap band, and random units (grey, dashed) as the
    reference.  The k axis is logarithmic: the ks are usually 1, 2, 5, 10, 20."""
    fig = _figure(9.0, 3.3)
    axes = fig.subplots(1, 2, sharex=True)
    curves = list(verification.curves) + ([verification.random] if verification.random else [])
    for ax, part, title in ((axes[0], "deletion", "deletion: top-k units zeroed"),
                            (axes[1], "insertion", "insertion: only the top-k units kept")):
        for i, curve in enumerate(curves):
            points = [(k, e) for k, e in zip(curve.ks, getattr(curve, part), strict=True)
                      if e.value is not None]
            if not points:
                continue
            ks = [k for k, _ in points]
            is_random = verification.random is not None and curve is verification.random
            style = ({"color": "#7f7f7f", "linestyle": "--"} if is_random
                     else {"color": f"C{i % 10}", "marker": "o", "markersize": 3.5})
            ax.plot(ks, [e.value for _, e in points], label=mpl_text(curve.method, 24), linewidth=1.4,
                    **style)
            banded = [(k, e) for k, e in points if e.low is not None and e.high is not None]
            if banded:
                ax.fill_between([k for k, _ in banded], [e.low for _, e in banded],
                                [e.high for _, e in banded], color=style["color"], alpha=0.15, linewidth=0)
        ax.set_xscale("log")
        ax.set_xlabel("k (units)")
        ax.set_title(title, fontsize=9)
        ax.axhline(0, color="#bbbbbb", linewidth=0.8)
        ax.tick_params(labelsize=8)
    axes[0].set_ylabel("mean change of the explained output", fontsize=8)
    axes[1].legend(fontsize=7.5, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return _png(fig)
