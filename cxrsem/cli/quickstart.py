"""``cxrsem quickstart``: the pipeline on the built-in phantom, end to end, on a CPU."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from cxrsem.cli._options import ConfigOption, DeviceOption, SeedOption, resolve_params
from cxrsem.cli._progress import PhaseProgress, TrainingProgress
from cxrsem.cli.dissect import detector_table
from cxrsem.quickstart import QuickstartSettings, run_quickstart


class _QuickstartProgress(TrainingProgress):
    """Training events as in ``cxrsem train``; dissection/attribution phases as in ``dissect``."""

    def __init__(self, quiet: bool) -> None:
        super().__init__(quiet=quiet)
        self.phases = PhaseProgress(quiet=quiet, console=self.console)

    def on_stage(self, name: str, message: str) -> None:
        self.phases.__exit__(None, None, None)
        self.console.rule(f"[bold]{message}")
        if name in ("dissect", "attribute"):
            self.phases.__enter__()

    def __call__(self, event: str, **info) -> None:
        if event in ("phase", "advance", "model"):
            self.phases(event, **info)
        else:
            super().__call__(event, **info)


def quickstart(
    ctx: typer.Context,
    out: Path = typer.Option(Path("runs/quickstart"), "--out", help="Output folder."),
    seed: int = SeedOption,
    device: str = DeviceOption,
    epochs: int = typer.Option(6, "--epochs", help="Training epochs of the small severity model."),
    quiet: bool = typer.Option(False, "--quiet", help="Plain log lines instead of progress bars."),
    config: Path | None = ConfigOption,
) -> None:
    """Generate phantom radiographs and train a small model (the pipeline on built-in data)."""
    params, _ = resolve_params(ctx, "quickstart")
    settings = QuickstartSettings(out=str(params["out"]), seed=params["seed"], device=params["device"],
                                  epochs=params["epochs"])
    progress = _QuickstartProgress(quiet=params["quiet"])
    try:
        result = run_quickstart(settings, progress=progress)
    finally:
        progress.phases.__exit__(None, None, None)
    console = Console()
    console.print(f"samples: {len(result.samples)} PNGs in {result.out / 'samples'}", highlight=False)
    name, value = result.training.best_metric
    console.print(f"severity model: best {name} {value:.3f} at epoch {result.training.best_epoch}; "
                  f"checkpoints in {result.training.run_dir}", highlight=False)
    for dissection in result.dissections:
        for layer in dissection.layers:
            console.print(detector_table(dissection, layer, 0.04))
    table = Table(title="semantic attribution of the severity score (top unit per image)")
    for column in ("image", "predicted score", "top unit", "concept", "share"):
        table.add_column(column)
    for item in result.attributions:
        top = item.top_k[0]
        predicted = item.data["prediction"].get(item.data["target"]["name"])
        table.add_row(Path(item.data["image"]).name, "-" if predicted is None else f"{predicted:.2f}",
                      str(top["unit"]), str(top.get("concept") or "unlabelled"), f"{top['share']:.0%}")
    console.print(table)
    console.print(f"report: {result.report}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("quickstart")(quickstart)
