"""``cxrsem quickstart``: the pipeline on the built-in phantom, end to end, on a CPU."""

from __future__ import annotations

import shlex
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cxrsem.attribution.verify import VerifySettings
from cxrsem.cli._options import (
    ConfigOption,
    QuietOption,
    device_option,
    library_default,
    library_option,
    seed_option,
)
from cxrsem.cli._progress import PhaseProgress, TrainingProgress
from cxrsem.cli.attribute import print_top_labelled
from cxrsem.cli.dissect import detector_table
from cxrsem.cli.verify import print_verification
from cxrsem.formats.dissection import DEFAULT_IOU_THRESHOLD
from cxrsem.quickstart import QuickstartSettings, run_quickstart


class _QuickstartProgress(TrainingProgress):
    """Training events as in ``cxrsem train``; dissection/attribution phases as in ``dissect``."""

    def __init__(self, quiet: bool) -> None:
        super().__init__(quiet=quiet)
        self.phases = PhaseProgress(quiet=quiet, console=self.console)

    def on_stage(self, name: str, message: str) -> None:
        self.phases.__exit__(None, None, None)
        self.console.rule(f"[bold]{message}")
        if name in ("dissect", "attribute", "verify"):
            self.phases.__enter__()

    def __call__(self, event: str, **info) -> None:
        if event in ("phase", "advance", "model"):
            self.phases(event, **info)
        else:
            super().__call__(event, **info)


_D = QuickstartSettings  # option defaults come from the library's settings


def quickstart(
    out: Path = typer.Option(Path(library_default(_D, "out")), "--out", help="Output folder."),
    seed: int = seed_option(_D),
    device: str = device_option(_D),
    epochs: int = library_option(_D, "epochs", "Training epochs of the small severity model."),
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="Replace the results of an earlier quickstart in --out."),
    quiet: bool = QuietOption,
    config: Path | None = ConfigOption,
) -> None:
    """Generate phantom radiographs and train a small model (the pipeline on built-in data)."""
    settings = QuickstartSettings(out=str(out), seed=seed, device=device, epochs=epochs,
                                  overwrite=overwrite)
    progress = _QuickstartProgress(quiet=quiet)
    try:
        result = run_quickstart(settings, progress=progress)
    finally:
        progress.phases.__exit__(None, None, None)
    console = Console()
    # markup=False / escape(): paths and names are the user's, not rich markup
    console.print(f"samples: {len(result.samples)} PNGs in {result.out / 'samples'}", highlight=False,
                  markup=False)
    name, value = result.training.best_metric
    console.print(f"severity model: best {name} {value:.3f} at epoch {result.training.best_epoch}; "
                  f"checkpoints in {result.training.run_dir}", highlight=False, markup=False)
    for dissection in result.dissections:
        for layer in dissection.layers:
            console.print(detector_table(dissection, layer, DEFAULT_IOU_THRESHOLD))
    table = Table(title="semantic attribution of the severity score (top unit per image)")
    for column in ("image", "predicted score", "top unit", "concept", "share"):
        table.add_column(column)
    for item in result.attributions:
        top = item.top_k[0]
        predicted = item.data["prediction"].get(item.data["target"]["name"])
        table.add_row(escape(Path(item.data["image"]).name),
                      "-" if predicted is None else f"{predicted:.2f}", str(top["unit"]),
                      escape(str(top.get("concept") or "unlabelled")), f"{top['share']:.0%}")
    console.print(table)
    print_top_labelled(console, list(result.attributions))
    if result.verification is not None:
        print_verification(console, result.verification, VerifySettings.confidence)
    console.print(f"report: {result.report}", highlight=False, markup=False)
    console.print("next, on your own image:", highlight=False, markup=False)
    for command in next_commands(result):
        console.print(f"  {command}", highlight=False, markup=False, soft_wrap=True)


IMAGE_PLACEHOLDER = "YOUR_IMAGE.png"


def next_commands(result, image: str = IMAGE_PLACEHOLDER) -> list[str]:
    """Three commands to run next, with this quickstart's paths: attribute an image with the
    trained model and its dissection (found under the quickstart's by its checksum), dissect that
    model anew, and report the quickstart's dissections with the new attribution (``--out`` and
    ``--layer`` left to their defaults)."""
    from cxrsem.defaults import RUNS_ROOT, images_run_name

    final = result.dissections[-1].model_path if result.dissections else \
        result.training.run_dir / "best.pt"
    final = Path(final)
    dissect_dir = result.out / "dissect"
    attributions = RUNS_ROOT / "attribute" / images_run_name(image)
    return [
        shlex.join(["cxrsem", "attribute", image, "--model", str(final),
                    "--dissection", str(dissect_dir)]),
        shlex.join(["cxrsem", "dissect", "--model", str(final)]),
        shlex.join(["cxrsem", "report", str(dissect_dir), "--attributions", str(attributions)]),
    ]


def register(app: typer.Typer) -> None:
    app.command("quickstart")(quickstart)
