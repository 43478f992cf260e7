"""``cxrsem quickstart``: the pipeline on the built-in phantom, end to end, on a CPU."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from cxrsem.cli._options import ConfigOption, DeviceOption, SeedOption, resolve_params
from cxrsem.cli._progress import TrainingProgress
from cxrsem.quickstart import QuickstartSettings, run_quickstart


class _QuickstartProgress(TrainingProgress):
    def on_stage(self, name: str, message: str) -> None:
        self.console.rule(f"[bold]{message}")


def quickstart(
    ctx: typer.Context,
    out: Path = typer.Option(Path("runs/quickstart"), "--out", help="Output folder."),
    seed: int = SeedOption,
    device: str = DeviceOption,
    epochs: int = typer.Option(4, "--epochs", help="Training epochs of the small severity model."),
    quiet: bool = typer.Option(False, "--quiet", help="Plain log lines instead of progress bars."),
    config: Path | None = ConfigOption,
) -> None:
    """Generate phantom radiographs and train a small model (the pipeline on built-in data)."""
    params, _ = resolve_params(ctx, "quickstart")
    settings = QuickstartSettings(out=str(params["out"]), seed=params["seed"], device=params["device"],
                                  epochs=params["epochs"])
    result = run_quickstart(settings, progress=_QuickstartProgress(quiet=params["quiet"]))
    console = Console()
    console.print(f"samples: {len(result.samples)} PNGs in {result.out / 'samples'}", highlight=False)
    if result.training is not None:
        name, value = result.training.best_metric
        console.print(f"severity model: best {name} {value:.3f} at epoch {result.training.best_epoch}; "
                      f"checkpoints in {result.training.run_dir}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("quickstart")(quickstart)
