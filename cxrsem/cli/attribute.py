"""``cxrsem attribute``: semantic attribution of single predictions to concept-detecting units."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from cxrsem.attribution import attribute as run_attribution
from cxrsem.cli._options import BatchSizeOption, ConfigOption, DeviceOption, resolve_params


class _AttributionProgress:
    """Skipped images as warnings on stderr; a note on which split path runs."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def __call__(self, event: str, **info: Any) -> None:
        if event == "skipped":
            # soft_wrap: a warning stays one line however long the path (scripts grep for it).
            self.console.print(f"[yellow]Warning:[/yellow] skipped {info['image']}: "
                               f"{info['reason']}", highlight=False, soft_wrap=True)
        elif event == "start" and info.get("reason"):
            self.console.print(f"[dim]split: {info['path']} ({info['reason']})[/dim]",
                               highlight=False)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def attribute(
    ctx: typer.Context,
    images: list[Path] = typer.Argument(..., help="Image files or a folder."),
    model: str = typer.Option(..., "--model", help="Checkpoint."),
    layer: str = typer.Option(..., "--layer", help="Layer name or unambiguous suffix."),
    dissection: Path | None = typer.Option(None, "--dissection", help="Dissection folder or json."),
    target: str | None = typer.Option(None, "--target", help="Output name, index or 'score'."),
    top_k: int = typer.Option(3, "--top-k", min=1, help="Units to show."),
    steps: int = typer.Option(32, "--steps", help="Integration points."),
    method: str = typer.Option("gausslegendre", "--method", help="Quadrature rule."),
    device: str = DeviceOption,
    batch_size: int = BatchSizeOption,
    out: Path = typer.Option(..., "--out", help="Output folder."),
    config: Path | None = ConfigOption,
) -> None:
    """Explain predictions by the units that drive them (Integrated Gradients at a layer, Sec. 2.3)."""
    params, _ = resolve_params(ctx, "attribute")
    err = Console(stderr=True)
    run = run_attribution(
        [Path(p) for p in params["images"]], params["model"], params["layer"],
        dissection=params["dissection"], target=params["target"], top_k=params["top_k"],
        steps=params["steps"], method=params["method"], device=params["device"],
        batch_size=params["batch_size"], out=params["out"], progress=_AttributionProgress(err))

    table = Table(title=f"semantic attribution at {run.layer} ({run.path} path)")
    for column in ("image", "prediction", "top unit", "concept", "share", "completeness gap"):
        table.add_column(column, justify="right" if column in ("share", "top unit") else "left")
    for result in run:
        data = result.data
        name = data["target"]["name"]
        top = data["top_k"][0]
        concept = top["concept"] if top["concept"] is not None else "-"
        gap = data["completeness"]
        table.add_row(Path(result.image).name, f"{name} = {_fmt(data['prediction'].get(name), '.3f')}",
                      str(top["unit"]), concept, f"{100 * top['share']:.1f}%",
                      f"{_fmt(gap['abs_gap'], '.2e')} ({_fmt(gap['rel_gap'], '.1e')} rel.)")
    for image, _reason in run.skipped:
        table.add_row(Path(image).name, "[yellow]skipped[/yellow]", "-", "-", "-", "-")
    console = Console()
    console.print(table)
    written = f"{len(run)} attribution(s) in {run.out}"
    if run.summary_csv is not None:
        written += f"; summary: {run.summary_csv.name}"
    if run.skipped:
        written += f"; {len(run.skipped)} image(s) skipped"
    console.print(written, highlight=False)


def register(app: typer.Typer) -> None:
    app.command("attribute")(attribute)
