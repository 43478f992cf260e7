"""``cxrsem attribute``: semantic attribution of single predictions to concept-detecting units."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cxrsem.attribution.ablation import DEFAULT_KS, DEFAULT_RANDOM, AblationSettings, parse_ks
from cxrsem.attribution.api import attribute as run_attribution
from cxrsem.cli._options import (
    ChannelsOption,
    ConfigOption,
    InputSizeOption,
    LayerOption,
    ModelOption,
    NormalizationOption,
    NumOutputsOption,
    OutputsOption,
    WeightsOption,
    batch_size_option,
    device_option,
    library_option,
    model_source_options,
    out_option,
    require_model,
)
from cxrsem.defaults import default_out, images_run_name
from cxrsem.engine import distributed
from cxrsem.options import parse_assignments


class _AttributionProgress:
    """Skipped images as warnings on stderr (under torchrun by the rank that read them, so each
    is printed once); a note on which split path runs (rank 0 alone)."""

    def __init__(self, console: Console, main_rank: bool = True) -> None:
        self.console = console
        self.main_rank = main_rank

    def __call__(self, event: str, **info: Any) -> None:
        if event == "skipped":
            # soft_wrap: a warning stays one line however long the path (scripts grep for it).
            # escape(): paths and reasons are the user's text, not rich markup
            self.console.print(f"[yellow]Warning:[/yellow] skipped {escape(str(info['image']))}: "
                               f"{escape(str(info['reason']))}", highlight=False, soft_wrap=True)
        elif event == "start" and info.get("reason") and self.main_rank:
            self.console.print(f"split: {info['path']} ({info['reason']})", style="dim",
                               highlight=False, markup=False)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


_DEFAULT = run_attribution  # option defaults come from the library function's signature


def attribute(
    images: list[Path] = typer.Argument(..., help="Image files or a folder."),
    model: str | None = ModelOption,
    weights: str | None = WeightsOption,
    num_outputs: int | None = NumOutputsOption,
    outputs: str | None = OutputsOption,
    input_size: int | None = InputSizeOption,
    channels: int | None = ChannelsOption,
    normalization: str | None = NormalizationOption,
    layer: str | None = LayerOption,
    dissection: Path | None = typer.Option(None, "--dissection", help="Dissection folder or json."),
    target: str | None = typer.Option(None, "--target", help="Output name, index or 'score'."),
    top_k: int = library_option(_DEFAULT, "top_k", "Units to show.", min=1),
    method: str = library_option(_DEFAULT, "method", "Attribution method (see `cxrsem plugins`)."),
    rule: str | None = typer.Option(
        None, "--rule", help="Quadrature rule of ig: gausslegendre (default), riemann-trapezoid, "
        "riemann-left, riemann-right or riemann-middle."),
    steps: int | None = typer.Option(None, "--steps", help="Integration points of ig (default 32)."),
    method_opt: list[str] | None = typer.Option(
        None, "--method-opt", metavar="NAME=VALUE", help="An option of the attribution method "
        "(repeatable)."),
    ablate: bool = typer.Option(False, "--ablate", help="Also zero each image's top-k units (and "
                                "random ones) and record the change of the explained output."),
    ablate_k: str = typer.Option(",".join(map(str, DEFAULT_KS)), "--ablate-k", metavar="K,...",
                                 help="Unit counts to ablate."),
    ablate_random: int = typer.Option(DEFAULT_RANDOM, "--ablate-random",
                                      help="Random unit sets per k (the reference)."),
    device: str = device_option(_DEFAULT),
    batch_size: int = batch_size_option(_DEFAULT),
    out: Path | None = out_option("attribute", "image stem or folder name"),
    config: Path | None = ConfigOption,
) -> None:
    """Explain predictions by the units that drive them (by default Integrated Gradients at a
    layer, Sec. 2.3)."""
    require_model("attribute", model)
    sources = model_source_options(weights=weights, num_outputs=num_outputs, outputs=outputs,
                                   input_size=input_size, channels=channels,
                                   normalization=normalization)
    out = out or default_out("attribute", images_run_name(images))
    err = Console(stderr=True)
    # Under torchrun only rank 0 prints the table (every rank's images, gathered by the library).
    main_rank = distributed.launched_rank() == 0
    with warnings.catch_warnings():
        # The library's DeprecationWarning (--method RULE) is for this user: show it, as one line.
        warnings.simplefilter("always", DeprecationWarning)
        run = run_attribution(
            images, model, layer, dissection=dissection, target=target, top_k=top_k,
            model_options=sources,
            method=method, rule=rule, steps=steps,
            method_options=parse_assignments(method_opt or [], "--method-opt"), device=device,
            batch_size=batch_size, out=out, progress=_AttributionProgress(err, main_rank),
            ablate=AblationSettings(parse_ks(ablate_k), ablate_random) if ablate else False)
    if not main_rank:
        return

    table = Table(title=escape(f"semantic attribution at {run.layer} ({run.path} path)"))
    columns = ["image", "prediction", "top unit", "concept", "share", "completeness gap"]
    # Sharded: every rank's images as records (image, data); alone: the results themselves.
    results = list(getattr(run, "all_images", None) or run)
    skipped = getattr(run, "all_skipped", None) or run.skipped
    ablated = bool(results) and "ablation" in results[0].data
    if ablated:
        k = results[0].data["ablation"]["ks"][0]
        columns.append(f"zeroing top {k} (random {k})")
    for column in columns:  # fold, never cut: names and numbers stay whole on narrow terminals
        table.add_column(column, justify="right" if column in ("share", "top unit") else "left",
                         overflow="fold")
    for result in results:
        data = result.data
        name = data["target"]["name"]
        top = data["top_k"][0]
        concept = top["concept"] if top["concept"] is not None else "-"
        gap = data["completeness"]
        shown_gap = ("undefined" if gap["delta"] is None and gap["abs_gap"] is None else
                     f"{_fmt(gap['abs_gap'], '.2e')} ({_fmt(gap['rel_gap'], '.1e')} rel.)")
        cells = [escape(Path(result.image).name),
                 escape(f"{name} = {_fmt(data['prediction'].get(name), '.3f')}"),
                 str(top["unit"]), escape(concept), f"{100 * top['share']:.1f}%", shown_gap]
        if ablated:
            curve = data["ablation"]
            random = curve["random_deletion"]["mean"]
            cells.append(f"{-curve['deletion'][0]:+.3g} ({_fmt(-random[0] if random else None, '+.3g')})")
        table.add_row(*cells)
    for image, _reason in skipped:
        table.add_row(escape(Path(image).name), "[yellow]skipped[/yellow]",
                      *["-"] * (len(columns) - 2))
    console = Console()
    console.print(table)
    print_top_labelled(console, results)
    written = f"{len(results)} attribution(s) in {run.out}"
    if run.summary_csv is not None:
        written += f"; summary: {run.summary_csv.name}"
    if skipped:
        written += f"; {len(skipped)} image(s) skipped"
    console.print(written, highlight=False, markup=False)
    console.print(f"results in {run.out}", highlight=False, markup=False)


def print_top_labelled(console: Console, results: list, limit: int = 24) -> None:
    """The top contributing unit is often unlabelled: one line per image (at most ``limit``)
    naming the best-ranked unit the dissection labels, with its rank and share."""
    named = [r for r in results if r.data.get("dissection") is not None]
    if not named:
        return
    console.print("top labelled unit per image:", highlight=False, markup=False)
    for result in named[:limit]:
        entry = result.data.get("top_labelled")
        text = ("no unit is labelled" if not entry else
                f"unit {entry['unit']}: {entry['concept']} (rank {entry['rank']}, "
                f"{entry['share']:.1%} of the contribution)")
        console.print(f"  {Path(result.image).name}: {text}", highlight=False, markup=False)
    if len(named) > limit:
        console.print(f"  ... and {len(named) - limit} more (summary.csv: top_labelled_*)",
                      highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    app.command("attribute")(attribute)
