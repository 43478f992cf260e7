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
    if result.chance:
        console.print(chance_table(result))
    for sentence in result.sentences():
        console.print(Text(sentence))
    for sentence in result.chance_sentences():
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


def chance_table(result: CompareResult) -> Table:
    """Each model's detectors beside its chance baselines (``dissect --null``), as recorded."""
    rows = result.chance
    fdrs = sorted({row.chance.fdr for row in rows if row.chance.fdr is not None})
    columns = [("significant", lambda c: None if c.significant is None else str(c.significant)),
               ("shuffled annotations", lambda c: c.shuffled),
               ("untrained networks", lambda c: c.random_init),
               ("rotated basis", lambda c: c.rotation),
               ("epoch-000", lambda c: c.initial_checkpoint)]
    shown = [(name, get) for name, get in columns if any(get(row.chance) is not None for row in rows)]
    fdr = f", FDR {', '.join(f'{v:g}' for v in fdrs)}" if fdrs else ""
    table = Table(title=Text(f"chance baselines (dissect --null{fdr}): detectors as recorded, "
                             f"mean [range] over the draws"))
    for column in ("model", "detectors", *(name for name, _ in shown)):
        table.add_column(Text(column), justify="left" if column == "model" else "right")
    for row in rows:
        table.add_row(Text(row.model), str(row.detectors),
                      *(Text("–" if get(row.chance) is None else str(get(row.chance)))
                        for _, get in shown))
    return table


def register(app: typer.Typer) -> None:
    app.command("compare")(compare_command)
