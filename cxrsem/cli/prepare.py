"""``cxrsem prepare``: decode and resize a dataset's images once, for fast training and dissection."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cxrsem.cli._options import (
    ConfigOption,
    DataRootOption,
    QuietOption,
    component_options,
    data_roots,
    file_config,
    library_default,
    library_option,
    seed_option,
)
from cxrsem.cli._progress import PhaseProgress
from cxrsem.prepare import prepare_images


def prepare_command(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Registered dataset or concept set (cxrsem plugins)."),
    size: list[int] = typer.Option(list(library_default(prepare_images, "sizes")), "--size",
                                   help="Image size in pixels (repeatable); use the --image-size "
                                        "you train / the checkpoint's input size."),
    cache_dir: Path | None = typer.Option(
        None, "--cache-dir", "--image-cache",
        help="Cache folder (default $CXRSEM_CACHE_DIR, else ~/.cache/cxrsem)."),
    workers: int = library_option(prepare_images, "workers", "Decoding worker processes."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if the cache is up to date."),
    dataset_opt: list[str] | None = typer.Option(None, "--dataset-opt", metavar="NAME=VALUE"),
    concept_opt: list[str] | None = typer.Option(None, "--concept-opt", metavar="NAME=VALUE"),
    data_root: list[str] | None = DataRootOption,
    seed: int = seed_option(prepare_images),
    quiet: bool = QuietOption,
    config: Path | None = ConfigOption,
) -> None:
    """Store a dataset's images decoded and resized (memory-mapped uint8); train, dissect and the
    Python API then read them instead of the original files."""
    from_file = file_config(ctx)
    with PhaseProgress(quiet=quiet) as progress:
        results = prepare_images(
            name, sizes=size, seed=seed, data_roots=data_roots(from_file, data_root),
            dataset_options=component_options(from_file, "dataset", dataset_opt, "--dataset-opt"),
            concept_options=component_options(from_file.get("concepts", {}), name, concept_opt,
                                              "--concept-opt"),
            cache_dir=cache_dir, workers=workers, force=force, progress=progress)
    table = Table(title=f"prepared images of {escape(name)}")
    for column in ("size", "images", "not decodable", "seconds", "images/s"):
        table.add_column(column, justify="right")
    for r in results:
        speed = "up to date" if r.up_to_date else f"{r.images_per_second:.1f}"
        table.add_row(str(r.size), f"{r.images:,}", str(len(r.failed)), f"{r.seconds:.1f}", speed)
    console = Console()
    console.print(table)
    for r in results:
        console.out(f"{r.size} px: {r.folder}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("prepare")(prepare_command)
