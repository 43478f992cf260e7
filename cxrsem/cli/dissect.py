"""``cxrsem dissect``: Network Dissection of one or more checkpoints at one or more layers."""

from __future__ import annotations

from pathlib import Path

import typer

from cxrsem.cli._options import BatchSizeOption, ConfigOption, DataRootOption, DeviceOption
from cxrsem.errors import NotImplementedYet


def dissect(
    ctx: typer.Context,
    model: list[str] = typer.Option(..., "--model", help="Checkpoint(s); a glob like RUN/epoch-*.pt."),
    layer: list[str] = typer.Option(..., "--layer", help="Layer name or unambiguous suffix (repeatable)."),
    concepts: list[str] = typer.Option(["phantom"], "--concepts", help="Concept set(s) to dissect against."),
    concept_opt: list[str] | None = typer.Option(None, "--concept-opt", metavar="SET.OPTION=VALUE"),
    data_root: list[str] | None = DataRootOption,
    quantile: float = typer.Option(0.005, "--quantile", help="Top fraction of activations: P(f_k > T_k)."),
    quantile_sample: int = typer.Option(0, "--quantile-sample", help="Images for T_k (0 = all)."),
    iou_threshold: float = typer.Option(0.04, "--iou-threshold", help="Detector threshold on IoU."),
    seg_size: int = typer.Option(112, "--seg-size", help="Annotation resolution for the IoU."),
    limit: int = typer.Option(0, "--limit", help="Use only the first N images (0 = all)."),
    device: str = DeviceOption,
    batch_size: int = BatchSizeOption,
    no_cache: bool = typer.Option(False, "--no-cache", help="Recompute activations."),
    out: Path = typer.Option(..., "--out", help="Output folder."),
    config: Path | None = ConfigOption,
) -> None:
    """Find which units of a layer detect which concepts (Network Dissection, paper Sec. 2.2)."""
    raise NotImplementedYet("`cxrsem dissect` is not implemented yet (issue 4)")


def register(app: typer.Typer) -> None:
    app.command("dissect")(dissect)
