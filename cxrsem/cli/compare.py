"""``cxrsem compare``: bootstrap comparison of the detector counts of dissected models."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from cxrsem.cli._options import ConfigOption, library_option, seed_option
from cxrsem.statistics.compare import CompareResult, compare


def compare_command(
    dissect_dirs: list[Path] = typer.Argument(..., help="Dissection results; the first is the "
                                                          "reference (an epoch series: epoch-000)."),
    bootstrap: int = library_option(compare, "resamples", "Bootstrap resamples.",
                                    flag="--bootstrap", min=1),
    confidence: float = library_option(compare, "confidence", "Interval confidence."),
    group_by: str = library_option(compare, "group_by", "Resample patients (where the concept set "
                                   "knows them) or images."),
    paired: bool | None = typer.Option(None, "--paired/--unpaired",
                                       help="Force (refuse other images) or forbid pairing; "
                                            "default: paired when the images are the same."),
    seed: int = seed_option(compare),
    out: Path | None = typer.Option(None, "--out", help="Also write the result as JSON here."),
    config: Path | None = ConfigOption,
) -> None:
    """Compare detector counts with bootstrap intervals and p-values (paired on the same images)."""
    result = compare(dissect_dirs, resamples=bootstrap, confidence=confidence, seed=seed,
                     group_by=group_by,
                     pairing="auto" if paired is None else "paired" if paired else "unpaired",
                     out=out)
    console = Console()
    for table in tables(result):
        console.print(table)
    for sentence in result.sentences():
        console.print(Text(sentence))
    for note in result.notes:
        Console(stderr=True).print(Text.assemble(("Warning: ", "yellow"), note), soft_wrap=True)
    if out is not None:
        console.print(Text(f"comparison: {out}"))


def tables(result: CompareResult) -> list[Table]:
    level = f"{100 * result.confidence:g}%"
    out = []
    for c in result.comparisons:
        how = "paired" if c.paired else f"unpaired ({c.why_unpaired})"
        table = Table(title=Text(f"{c.b} vs {c.a}: {result.resamples} {how} bootstrap resamples "
                                 f"of {result.group_by}s, {level} intervals"))
        for column in ("quantity", c.a, c.b, f"difference ({c.b} - {c.a})", "p (Holm)"):
            table.add_column(Text(column), justify="left" if column == "quantity" else "right")
        for row in c.rows:
            table.add_row(Text(row.quantity), str(row.a), str(row.b), str(row.difference),
                          f"{row.p_adjusted:.3f}")
        out.append(table)
    return out


def register(app: typer.Typer) -> None:
    app.command("compare")(compare_command)
