"""``cxrsem train``: train a chest X-ray model (classification, severity regression, weak labels)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from cxrsem.cli._options import (
    BatchSizeOption,
    ConfigOption,
    DataRootOption,
    DeviceOption,
    ImageCacheOption,
    QuietOption,
    SeedOption,
    component_options,
    data_roots,
    resolve_params,
)
from cxrsem.cli._progress import TrainingProgress
from cxrsem.training import TrainConfig, resume, train


def train_command(
    ctx: typer.Context,
    dataset: str = typer.Option("phantom", "--dataset", help="Registered dataset (cxrsem plugins)."),
    loss: str = typer.Option("bce", "--loss",
                             help="bce, weighted-bce, mse, weighted-mse, mae-scce, weak-bce, ..."),
    arch: str = typer.Option("densenet121", "--arch", help="Registered architecture."),
    epochs: int = typer.Option(10, "--epochs", help="Epochs to train."),
    batch_size: int = BatchSizeOption,
    lr: float = typer.Option(1e-4, "--lr", help="Adam learning rate (no weight decay, as in the paper)."),
    image_size: int = typer.Option(224, "--image-size", help="Input size in pixels."),
    patience: int = typer.Option(5, "--patience", help="Early-stopping patience in epochs."),
    seed: int = SeedOption,
    device: str = DeviceOption,
    workers: int = typer.Option(0, "--workers", help="DataLoader worker processes."),
    save_every: int = typer.Option(1, "--save-every", help="Write epoch-NNN.pt every N epochs."),
    init: str = typer.Option("random", "--init",
                             help="random, imagenet, or a cxrsem checkpoint to start from."),
    weights: Path | None = typer.Option(None, "--weights",
                                        help="Local ImageNet weight file for --init imagenet."),
    resume_dir: Path | None = typer.Option(None, "--resume",
                                           help="Continue the run in RUN_DIR from last.pt."),
    out: Path | None = typer.Option(None, "--out", help="Run folder for checkpoints and metrics."),
    dataset_opt: list[str] | None = typer.Option(None, "--dataset-opt", metavar="NAME=VALUE"),
    loss_opt: list[str] | None = typer.Option(None, "--loss-opt", metavar="NAME=VALUE"),
    arch_opt: list[str] | None = typer.Option(None, "--arch-opt", metavar="NAME=VALUE"),
    data_root: list[str] | None = DataRootOption,
    image_cache: str | None = ImageCacheOption,
    quiet: bool = QuietOption,
    config: Path | None = ConfigOption,
) -> None:
    """Train a model; writes epoch-NNN.pt (epoch-000 = initial), best.pt, last.pt, metrics.jsonl."""
    params, file_config = resolve_params(ctx, "train")
    progress = TrainingProgress(quiet=params["quiet"])
    if params["resume_dir"] is not None:
        explicit_epochs = params["epochs"] if ctx.get_parameter_source("epochs").name != "DEFAULT" else None
        result = resume(params["resume_dir"], epochs=explicit_epochs, progress=progress)
    else:
        if params["out"] is None:
            raise typer.BadParameter("--out RUN_DIR is required (or --resume RUN_DIR)", param_hint="--out")
        train_config = TrainConfig(
            out=str(params["out"]), dataset=params["dataset"], loss=params["loss"], arch=params["arch"],
            epochs=params["epochs"], batch_size=params["batch_size"], lr=params["lr"],
            image_size=params["image_size"], patience=params["patience"], seed=params["seed"],
            device=params["device"], workers=params["workers"], save_every=params["save_every"],
            init=params["init"], weights=str(params["weights"]) if params["weights"] else None,
            dataset_options=component_options(file_config, "dataset", params["dataset_opt"], "--dataset-opt"),
            loss_options=component_options(file_config, "loss", params["loss_opt"], "--loss-opt"),
            arch_options=component_options(file_config, "arch", params["arch_opt"], "--arch-opt"),
            data_roots=data_roots(file_config, params["data_root"]),
            image_cache=params["image_cache"],
        )
        result = train(train_config, progress=progress)
    name, value = result.best_metric
    Console().print(f"trained {result.epochs_run} epoch(s); best {name} {value:.4f} at epoch "
                    f"{result.best_epoch}; checkpoints in {result.run_dir}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
