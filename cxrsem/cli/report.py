"""``cxrsem report``: one HTML report comparing dissections, epochs and attributions."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from cxrsem.cli._options import ConfigOption, library_default, library_option
from cxrsem.reporting import ReportResult, build_report, parse_labels

_DEFAULT_OUT = Path(library_default(build_report, "out"))


def report(
    dissect_dirs: list[Path] = typer.Argument(..., help="Dissection output folders."),
    attributions: list[Path] | None = typer.Option(None, "--attributions", help="Attribution folders."),
    verify: list[Path] | None = typer.Option(None, "--verify", help="Folders of `cxrsem verify --out` "
                                             "(the Faithfulness section)."),
    label: list[str] | None = typer.Option(None, "--label", metavar="DIR=NAME", help="Model labels."),
    iou_threshold: float = library_option(build_report, "iou_threshold", "Detector IoU threshold."),
    out: Path = typer.Option(_DEFAULT_OUT, "--out", help="Report file."),
    format: str = typer.Option(library_default(build_report, "fmt"), "--format",  # noqa: A002
                               help="html or md."),  # (named like its config key, "format")
    config: Path | None = ConfigOption,
) -> None:
    """Write the paper's figures (detectors per concept, evolution, units, attributions) as one report."""
    if format == "md" and out == _DEFAULT_OUT:  # the default name, for Markdown
        out = Path("report.md")
    result = build_report(dissect_dirs, attributions=attributions or (),
                          labels=parse_labels(label or []), iou_threshold=iou_threshold, out=out,
                          fmt=format, verify=verify or ())
    err = Console(stderr=True)
    for warning in result.warnings:
        # Text, not a markup string: warnings quote names from files ("[...]" is not rich markup).
        err.print(Text.assemble(("Warning: ", "yellow"), warning), highlight=False, soft_wrap=True)
    console = Console()
    console.print(summary_table(result))
    written = f"report: {result.out}"
    if len(result.files) > 1:
        written += f" (+ {len(result.files) - 1} PNG files)"
    console.out(written, highlight=False)


def summary_table(result: ReportResult) -> Table:
    table = Table(title=f"concept detectors at IoU > {result.iou_threshold:g}")
    for column in ("model", "layer", "detectors", "unique concepts", "top concepts"):
        table.add_column(column, justify="right" if column in ("detectors", "unique concepts") else "left")
    for row in result.summary:
        tops = ", ".join(f"{c} ({n})" for c, n in row.top_concepts) or "-"
        # Names come from files: added as plain text so rich does not read them as markup.
        table.add_row(_plain(row.model), _plain(row.layer.rsplit(".", 1)[-1]), str(row.detectors),
                      str(row.unique_concepts), _plain(tops))
    return table


def _plain(text: str) -> Text:
    return Text(text)


def register(app: typer.Typer) -> None:
    app.command("report")(report)
