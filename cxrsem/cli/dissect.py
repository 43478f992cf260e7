"""``cxrsem dissect``: Network Dissection of one or more checkpoints at one or more layers."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from cxrsem.cli._options import (
    BatchSizeOption,
    ConfigOption,
    DataRootOption,
    DeviceOption,
    ImageCacheOption,
    SeedOption,
    concept_options,
    data_roots,
    resolve_params,
)
from cxrsem.cli._progress import PhaseProgress
from cxrsem.dissection import DissectSettings, dissect
from cxrsem.options import parse_assignments


def dissect_command(
    ctx: typer.Context,
    model: list[str] = typer.Option(..., "--model", help="Checkpoint(s); a glob like RUN/epoch-*.pt."),
    layer: list[str] = typer.Option(..., "--layer", help="Layer name or unambiguous suffix (repeatable)."),
    concepts: list[str] = typer.Option(["phantom"], "--concepts", help="Concept set(s) to dissect against."),
    concept_opt: list[str] | None = typer.Option(None, "--concept-opt", metavar="SET.OPTION=VALUE",
                                                 help="Option of one concept set (repeatable)."),
    concept_map: list[str] | None = typer.Option(None, "--map-concept", metavar="SET/CONCEPT=NAME",
                                                 help="Merge a concept of one set into a shared name."),
    data_root: list[str] | None = DataRootOption,
    image_cache: str | None = ImageCacheOption,
    quantile: float = typer.Option(0.005, "--quantile", help="Top fraction of activations: P(f_k > T_k)."),
    quantile_sample: int = typer.Option(0, "--quantile-sample", help="First N images for T_k (0 = all)."),
    iou_threshold: float = typer.Option(0.04, "--iou-threshold", help="A unit is a detector above this IoU."),
    seg_size: int = typer.Option(112, "--seg-size", help="Annotation resolution the IoU is computed at."),
    limit: int = typer.Option(0, "--limit", help="Use only the first N images (0 = all)."),
    device: str = DeviceOption,
    batch_size: int = BatchSizeOption,
    seed: int = SeedOption,
    no_cache: bool = typer.Option(False, "--no-cache", help="Recompute activations even if cached."),
    cache_dtype: str = typer.Option("float32", "--cache-dtype", help="float32 (exact) or float16."),
    no_figures: bool = typer.Option(False, "--no-figures", help="Skip the unit and summary PNGs."),
    out: Path = typer.Option(..., "--out", help="Output folder."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
    config: Path | None = ConfigOption,
) -> None:
    """Find which units of a layer detect which concepts (Network Dissection, paper Sec. 2.2)."""
    params, file_config = resolve_params(ctx, "dissect")
    settings = DissectSettings(
        quantile=params["quantile"], quantile_sample=params["quantile_sample"],
        iou_threshold=params["iou_threshold"], seg_size=params["seg_size"], limit=params["limit"],
        batch_size=params["batch_size"], cache_dtype=params["cache_dtype"],
        use_cache=not params["no_cache"])
    with PhaseProgress(quiet=params["quiet"]) as progress:
        results = dissect(
            params["model"], params["layer"], out=params["out"], concepts=params["concepts"],
            concept_options=concept_options(file_config, params["concept_opt"]),
            concept_map=parse_assignments(params["concept_map"] or [], "--map-concept"),
            data_roots=data_roots(file_config, params["data_root"]), settings=settings,
            device=params["device"], seed=params["seed"], figures=not params["no_figures"],
            image_cache=params["image_cache"], progress=progress)
    console = Console()
    for result in results:
        for layer in result.layers:
            console.print(detector_table(result, layer, settings.iou_threshold))
    console.print(f"results in {params['out']}", highlight=False)


def detector_table(result, layer, iou_threshold: float) -> Table:
    best_index, best_iou = layer.best
    detectors = best_iou > iou_threshold
    table = Table(title=f"{result.model_path} — {layer.layer}: {int(detectors.sum())} detectors "
                        f"of {len(best_iou)} units (IoU > {iou_threshold})")
    table.add_column("concept")
    table.add_column("images", justify="right")
    table.add_column("detectors", justify="right")
    table.add_column("best IoU", justify="right")
    for c, concept in enumerate(layer.concepts):
        of_concept = detectors & (best_index == c)
        top = layer.iou[:, c].max() if layer.iou.size else 0.0
        table.add_row(concept, str(int(layer.images_with[c])), str(int(of_concept.sum())), f"{top:.3f}")
    return table


def register(app: typer.Typer) -> None:
    app.command("dissect")(dissect_command)
