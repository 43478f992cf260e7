"""``cxrsem report``: one HTML report comparing dissections, epochs and attributions."""

from __future__ import annotations

from pathlib import Path

import typer

from cxrsem.cli._options import ConfigOption
from cxrsem.errors import NotImplementedYet


def report(
    ctx: typer.Context,
    dissect_dirs: list[Path] = typer.Argument(..., help="Dissection output folders."),
    attributions: list[Path] | None = typer.Option(None, "--attributions", help="Attribution folders."),
    label: list[str] | None = typer.Option(None, "--label", metavar="DIR=NAME", help="Model labels."),
    iou_threshold: float = typer.Option(0.04, "--iou-threshold", help="Detector IoU threshold."),
    out: Path = typer.Option(Path("report.html"), "--out", help="Report file."),
    fmt: str = typer.Option("html", "--format", help="html or md."),
    config: Path | None = ConfigOption,
) -> None:
    """Write the paper's figures (detectors per concept, evolution, units, attributions) as one report."""
    raise NotImplementedYet("`cxrsem report` is not implemented yet (issue 7)")


def register(app: typer.Typer) -> None:
    app.command("report")(report)
